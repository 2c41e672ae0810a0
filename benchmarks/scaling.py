"""How a cell's cost grows: selection time against n and against the kept fraction, training
time against fraction x n, and selection's peak memory against n; with fitted exponents.

    python benchmarks/scaling.py                               # small sizes, a few minutes
    python benchmarks/scaling.py --ns 5000,10000,20000,40000 --image-size 32 --reps 3

Each exponent is the slope of a log-log least-squares fit (1: linear, 2: quadratic).
Timings are medians over repetitions, sizes visited in alternating order (up, then down).

* ACS selection time in n (one real student forward pass + scores + per-class top-k);
* every selector's scoring time in n on synthetic outputs (d = 64 features; the student,
  teacher and proxy outputs given, so this is the work after the forward pass);
* the same against the kept fraction at fixed n;
* one training epoch of the W2/A32 student on fraction x n samples;
* peak extra RSS of one selection call in a fresh subprocess at larger n (as tests/test_selector_memory.py:
  peak-RSS mark reset through /proc/self/clear_refs, mmap threshold lowered, one thread).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection import hardware_line, models, synthetic_data  # noqa: E402

from qcore_bench.data.device import TensorData  # noqa: E402
from qcore_bench.selection import ProxyRun  # noqa: E402
from qcore_bench.registry import registry  # noqa: E402
from qcore_bench.selection import Outputs, SelectionContext, compute_outputs  # noqa: E402
from qcore_bench.selectors.acs import ACSSelector  # noqa: E402
from qcore_bench.training import make_optimizer, train_epoch  # noqa: E402
from qcore_bench.schema import Train  # noqa: E402

SCORING = ("acs", "el2n", "grand", "forgetting", "uncertainty", "glister", "moderate", "kcenter",
           "contextual_diversity")


def exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of log y against log x by least squares."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def alternating_medians(points: Sequence[object], measure: Callable[[object], float], reps: int) -> list[float]:
    """Median of ``reps`` measurements per point, visiting the points up, then down."""
    seen: dict[int, list[float]] = {i: [] for i in range(len(points))}
    for rep in range(reps):
        order = range(len(points)) if rep % 2 == 0 else reversed(range(len(points)))
        for i in order:
            seen[i].append(measure(points[i]))
    return [statistics.median(seen[i]) for i in range(len(points))]


def fake_outputs(n: int, classes: int, d: int, g: torch.Generator) -> Outputs:
    return Outputs(torch.randn(n, classes, generator=g), torch.randn(n, d, generator=g))


def synthetic_context(n: int, fraction: float, classes: int = 10, d: int = 64, epochs: int = 2) -> SelectionContext:
    """A context on synthetic outputs: student, teacher and a proxy run, all given."""
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, classes, (n,), generator=g)
    student, teacher = fake_outputs(n, classes, d, g), fake_outputs(n, classes, d, g)
    run = ProxyRun(torch.rand(epochs, n, generator=g) > 0.5, torch.rand(epochs, n, generator=g),
                   fake_outputs(n, classes, d, g), epochs * n, 0.0, cached=True)
    return SelectionContext(epoch=5, total_epochs=10, fraction=fraction, labels=labels, num_classes=classes,
                            balanced=True, student=nn.Identity(), teacher=nn.Identity(),
                            output_fns={"student": lambda: student, "teacher": lambda: teacher},
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), seed=0,
                            proxy_fn=lambda recipe, repeat: run)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@functools.lru_cache(maxsize=8)
def acs_setup(n: int, arch: str, size: int,
              batch_size: int) -> tuple[TensorData, torch.Tensor, nn.Module, nn.Module, Outputs]:
    """Data, labels, models and the cached teacher outputs at one n (built once, outside the timing)."""
    images = synthetic_data(n, 10, size)
    data = TensorData(images, torch.device("cpu"))
    teacher, student = models(arch, 10, data, batch_size)
    return data, images.train_y, teacher, student, compute_outputs(teacher, lambda: data.train_eval_batches(batch_size))


def acs_real_pass(n: int, arch: str, size: int, fraction: float, batch_size: int = 1024) -> float:
    """Seconds of one ACS call whose student outputs come from a real forward pass over n images."""
    data, labels, teacher, student, teacher_out = acs_setup(n, arch, size, batch_size)
    ctx = SelectionContext(epoch=5, total_epochs=10, fraction=fraction, labels=labels, num_classes=10, balanced=True,
                           student=student, teacher=teacher,
                           output_fns={"student": lambda: compute_outputs(
                               student, lambda: data.train_eval_batches(batch_size)),
                                       "teacher": lambda: teacher_out},
                           generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), seed=0)
    return timed(lambda: ACSSelector().select(ctx))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from scaling import synthetic_context
    from qcore_bench.registry import registry

    def status(key):
        return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    torch.set_num_threads(1)
    names, ns, fraction = sys.argv[2].split(","), [int(v) for v in sys.argv[3].split(",")], float(sys.argv[4])
    result = {}
    for name in names:
        registry("selectors").get(name)().select(synthetic_context(1000, fraction))  # warm-up
        result[name] = []
        for n in ns:
            ctx = synthetic_context(n, fraction)
            for which in ("student", "teacher"):
                ctx.outputs(which)
            sel = registry("selectors").get(name)()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = status("VmRSS")
            sel.select(ctx)
            result[name].append(status("VmHWM") - base)
    print(json.dumps(result))
""")


def peak_memory(names: Sequence[str], ns: Sequence[int], fraction: float) -> dict[str, list[int]] | None:
    """Extra peak RSS (bytes) of one selection call per n, in a fresh subprocess; None where /proc cannot."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(Path(__file__).resolve().parent),
                           ",".join(names), ",".join(map(str, ns)), str(fraction)],
                          env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"peak memory not measured: {proc.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_time(n: int, fraction: float, arch: str, size: int, batch_size: int = 128) -> float:
    """One training epoch of the W2/A32 student on round(fraction x n) samples."""
    data, labels, _, student, _ = acs_setup(n, arch, size, 1024)
    opt = make_optimizer(student, Train(epochs=1, batch_size=batch_size, lr=0.05))
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: round(fraction * n)]
    return timed(lambda: train_epoch(student, opt, data, labels, subset, batch_size=batch_size, augmented=True,
                                     generator=torch.Generator().manual_seed(1)))


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=ints, default=[2000, 4000, 8000], help="training-set sizes for the real passes")
    ap.add_argument("--score-ns", type=ints, default=[5000, 10000, 20000, 40000],
                    help="sizes for scoring on synthetic outputs")
    ap.add_argument("--memory-ns", type=ints, default=[10000, 20000, 40000, 80000],
                    help="sizes for peak memory (below ~10k the few MiB a call needs come from freed heap memory "
                         "and are not seen)")
    ap.add_argument("--fractions", type=floats, default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    print(hardware_line())
    print(f"model={args.model} W2/A32 image={args.image_size} reps={args.reps}")
    rows: list[tuple[str, str, list[float], float]] = []

    acs = alternating_medians(args.ns, lambda n: acs_real_pass(n, args.model, args.image_size, 0.1), args.reps)
    rows.append(("acs (real student pass)", f"n={args.ns}", acs, exponent(args.ns, acs)))
    mid = args.ns[len(args.ns) // 2]
    acs_f = alternating_medians(args.fractions, lambda f: acs_real_pass(mid, args.model, args.image_size, f),
                                args.reps)
    rows.append(("acs (real student pass)", f"fraction={args.fractions} n={mid}", acs_f,
                 exponent(args.fractions, acs_f)))
    for name in SCORING:
        def score(n: int, f: float = 0.1, m: str = name) -> float:
            ctx = synthetic_context(n, f)
            for which in ("student", "teacher"):
                ctx.outputs(which)
            return timed(lambda: registry("selectors").get(m)().select(ctx))
        t = alternating_medians(args.score_ns, score, args.reps)
        rows.append((f"{name} (scoring only)", f"n={args.score_ns}", t, exponent(args.score_ns, t)))
        nf = args.score_ns[len(args.score_ns) // 2]
        tf = alternating_medians(args.fractions, lambda f: score(nf, f), args.reps)
        rows.append((f"{name} (scoring only)", f"fraction={args.fractions} n={nf}", tf, exponent(args.fractions, tf)))
    if not args.skip_train:
        work = [(n, f) for n in (args.ns[0], args.ns[-1]) for f in (args.fractions[0], args.fractions[-1])]
        tt = alternating_medians(work, lambda p: train_time(p[0], p[1], args.model, args.image_size), args.reps)
        rows.append(("train epoch", f"(n, fraction)={work}", tt, exponent([n * f for n, f in work], tt)))

    print(f"\n{'what':<28}{'exponent':>9}  over  -> seconds")
    for what, over, vals, k in rows:
        print(f"{what:<28}{k:>9.2f}  {over} -> {', '.join(f'{v:.3f}' for v in vals)}")
    mem = peak_memory(SCORING, args.memory_ns, 0.1)
    if mem:
        print(f"\npeak extra RSS of one selection call (MiB) at n={args.memory_ns}, fraction 0.1, 1 thread:")
        for name, vals in mem.items():
            print(f"{name:<28}{exponent(args.memory_ns, [max(v, 1) for v in vals]):>9.2f}  "
                  f"{', '.join(f'{v / 2**20:.1f}' for v in vals)}")


if __name__ == "__main__":
    main()
