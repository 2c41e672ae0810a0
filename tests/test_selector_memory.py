"""The greedy and geometric selectors use memory linear in n, never an n x n matrix.

How it is measured, and why this way: torch's CPU tensors are invisible to tracemalloc,
so the test reads the process's resident memory from /proc. A fresh subprocess runs
each selector on synthetic outputs (d = 64 features, 10 classes, random logits, 1%
kept; k-center and Glister also globally, where one greedy sees all n) for n = 10,000
and n = 40,000. Before each call it resets the kernel's peak-RSS mark
(``echo 5 > /proc/self/clear_refs``) and reads the current RSS; after the call the
peak (VmHWM) minus that baseline is the call's extra memory. The subprocess sets
``MALLOC_MMAP_THRESHOLD_`` so that glibc serves every large tensor with mmap and gives
it back when freed (RSS then tracks live tensors instead of a growing heap), and one
thread, so that thread pools do not add noise. Each selector runs once on a small n
first so that one-off costs (imports, lazily built kernels) are not charged to n = 10k.

Quadrupling n must at most ~quadruple the extra memory: the test asserts a ratio
below 6 (linear: 4, quadratic: 16), with a 1 MiB floor on the small size so page-level
noise cannot fake a large ratio, and an absolute bound of 8x the input size at n = 40k
(an n x n float matrix alone would be 6.4 GB there; DeepCore's budget x n k-center
table, 64 MB at 1%, already fails the ratio).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, re, sys
    import torch
    from torch import nn
    from qcore_bench.selection import Outputs, SelectionContext
    from qcore_bench.selectors.glister import GlisterSelector
    from qcore_bench.selectors.kcenter import ContextualDiversitySelector, KCenterSelector
    from qcore_bench.selectors.moderate import ModerateSelector

    SELECTORS = {  # name: (selector, balanced); the greedy ones also run globally, where n is largest
        "glister_stochastic_student": (lambda: GlisterSelector(source="student"), False),
        "glister_lazy_teacher": (lambda: GlisterSelector(source="teacher", greedy="lazy"), True),
        "moderate": (lambda: ModerateSelector(), True),
        "kcenter": (lambda: KCenterSelector(), False),
        "kcenter_balanced": (lambda: KCenterSelector(), True),
        "contextual_diversity": (lambda: ContextualDiversitySelector(source="teacher"), False),
    }

    def status(key):
        return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    def extra_memory(name, n):
        g = torch.Generator().manual_seed(n)
        out = Outputs(torch.randn(n, 10, generator=g), torch.randn(n, 64, generator=g))
        ctx = SelectionContext(epoch=0, total_epochs=1, fraction=0.01, labels=torch.randint(0, 10, (n,), generator=g),
                               num_classes=10, balanced=SELECTORS[name][1], student=nn.Identity(), teacher=nn.Identity(),
                               output_fns={"student": lambda: out, "teacher": lambda: out},
                               generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), seed=0)
        selector = SELECTORS[name][0]()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        sel = selector.select(ctx)
        assert len(sel.indices) == ctx.budget
        return status("VmHWM") - base

    torch.set_num_threads(1)
    result = {}
    for name in SELECTORS:
        extra_memory(name, 2_000)  # warm-up
        result[name] = [extra_memory(name, n) for n in (10_000, 40_000)]
    print(json.dumps(result))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_extra_memory_grows_linearly_with_n() -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip(f"cannot reset the peak RSS here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    extra = json.loads(proc.stdout.strip().splitlines()[-1])
    input_bytes = 40_000 * (64 + 10) * 4
    mib = 1 << 20
    for name, (small, big) in extra.items():
        assert big < 6 * max(small, mib), f"{name}: {small / mib:.1f} MiB at n=10k, {big / mib:.1f} MiB at n=40k"
        assert big < 8 * input_bytes, f"{name}: {big / mib:.1f} MiB at n=40k for {input_bytes / mib:.1f} MiB of input"
