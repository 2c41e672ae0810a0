"""The command line keeps freed memory: glibc's malloc tuned, and opting out works."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from qcore_bench.allocator import OPT_OUT, keep_freed_memory

PROBE = "from qcore_bench.allocator import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt")
def test_takes_effect_on_glibc_and_honours_the_opt_out() -> None:
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT}

    def probe(extra: dict[str, str]) -> list[str]:
        return subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert probe({}) == ["True"]
    assert probe({OPT_OUT: "1"}) == ["False"]


def test_opt_out_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPT_OUT, "yes")
    assert keep_freed_memory() is False
