"""Training-speed benchmark: the in-memory data path and the cost of LSQ quantization.

    python benchmarks/training.py             # about 3.5 minutes on 2 idle CPU cores
    python benchmarks/training.py --reps 9 --images 50000 --step-images 12800 --steps 3

Everything is measured in this one process, repetitions of the compared variants
alternate, and each figure is the median over the repetitions:

(a) the data path of qcore_bench (a uint8 tensor on the device; batched random crop with
    padding, flip and normalisation as tensor operations: ``qcore_bench.data.augment`` and
    ``normalize``) against a torchvision DataLoader over the same images (PIL images,
    RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize, as many workers
    as CPUs), first for the data pipeline alone, then for whole training epochs of a
    small model;
(b) one training step (forward, backward, SGD update on a batch already in memory) of the
    LSQ-quantized model against the same model in full precision: CIFAR ResNet-18 W4/A4
    and MobileNetV2 x0.5 W2/A32 (ACS's weight-only policy), with qcore_bench's LSQ and
    with the reference implementation below.

Data are synthetic CIFAR-shaped images drawn from a seeded torch.Generator, so the
script needs no download. The machine's load average is printed: other processes on the
same cores inflate the absolute times and add noise that alternation only partly evens
out, so run it on an otherwise idle machine (or compare the CPU-time ratios of (b)). On a
shared CPU, torch's OpenMP threads spin while they wait for each other, and a busy core
then slows every multi-threaded op many times over: ``OMP_WAIT_POLICY=PASSIVE`` (set in
the environment, before Python starts) avoids that, and the header records it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from qcore_bench.allocator import keep_freed_memory
from qcore_bench.data import augment, normalize
from qcore_bench.models import build
from qcore_bench.models.mobilenetv2 import mobilenetv2
from qcore_bench.models.resnet import resnet8, resnet18
from qcore_bench.quant import LSQ, calibrate, param_groups, quantize_model, quantizers

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's channel statistics
STD = (0.2470, 0.2435, 0.2616)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x forward, gradient times ``scale`` backward."""
    y = x * scale
    return (x - y).detach() + y


class ReferenceLSQ(LSQ):
    """The reference implementation: LSQ written with the usual round/gradient-scale tricks,
    the autograd graph doing the rest (qcore_bench's LSQ before its fused autograd Function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 32:
            return x
        n = x[0].numel() if self.per_sample else x.numel()
        s = grad_scale(self.step, 1.0 / math.sqrt(n * self.qp))
        return round_ste(torch.clamp(x / s, self.qn, self.qp)) * s


def with_reference_lsq(model: nn.Module) -> nn.Module:
    """A copy of a quantized model whose quantizers run the reference implementation."""
    model = copy.deepcopy(model)
    for quantizer in quantizers(model):
        quantizer.__class__ = ReferenceLSQ
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(variants: dict[str, Callable[[], None]], reps: int,
              device: torch.device) -> dict[str, tuple[float, float]]:
    """Median wall-clock and process CPU seconds of each variant over ``reps`` alternating
    repetitions, after one warm-up each; the order rotates from one repetition to the next,
    so no variant always runs first. CPU time leaves out the waits for a core that other
    processes cause, but it also leaves out DataLoader workers: use it for in-process work only."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps + 1):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            run = variants[name]
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            sync(device)
            if rep > 0:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# (a) data paths


class PILImages(torch.utils.data.Dataset):
    """The usual torchvision path: an HWC uint8 array, a PIL image per item, PIL-level transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float batch as the trainer feeds it: channels_last on CUDA, as qcore_bench does."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """qcore_bench's fast path: gather, augment and normalise whole batches on the device."""
    order = torch.randperm(len(images), generator=generator).to(images.device)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        xb = augment(images[idx], 4, True, generator)
        yield on_device(normalize(xb, MEAN, STD), images.device), labels[idx]


def loader_batches(loader: torch.utils.data.DataLoader,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for xb, yb in loader:
        yield on_device(xb, device), yb.to(device, non_blocking=True)


def drain(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for _ in batches:
        pass


def train_pass(model: nn.Module, opt: torch.optim.Optimizer,
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """One epoch as qcore_bench.training.train_epoch runs it (cross-entropy, SGD)."""
    model.train()
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()


def bench_data(args: argparse.Namespace, device: torch.device, workers: int) -> list[tuple[str, float, float, str]]:
    gen = torch.Generator().manual_seed(0)
    n = max(args.images, args.step_images)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    dev_images, dev_labels = images.to(device), labels.to(device)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()

    def loader(count: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            PILImages(hwc[:count], labels[:count].numpy(), transform), batch_size=args.batch_size,
            shuffle=True, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(1))

    rows = []
    pipe_loader = loader(args.images)
    pipeline = alternate({
        "tensor": lambda: drain(tensor_batches(dev_images[:args.images], dev_labels[:args.images],
                                               args.batch_size, gen)),
        "loader": lambda: drain(loader_batches(pipe_loader, device)),
    }, args.reps, device)
    rows.append(("data pipeline alone", args.images / pipeline["tensor"][0], args.images / pipeline["loader"][0],
                 f"{args.images} images, batch {args.batch_size}"))
    del pipe_loader

    model = build(resnet8, 10, 3, torch.Generator().manual_seed(2)).to(device)
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9)
    step_loader = loader(args.step_images)
    count = args.step_images
    epochs = alternate({
        "tensor": lambda: train_pass(model, opt, tensor_batches(dev_images[:count], dev_labels[:count],
                                                                args.batch_size, gen)),
        "loader": lambda: train_pass(model, opt, loader_batches(step_loader, device)),
    }, args.reps, device)
    rows.append(("training epoch, ResNet-8 FP", count / epochs["tensor"][0], count / epochs["loader"][0],
                 f"{count} images, batch {args.batch_size}"))
    return rows


# ---------------------------------------------------------------------------------------------
# (b) QAT step vs full-precision step


def bench_qat(name: str, arch: Callable[..., nn.Module], num_classes: int, w_bits: int, a_bits: int,
              policy: str, batch_size: int, args: argparse.Namespace,
              device: torch.device) -> tuple[str, dict[str, tuple[float, float]]]:
    gen = torch.Generator().manual_seed(3)
    fp = build(arch, num_classes, 3, gen).to(device)
    x = on_device(torch.randn(batch_size, 3, 32, 32, generator=gen), device)
    if device.type == "cuda":
        fp = fp.to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    qat = quantize_model(fp, w_bits, a_bits, policy=policy)
    calibrate(qat, x)
    models = {"fp": fp, "lsq": qat, "reference": with_reference_lsq(qat)}
    opts = {k: torch.optim.SGD(param_groups(m, 5e-4), lr=0.01, momentum=0.9) for k, m in models.items()}

    def step(key: str) -> Callable[[], None]:
        def run() -> None:
            models[key].train()
            for _ in range(args.steps):
                loss = F.cross_entropy(models[key](x), y)
                opts[key].zero_grad(set_to_none=True)
                loss.backward()
                opts[key].step()
        return run

    times = alternate({k: step(k) for k in models}, args.reps, device)
    label = f"{name} W{w_bits}/A{a_bits}, batch {batch_size}"
    return label, {k: (wall / args.steps, cpu / args.steps) for k, (wall, cpu) in times.items()}


# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of (a) and of ResNet-18 in (b)")
    parser.add_argument("--images", type=int, default=10_000, help="images per pass of the data-pipeline test")
    parser.add_argument("--step-images", type=int, default=2_560, help="images per epoch of the ResNet-8 test")
    parser.add_argument("--mobilenet-batch-size", type=int, default=256, help="ACS's CIFAR-100 batch size")
    parser.add_argument("--steps", type=int, default=1, help="training steps per repetition in (b)")
    parser.add_argument("--resnet-policy", default="all", choices=("all", "acs_resnet"),
                        help="all: every conv but the stem and fc quantized; acs_resnet: ACS's 3x3-only policy")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip", choices=("data", "qat"), action="append", default=[], help="skip a part")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{cpu_model()}, {torch.get_num_threads()} torch threads")
    malloc = "freed memory kept" if keep_freed_memory() else "system"  # as the command line does
    print(f"hardware: {hardware}; {len(os.sched_getaffinity(0))} CPUs; device {device}; "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; malloc: {malloc}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; reps {args.reps} (median, alternating)\n")
    start = time.perf_counter()

    if "data" not in args.skip:
        print(f"(a) data path: images/s, tensor fast path vs torchvision DataLoader ({workers} workers)")
        print(f"    {'measured':32} {'tensor':>9} {'loader':>9} {'ratio':>6}  size")
        for label, fast, slow, size in bench_data(args, device, workers):
            print(f"    {label:32} {fast:9.0f} {slow:9.0f} {fast / slow:5.2f}x  {size}")
        print("    target: the fast path >= 2x the DataLoader path (for the data pipeline alone)\n")

    if "qat" not in args.skip:
        print("(b) seconds per training step (forward, backward, SGD) on a batch in memory;")
        print("    ratio to FP by wall-clock time [and by this process's CPU time]")
        print(f"    {'model':44} {'FP':>7} {'LSQ':>7} {'ratio':>14} {'ref LSQ':>8} {'ratio':>14}")
        cases = [
            ("CIFAR ResNet-18", resnet18, 10, 4, 4, args.resnet_policy, args.batch_size),
            ("MobileNetV2 x0.5", functools.partial(mobilenetv2, width=0.5), 100, 2, 32,
             "weight_only_blocks", args.mobilenet_batch_size),
        ]
        for case in cases:
            label, t = bench_qat(*case, args, device)
            ratios = {k: f"{t[k][0] / t['fp'][0]:.2f}x [{t[k][1] / t['fp'][1]:.2f}x]" for k in ("lsq", "reference")}
            print(f"    {label:44} {t['fp'][0]:7.3f} {t['lsq'][0]:7.3f} {ratios['lsq']:>14} "
                  f"{t['reference'][0]:8.3f} {ratios['reference']:>14}")
        print(f"    quantization policies: ResNet-18 {args.resnet_policy!r}, MobileNetV2 'weight_only_blocks' (ACS's)")
        print("    LSQ: qcore_bench.quant (fused autograd Function); ref LSQ: the same quantizer as "
              "round/gradient-scale")
        print("    tricks under autograd (ReferenceLSQ in this script). Target: LSQ <= 1.3x FP\n")

    print(f"total {time.perf_counter() - start:.0f} s; load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
