"""GPU evidence in one run: training-step speed, selection against its floor, the data path,
a short real cell, and projected GPU-hours for the paper's tables.

    python benchmarks/gpu.py --out results/gpu              # one GPU, at most ~8 minutes on an H200
    python benchmarks/gpu.py --tiny --out /tmp/gpu          # seconds on a CPU: the same code paths, tiny sizes

Writes ``gpu.json`` (every number) and ``gpu.md`` (a summary) into ``--out``. What it measures:

1. images/s of a training step (forward, backward, SGD update on a batch already on the device)
   for CIFAR ResNet-18 and MobileNetV2 x0.5, full precision and LSQ QAT (W4/A4 and W2/A32,
   the paper's settings), plain, with channels_last, with bf16 autocast, and with
   torch.compile on top; the LSQ / FP time ratio of each variant. (The harness itself
   keeps the quantized student in float32: the bf16 LSQ rows say what that costs.)
2. ACS selection over 50,000 CIFAR-sized images against its floor, one eval forward pass of
   the quantized student (the teacher's outputs cached, as in a run).
3. the data path: the in-memory uint8 tensor path (crop, flip, normalise on the device)
   against a torchvision DataLoader with PIL transforms and workers, images/s.
4. a short real cell through ``run_cell``: ResNet-18 W2/A32, 10% kept, a few epochs, on the
   CIFAR-10 ImageFolder copy given by ``--root`` (else class-conditional synthetic images of
   CIFAR's shape), with its wall time and accuracy.
5. projected GPU-hours for the paper's CIFAR-10, CIFAR-100 and ImageNet tables from those rates
   (training images / measured QAT rate + the evaluation passes; selection and teachers apart).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from qcore_bench.allocator import keep_freed_memory
from qcore_bench.data.augment import augment, normalize
from qcore_bench.data.bundle import ImageData
from qcore_bench.data.device import TensorData
from qcore_bench.models import build
from qcore_bench.models.imagenet import resnet18_imagenet
from qcore_bench.models.mobilenetv2 import mobilenetv2
from qcore_bench.models.resnet import resnet8, resnet18
from qcore_bench.provenance import code_version, device_name
from qcore_bench.quant import calibrate, quantize_model
from qcore_bench.selection import SelectionContext, compute_outputs
from qcore_bench.selectors.acs import ACSSelector

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` calls, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- 1. training steps

def step_rates(device: torch.device, tiny: bool) -> list[dict[str, Any]]:
    batch, steps = (8, 2) if tiny else (256, 20)
    size = 16 if tiny else 32
    models = {"resnet18": (resnet8 if tiny else resnet18, {}, ("4/4", "2/32"), "all"),
              "mobilenetv2_x0.5": (mobilenetv2, {"width": 0.5}, ("2/32",), "weight_only_blocks")}
    variants = [("plain", False, False, False), ("channels_last", True, False, False),
                ("channels_last+bf16", True, True, False), ("channels_last+bf16+compile", True, True, True)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    rows = []
    for name, (arch, params, bit_list, policy) in models.items():
        fp = build(arch, 100, 3, torch.Generator().manual_seed(1), params)
        for bits in ("32/32", *bit_list):
            w, a = (int(b) for b in bits.split("/"))
            model = fp if bits == "32/32" else quantize_model(fp, w, a, policy=policy)
            if bits != "32/32":
                calibrate(model, x.cpu())
            for label, cl, bf16, compiled in variants:
                if compiled and (tiny or device.type != "cuda"):
                    rows.append({"model": name, "bits": bits, "variant": label, "skipped": "CUDA only"})
                    continue
                m = copy.deepcopy(model).to(device)
                xb = x
                if cl:
                    m, xb = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
                opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                fwd = torch.compile(m) if compiled else m

                def step() -> None:
                    for _ in range(steps):
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                            loss = F.cross_entropy(fwd(xb), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                seconds = timed(step, device, 1 if tiny else 3)
                rows.append({"model": name, "bits": bits, "variant": label, "images_per_s": batch * steps / seconds})
    fp_rate = {(r["model"], r["variant"]): r["images_per_s"] for r in rows if r["bits"] == "32/32" and "images_per_s" in r}
    for r in rows:
        if "images_per_s" in r and r["bits"] != "32/32":
            r["lsq_over_fp_time"] = fp_rate[(r["model"], r["variant"])] / r["images_per_s"]
    return rows


# ---------------------------------------------------------------- 2. ACS selection vs its floor

def selection(device: torch.device, tiny: bool) -> dict[str, Any]:
    n, size = (512, 16) if tiny else (50000, 32)
    g = torch.Generator().manual_seed(2)
    data = ImageData(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=g), torch.zeros(1, 3, size, size, dtype=torch.uint8),
                     torch.zeros(1, dtype=torch.long), tuple(map(str, range(10))), MEAN, STD, 4, True)
    tensor_data = TensorData(data, device)
    teacher = build(resnet8 if tiny else resnet18, 10, 3, torch.Generator().manual_seed(3)).to(device).eval()
    student = quantize_model(teacher, 2, 32).to(device)
    calibrate(student, next(tensor_data.train_eval_batches(64)))
    batch = 256 if tiny else 1024

    def floor() -> Any:
        return compute_outputs(student, lambda: tensor_data.train_eval_batches(batch))
    teacher_out = compute_outputs(teacher, lambda: tensor_data.train_eval_batches(batch))
    labels = data.train_y

    def acs() -> Any:
        ctx = SelectionContext(epoch=5, total_epochs=20, fraction=0.1, labels=labels, num_classes=10, balanced=True,
                               student=student, teacher=teacher,
                               output_fns={"student": floor, "teacher": lambda: teacher_out},
                               generator=torch.Generator().manual_seed(4), device=device, seed=0)
        return ACSSelector(every=5).select(ctx)
    reps = 1 if tiny else 3
    floor_s, acs_s = timed(floor, device, reps), timed(acs, device, reps)
    return {"n": n, "floor_seconds": floor_s, "acs_seconds": acs_s, "acs_over_floor": acs_s / floor_s}


# ---------------------------------------------------------------- 3. the data path

def data_path(device: torch.device, tiny: bool) -> dict[str, Any]:
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    n, batch = (256, 64) if tiny else (50000, 512)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    gpu = x.to(device)

    def tensor_path() -> None:
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = order[i:i + batch].to(device)
            xb = normalize(augment(gpu[idx], 4, True, g), MEAN, STD)
        sync(device)
        del xb

    images = [Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())) for img in x]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    class Set(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return tf(images[i]), int(y[i])
    workers = 0 if tiny else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(Set(), batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(6))

    def loader_path() -> None:
        for xb, _ in loader:
            xb = xb.to(device, non_blocking=True)
        sync(device)
    reps = 1 if tiny else 2
    t_tensor, t_loader = timed(tensor_path, device, reps), timed(loader_path, device, reps)
    return {"n": n, "tensor_images_per_s": n / t_tensor, "dataloader_images_per_s": n / t_loader,
            "dataloader_workers": workers, "speedup": t_loader / t_tensor}


# ---------------------------------------------------------------- 4. a short real cell

def real_cell(device: torch.device, tiny: bool, root: str | None) -> dict[str, Any]:
    from qcore_bench.executors import Job
    from qcore_bench.store import Store
    from qcore_bench.suite import Suite, expand

    if root:
        dataset = {"name": "imagefolder", "root": root, "params": {} if not tiny else {"max_train": 500,
                                                                                       "max_test": 200}}
    else:
        dataset = {"name": "synthetic", "params": {"n_train": 256 if tiny else 50000, "n_test": 128 if tiny else 10000,
                                                   "num_classes": 10, "image_size": 8 if tiny else 32}}
    suite = Suite.model_validate({
        "name": "gpu_cell", "train": {"epochs": 1 if tiny else 3, "batch_size": 32 if tiny else 256, "lr": 0.05},
        "teacher": {"epochs": 1 if tiny else 3, "batch_size": 32 if tiny else 256},
        "grid": {"dataset": dataset, "model": "resnet8" if tiny else "resnet18", "bits": ["2/32"],
                 "fraction": [0.1], "method": [{"name": "acs", "params": {"every": 1}}], "seed": [0]}})
    (cell,) = expand(suite)
    from qcore_bench.runner import run_cell

    with tempfile.TemporaryDirectory() as tmp:
        job = Job(Store(Path(tmp) / "results"), str(device), Path(tmp) / "cache")
        start = time.perf_counter()
        result = run_cell(cell, job.store, job.runtime())
        wall = time.perf_counter() - start
    return {"data": dataset["name"], "epochs": cell.train.epochs, "wall_seconds": wall,
            "final_acc": result["final_acc"], "teacher_acc": result["teacher"]["test_acc"],
            "teacher_seconds": result["teacher"]["seconds"], "train_seconds": result["train_seconds"],
            "selection_seconds": result["selection_seconds"], "samples_trained": result["samples_trained"]}


# ---------------------------------------------------------------- 5. projections

# the paper's tables as cells: (label, train images, test images, epochs, fractions, methods, runs, model key)
PAPER = [
    ("CIFAR-10 ResNet-18 2/32 and 4/32 (200 epochs assumed; the 2/32 rate for both)", 50000, 10000, 200,
     (0.1, 0.2, 0.3, 0.4, 0.5), 8, 2 * 3, ("resnet18", "2/32")),
    ("CIFAR-100 MobileNetV2 x0.5 W2/A32 (200 epochs, 5 runs)", 50000, 10000, 200,
     (0.1, 0.2, 0.3, 0.4, 0.5), 8, 5, ("mobilenetv2_x0.5", "2/32")),
    ("ImageNet ResNet-18 W4/A4 (120 epochs, 1 run)", 1281167, 50000, 120,
     (0.1, 0.3, 0.5, 0.6, 0.7, 0.8), 8, 1, ("resnet18_imagenet", "4/4")),
]


def imagenet_rate(device: torch.device, tiny: bool) -> dict[str, Any]:
    """ResNet-18 W4/A4 at 224x224 (the ImageNet student), its best variant without compile."""
    batch, size = (2, 64) if tiny else (256, 224)
    fp = build(resnet18_imagenet, 1000, 3, torch.Generator().manual_seed(7))
    x = torch.randn(batch, 3, size, size).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,)).to(device)
    model = quantize_model(fp, 4, 4)
    calibrate(model, x.cpu().contiguous())
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        for _ in range(1 if tiny else 10):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = timed(step, device, 1 if tiny else 3)
    return {"model": "resnet18_imagenet", "bits": "4/4", "variant": "channels_last",
            "images_per_s": batch * (1 if tiny else 10) / seconds, "image_size": size}


def projections(rates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str], float] = {}
    for r in rates:
        if "images_per_s" in r and "compile" not in r["variant"] and "bf16" not in r["variant"]:
            key = (r["model"], r["bits"])
            best[key] = max(best.get(key, 0.0), r["images_per_s"])
    out = []
    for label, n, n_test, epochs, fractions, methods, runs, key in PAPER:
        rate = best.get(key)
        if rate is None:
            continue
        train = sum(f * n * epochs for f in fractions) * methods * runs + n * epochs * runs  # + the full-data row
        cells = len(fractions) * methods * runs + runs
        evaluation = n_test * epochs * cells / 3  # an eval forward costs about a third of a training step
        hours = (train + evaluation) / rate / 3600
        out.append({"table": label, "cells": cells, "qat_images_per_s": rate, "gpu_hours": hours})
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU evidence ({'tiny, ' if report['tiny'] else ''}{env['device_name']})", "",
             f"torch {env['torch']}, commit {env['code'].get('commit', '?')[:12]}, wall {report['seconds']:.0f} s", "",
             "## Training steps (images/s)", "", "| model | bits | variant | images/s | LSQ/FP time |",
             "|---|---|---|---:|---:|"]
    for r in report["steps"]:
        rate = f"{r['images_per_s']:.0f}" if "images_per_s" in r else r.get("skipped", "")
        ratio = f"{r['lsq_over_fp_time']:.2f}" if "lsq_over_fp_time" in r else ""
        lines.append(f"| {r['model']} | {r['bits']} | {r['variant']} | {rate} | {ratio} |")
    s, d, c = report["selection"], report["data_path"], report["cell"]
    lines += ["", f"## ACS selection: {s['acs_over_floor']:.3f}x its floor ({s['acs_seconds']:.2f} s vs "
              f"{s['floor_seconds']:.2f} s over {s['n']} images)", "",
              f"## Data path: tensor {d['tensor_images_per_s']:.0f} images/s vs DataLoader "
              f"{d['dataloader_images_per_s']:.0f} ({d['dataloader_workers']} workers): {d['speedup']:.1f}x", "",
              f"## A real cell ({c['data']}, {c['epochs']} epoch(s)): {c['wall_seconds']:.1f} s, final acc "
              f"{c['final_acc']:.2f}% (teacher {c['teacher_acc']:.2f}%)", "",
              "## Projected GPU-hours (training + evaluation at the measured rate; selection and teachers apart)", "",
              "| table | cells | QAT images/s | GPU-hours |", "|---|---:|---:|---:|"]
    lines += [f"| {p['table']} | {p['cells']} | {p['qat_images_per_s']:.0f} | {p['gpu_hours']:.1f} |"
              for p in report["projections"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, CPU allowed: checks the code paths in seconds")
    ap.add_argument("--root", default=None, help="CIFAR-10 in ImageFolder layout for the real cell")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = ap.parse_args()
    keep_freed_memory()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("error: no GPU here: run with --tiny for a CPU check of the code paths")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:  # a CPU check: one thread, as a cell runs (OpenMP threads stall each other on a busy machine)
        torch.set_num_threads(1)
    start = time.perf_counter()
    steps = step_rates(device, args.tiny)
    steps.append(imagenet_rate(device, args.tiny))
    report = {"tiny": args.tiny, "environment": {"device": str(device), "device_name": device_name(device),
                                                 "torch": torch.__version__, "code": code_version()},
              "steps": steps, "selection": selection(device, args.tiny), "data_path": data_path(device, args.tiny),
              "cell": real_cell(device, args.tiny, args.root), "projections": projections(steps)}
    report["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    (out / "gpu.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
