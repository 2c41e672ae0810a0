"""Where a number came from: code version, libraries, machine, device and CPU threads.

Recorded in every cell's ``cell.json`` (and its result), so that a table can say which
commit, machine and thread count made it, and a reader can tell two runs apart that
should not be compared.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of the qcore_bench source when it runs from a checkout (else only the version).

    ``dirty`` is true when tracked files of the package differ from that commit: the
    numbers then come from code that no commit holds.
    """
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"version": __version__}
    return {"version": __version__, "commit": commit, "dirty": dirty}


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def provenance(device: torch.device) -> dict[str, Any]:
    """The environment of a cell as it starts: call it with the cell's CPU threads already pinned."""
    return {"qcore_bench": code_version(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "host": socket.gethostname(), "time": time.time(),
            "device": str(device), "device_name": device_name(device), "cpu_threads": torch.get_num_threads(),
            **({"cuda": torch.version.cuda} if device.type == "cuda" else {})}


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """torch's intra-op CPU threads fixed at ``threads`` for the block, then restored.

    The thread count changes how floating-point sums are split, hence the last digits of
    every result: a cell pins it so that the same torch on another machine reproduces it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
