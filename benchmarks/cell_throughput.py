"""How close a cell's training comes to the limit: the harness's epoch against a bare PyTorch loop.

    python benchmarks/cell_throughput.py            # about 2 minutes on one CPU thread
    python benchmarks/cell_throughput.py --fraction 0.3 --reps 7

Both sides train the same LSQ-quantized CIFAR ResNet-8 (W2/A32, the cifar10_cpu suite's
student) on the same uint8 images with the same batch size, random crop (padding 4) + flip
and normalisation, SGD with Nesterov momentum, one CPU thread:

- harness: ``qcore_bench.training.train_epoch`` over a ``TensorData``, exactly what
  ``run_cell`` calls each epoch (seeded order and augmentation, per-sample losses, the loss
  kept on the device with a finiteness check every 100 batches, the subset's indices);
- bare: the loop one writes by hand: index the subset, pad-and-crop by advanced indexing,
  flip, normalise, forward, mean cross-entropy, backward, step; nothing else.

Each repetition runs one epoch of each, alternating, on fresh copies of one model, and the
figure is the median ratio of the harness's images/s to the bare loop's. Data are the
CIFAR-10 JPEG copy when ``--root`` names one (ImageFolder layout), else seeded random
images of the same shape (the speed does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qcore_bench.allocator import keep_freed_memory
from qcore_bench.data.bundle import ImageData
from qcore_bench.data.device import TensorData
from qcore_bench.models import build
from qcore_bench.models.resnet import resnet8
from qcore_bench.provenance import cpu_model
from qcore_bench.quant import calibrate, quantize_model
from qcore_bench.recipes import Recipe
from qcore_bench.training import make_optimizer, train_epoch

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def images(root: str | None, n: int) -> ImageData:
    if root:
        from qcore_bench.data.imagefolder import load_imagefolder

        data = load_imagefolder(root, Path(os.environ.get("QCORE_CACHE", Path.home() / ".cache/qcore-bench")),
                                max_train=n, max_test=100)
        return data
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData(x, y, x[:100].clone(), y[:100].clone(), tuple(str(c) for c in range(10)), MEAN, STD, 4, True)


def bare_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor, y_all: torch.Tensor,
               subset: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
    """The hand-written loop: nothing but the work every QAT step needs."""
    model.train()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    order = subset[torch.randperm(len(subset), generator=generator)]
    ar = torch.arange(32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        b = len(idx)
        xb = F.pad(x_all[idx], (4, 4, 4, 4))
        off = torch.randint(0, 9, (2, b), generator=generator)
        rows, cols = off[0, :, None] + ar, off[1, :, None] + ar
        xb = xb[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]
        flip = torch.rand(b, generator=generator) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        xb = (xb.float() / 255 - mean) / std
        loss = F.cross_entropy(model(xb), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="an ImageFolder CIFAR-10 (train/ test/), else random images")
    ap.add_argument("--n", type=int, default=10000, help="training images (the cifar10_cpu subset)")
    ap.add_argument("--fraction", type=float, default=0.1, help="kept fraction per epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    data = images(args.root, args.n)
    recipe = Recipe(lr=0.02, batch_size=args.batch)
    fp = build(resnet8, 10, 3, torch.Generator().manual_seed(1))
    student = quantize_model(fp, 2, 32)
    calibrate(student, (data.train_x[:args.batch].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1))
              / torch.tensor(STD).view(1, 3, 1, 1))
    tensor_data = TensorData(data, torch.device("cpu"))
    subset = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(2))[
        : round(args.fraction * len(data.train_y))]
    print(f"# {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{os.getloadavg()[0]:.2f}; ResNet-8 W2/A32, {len(subset)} images/epoch, batch {args.batch}")
    ratios, rates = [], {"harness": [], "bare": []}
    for rep in range(args.reps):
        times = {}
        for side in (("harness", "bare") if rep % 2 == 0 else ("bare", "harness")):
            model = copy.deepcopy(student)
            opt = make_optimizer(model, recipe)
            gen = torch.Generator().manual_seed(100 + rep)
            start = time.perf_counter()
            if side == "harness":
                train_epoch(model, opt, tensor_data, data.train_y, subset, batch_size=args.batch, augmented=True,
                            generator=gen)
            else:
                bare_epoch(model, opt, data.train_x, data.train_y, subset, args.batch, gen)
            times[side] = time.perf_counter() - start
            rates[side].append(len(subset) / times[side])
        ratios.append(times["bare"] / times["harness"])
        print(f"rep {rep}: harness {len(subset) / times['harness']:.0f} img/s, bare {len(subset) / times['bare']:.0f}"
              f" img/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"harness / bare loop throughput: median {statistics.median(ratios):.3f} "
          f"(harness {statistics.median(rates['harness']):.0f} img/s, bare {statistics.median(rates['bare']):.0f} "
          f"img/s; goal >= 0.95)")


if __name__ == "__main__":
    main()
