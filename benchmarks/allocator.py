"""What keeping freed memory (``qcore_bench.allocator``) buys on CPU.

    python benchmarks/allocator.py                 # about 2 minutes on 2 idle CPU cores
    python benchmarks/allocator.py --images 8192 --reps 5 --model resnet20

The command line tunes glibc's malloc before any work (``keep_freed_memory``); this
script measures what that changes. One child process per variant and repetition, the
variants alternating (system malloc, kept, kept, system, ...), each child timing after a
warm-up: (1) the selection floor, one eval forward pass of a W2/A32 student over the
images at the runner's eval batch (1024), and (2) one training epoch of that student at
batch 128 with the fast data path's augmentation. Printed: the medians, the ratio, each
variant's system-CPU share and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection import cpu_model, models, synthetic_data  # noqa: E402

from qcore_bench.allocator import OPT_OUT, keep_freed_memory  # noqa: E402
from qcore_bench.data.device import TensorData  # noqa: E402
from qcore_bench.selection import compute_outputs  # noqa: E402
from qcore_bench.schema import Train  # noqa: E402
from qcore_bench.training import make_optimizer, train_epoch  # noqa: E402


def child(model: str, images: int, eval_batch: int) -> dict[str, float]:
    """Time the two passes in this process, after one warm-up of each."""
    kept = keep_freed_memory()
    raw = synthetic_data(images, 10, 32)
    data, labels = TensorData(raw, torch.device("cpu")), raw.train_y
    _, student = models(model, 10, data, eval_batch)
    opt = make_optimizer(student, Train(epochs=1, batch_size=128, lr=0.05))
    everything = torch.arange(images)

    def forward() -> None:
        compute_outputs(student, lambda: data.train_eval_batches(eval_batch))

    def epoch() -> None:
        train_epoch(student, opt, data, labels, everything, batch_size=128, augmented=True,
                    generator=torch.Generator().manual_seed(0))

    out: dict[str, float] = {"kept": float(kept)}
    for name, fn in (("forward", forward), ("epoch", epoch)):
        fn()
        start, cpu = time.perf_counter(), os.times()
        fn()
        end = os.times()
        out[name] = time.perf_counter() - start
        out[f"{name}_sys_share"] = (end.system - cpu.system) / max(1e-9, (end.system - cpu.system)
                                                                  + (end.user - cpu.user))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(args: argparse.Namespace, system: bool) -> dict[str, float]:
    env = {**os.environ, OPT_OUT: "1" if system else "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", "--model", args.model, "--images", str(args.images),
                           "--eval-batch", str(args.eval_batch)], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.images, args.eval_batch)))
        return
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"model={args.model} W2/A32, {args.images} images 32x32, eval batch {args.eval_batch}, "
          f"train batch 128, reps={args.reps} (alternating child processes, medians)")
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for rep in range(args.reps):
        for system in ((True, False) if rep % 2 == 0 else (False, True)):
            runs[system].append(run_child(args, system))
    if not all(r["kept"] for r in runs[False]):
        print("mallopt is not available here (not glibc): nothing to compare")
        return
    med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in runs[s][0]} for s in runs}
    print(f"\n{'pass':<34}{'system':>9}{'kept':>9}{'speed-up':>10}{'sys CPU share':>20}")
    for key, label in (("forward", "selection floor (eval forward)"), ("epoch", "training epoch (all images)")):
        ratio = statistics.median(a[key] / b[key] for a, b in zip(runs[True], runs[False]))
        share = f"{med[True][key + '_sys_share']:.0%} -> {med[False][key + '_sys_share']:.0%}"
        print(f"{label:<34}{med[True][key]:>8.2f}s{med[False][key]:>8.2f}s{ratio:>9.2f}x{share:>20}")
    print(f"{'peak RSS (MiB)':<34}{med[True]['peak_rss_mib']:>9.0f}{med[False]['peak_rss_mib']:>9.0f}")


if __name__ == "__main__":
    main()
