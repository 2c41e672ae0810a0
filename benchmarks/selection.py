"""Selection-cost benchmark: every selector's call against the floor of one student forward pass.

    python benchmarks/selection.py                          # n = 10,000, ResNet-8, 32x32
    python benchmarks/selection.py --n 50000 --model resnet20 --reps 5

The floor of a score-based adaptive selector is one streamed, eval-mode, no-grad forward
pass of the quantized student over the training set (``compute_outputs`` with the runner's
eval batch size, 1024). Each selector's ``select(ctx)`` is timed with a SelectionContext
built as the runner builds it: student outputs computed for real through compute_outputs,
teacher outputs computed once before timing (the runner caches them in memory and on
disk), proxy runs from a real ``ProxyTrainer`` whose cache was filled by the sweep below.

Everything runs in this one process; the order of the timed calls alternates between
repetitions (forwards, then backwards) and each figure is the median over repetitions.
The ratio is the median of the per-repetition ratios to that repetition's floor, which
stays fair on a loaded machine. Also measured:

* the proxy's training cost, and a 5-fraction sweep of every proxy-based selector (one
  ProxyTrainer per cell, as the runner makes them) counting how many proxies were trained;
* ``acs_reference``: ACS done the reference code's way, re-instantiating the FP model from
  its saved weights and recomputing its outputs at every selection.

Data are synthetic CIFAR-shaped images from a seeded torch.Generator; models have random
weights (the cost of a pass does not depend on them).
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

from qcore_bench.allocator import keep_freed_memory
from qcore_bench.data.bundle import ImageData
from qcore_bench.data.device import TensorData
from qcore_bench.models import build
from qcore_bench.proxy import ProxyTrainer
from qcore_bench.quant import calibrate, quantize_model
from qcore_bench.registry import registry
from qcore_bench.selection import Outputs, SelectionContext, compute_outputs
from qcore_bench.selectors.acs import ACSSelector
from qcore_bench.suite import Cell, expand, load_suite

SELECTORS = ("random", "full", "acs", "el2n", "grand", "forgetting", "uncertainty", "glister", "moderate",
             "kcenter", "contextual_diversity")
SWEEP_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_line() -> str:
    """The machine, and glibc's malloc tuned as the command line tunes it (``qcore_bench.allocator``)."""
    malloc = "freed memory kept" if keep_freed_memory() else "system"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, malloc: {malloc}, "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def synthetic_data(n: int, classes: int, size: int, seed: int = 0) -> ImageData:
    """CIFAR-shaped uint8 images and labels from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return ImageData(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, classes, (n,), generator=g),
                     torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, classes, (64,), generator=g),
                     tuple(str(c) for c in range(classes)), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 4, True)


def models(arch: str, classes: int, data: TensorData, batch_size: int) -> tuple[nn.Module, nn.Module]:
    """An FP teacher and its W2/A32 LSQ student, calibrated on one batch as the runner does."""
    teacher = build(registry("models").get(arch), classes, 3, torch.Generator().manual_seed(1))
    teacher.eval()
    student = quantize_model(teacher, 2, 32)
    calibrate(student, next(iter(data.train_eval_batches(min(batch_size, 256)))))
    return teacher, student


def make_cell(arch: str, n: int, classes: int, proxy_epochs: int, folder: Path) -> Cell:
    """A cell as a suite would expand it; ProxyTrainer keys its cache on it."""
    suite = {"name": "bench", "train": {"epochs": 1, "batch_size": 128, "lr": 0.05},
             "teacher": {"epochs": 1, "batch_size": 128},
             "grid": {"dataset": {"name": "synthetic", "params": {"n_train": n, "num_classes": classes}},
                      "model": arch, "bits": ["2/32"], "fraction": [0.1], "noise": [0.0],
                      "method": [{"name": "el2n", "params": {"proxy_epochs": proxy_epochs}}], "seed": [0]}}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(suite))
    return expand(load_suite(path))[0]


def selector(name: str, proxy_epochs: int) -> object:
    """The registered selector with its defaults, all proxies on one shared recipe."""
    cls = registry("selectors").get(name)
    params = {"proxy_epochs": proxy_epochs} if "proxy_epochs" in inspect.signature(cls).parameters else {}
    return cls(**params)


class Bench:
    """Everything one timed call needs: data, models, cached teacher outputs, proxy trainer factory."""

    def __init__(self, n: int, arch: str, size: int, classes: int, batch_size: int, proxy_epochs: int,
                 folder: Path) -> None:
        images = synthetic_data(n, classes, size)
        self.data, self.labels = TensorData(images, torch.device("cpu")), images.train_y
        self.classes, self.batch_size, self.arch = classes, batch_size, arch
        self.teacher, self.student = models(arch, classes, self.data, batch_size)
        self.cell = make_cell(arch, n, classes, proxy_epochs, folder)
        self.folder = folder
        start = time.perf_counter()
        self.teacher_out = self.forward(self.teacher)  # cached once, as the runner does
        self.teacher_seconds = time.perf_counter() - start
        self.fp_weights = folder / "teacher.pt"
        torch.save(self.teacher.state_dict(), self.fp_weights)

    def forward(self, model: nn.Module) -> Outputs:
        return compute_outputs(model, lambda: self.data.train_eval_batches(self.batch_size))

    def trainer(self) -> ProxyTrainer:
        return ProxyTrainer(self.cell, self.data, self.labels, self.classes, 3, self.teacher,
                            self.folder / "cache", self.batch_size)

    def context(self, fraction: float, teacher: Callable[[], Outputs] | None = None,
                trainer: ProxyTrainer | None = None) -> SelectionContext:
        """Mid-run (epoch 5 of 10), so ACS computes both of its scores."""
        return SelectionContext(epoch=5, total_epochs=10, fraction=fraction, labels=self.labels,
                                num_classes=self.classes, balanced=True, student=self.student, teacher=self.teacher,
                                output_fns={"student": lambda: self.forward(self.student),
                                            "teacher": teacher or (lambda: self.teacher_out)},
                                generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), seed=0,
                                proxy_fn=trainer or self.trainer())

    def acs_reference(self, fraction: float) -> None:
        """The reference code's way: rebuild the FP model, reload its weights, score it again."""
        def teacher() -> Outputs:
            fp = build(registry("models").get(self.arch), self.classes, 3, torch.Generator().manual_seed(2))
            fp.load_state_dict(torch.load(self.fp_weights, weights_only=True))
            return self.forward(fp)
        ACSSelector().select(self.context(fraction, teacher))


def proxy_sweep(bench: Bench, names: list[str], proxy_epochs: int) -> tuple[list[str], int, int, float]:
    """Each selector at 5 fractions, one ProxyTrainer per cell, cold caches (memory and disk).

    Returns (the selectors that asked for a proxy, cells, proxies trained, seconds of that training)."""
    ProxyTrainer._memory = OrderedDict()
    proxied: list[str] = []
    trained, seconds, cells = 0, 0.0, 0
    for fraction in SWEEP_FRACTIONS:
        for name in names:
            trainer = bench.trainer()
            selector(name, proxy_epochs).select(bench.context(fraction, trainer=trainer))
            if trainer.cost["runs"]:
                proxied += [name] if name not in proxied else []
                cells += 1
            trained += trainer.cost["trained_here"]
            if trainer.cost["trained_here"]:
                seconds += trainer.cost["seconds"]
    return proxied, cells, trained, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024, help="eval batch size (the runner's default)")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--proxy-epochs", type=int, default=1, help="shared by every proxy-based selector")
    ap.add_argument("--selectors", default=",".join(SELECTORS))
    args = ap.parse_args()
    names = args.selectors.split(",")
    print(hardware_line())
    print(f"n={args.n} model={args.model} W2/A32 image={args.image_size} classes={args.classes} "
          f"reps={args.reps} eval batch={args.batch_size} fraction={args.fraction} proxy_epochs={args.proxy_epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args.n, args.model, args.image_size, args.classes, args.batch_size, args.proxy_epochs, Path(tmp))
        print(f"teacher outputs (once, cached): {bench.teacher_seconds:.2f} s")

        candidates = [m for m in names if m not in ("random", "full", "acs")]
        proxied, cells, trained, proxy_seconds = proxy_sweep(bench, candidates, args.proxy_epochs)  # warms the cache

        timed: dict[str, Callable[[], object]] = {"floor": lambda: bench.forward(bench.student)}
        for name in names:
            timed[name] = (lambda m=name: selector(m, args.proxy_epochs).select(bench.context(args.fraction)))
        timed["acs_reference"] = lambda: bench.acs_reference(args.fraction)
        seconds: dict[str, list[float]] = {k: [] for k in timed}
        for rep in range(args.reps):
            order = list(timed) if rep % 2 == 0 else list(reversed(timed))
            for key in order:
                start = time.perf_counter()
                timed[key]()
                seconds[key].append(time.perf_counter() - start)
            print(f"  rep {rep + 1}/{args.reps} done; load {os.getloadavg()[0]:.1f}", flush=True)

    floor = statistics.median(seconds["floor"])
    notes = {"acs": "one student pass; teacher outputs cached",
             "acs_reference": "rebuild + reload FP model, recompute its outputs, student pass",
             "random": "no model", "full": "no model"}
    for m in proxied:
        notes[m] = "cached proxy run (trained in the sweep)"
    for m in ("moderate", "kcenter"):
        if m in names and m not in proxied:
            notes[m] = "cached teacher outputs"
    print(f"\n{'selector':<22}{'seconds':>10}{'x floor':>10}  notes")
    for key, vals in seconds.items():
        ratio = statistics.median(v / f for v, f in zip(vals, seconds["floor"]))
        note = "eval forward of the W2/A32 student over n" if key == "floor" else notes.get(key, "")
        print(f"{key:<22}{statistics.median(vals):>10.3f}{ratio:>10.3f}  {note}")
    if proxied:
        print(f"\nproxy ({args.proxy_epochs} epochs, {args.model}, full data): {proxy_seconds:.2f} s "
              f"= {proxy_seconds / floor:.1f}x floor")
        print(f"sweep: {len(proxied)} proxy-based selectors x {len(SWEEP_FRACTIONS)} fractions = {cells} cells, "
              f"proxies trained: {trained} (DeepCore-style, one per run: {cells}, "
              f"~{cells * proxy_seconds:.0f} s instead of {proxy_seconds:.0f} s)")


if __name__ == "__main__":
    main()
