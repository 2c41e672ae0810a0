"""Detection benchmarks: per-image ACS selection against the student-forward floor, and the RetinaNet
LSQ QAT training step against the full-precision one.

    python benchmarks/detection.py           # shapes, 400 images of 64 px, data and retinanet_small as in detection_cpu
    python benchmarks/detection.py --model retinanet_resnet18_fpn --params '{}' --size 512 --n 200 --device cuda

* Floor: one eval-mode, no-grad forward pass of the W4/A4 student (backbone, FPN and head, the part
  every per-image score needs) over the training images, batched by size as the scoring pass is.
* ACS: ``select`` of the acs selector through a SelectionContext as the detection loop builds it:
  the student's one scoring pass (``anchor_terms``: matching, d_EVS and d_DS terms) plus the
  reduction and the top-k; the teacher's confident anchors computed once before timing (the loop
  caches them on disk).
* Step: one training step (forward with losses, backward, SGD step) on a batch of ``--batch`` images,
  FP model against its LSQ W4/A4 copy, with the same inputs.

Repetitions alternate the compared variants; each figure is the median, the ratio the median of
per-repetition ratios (fair on a loaded machine). Weights are random (a pass costs the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from selection import hardware_line  # noqa: E402

from qcore_bench.data.shapes import load_shapes  # noqa: E402
from qcore_bench.models.retinanet import build_detector  # noqa: E402
from qcore_bench.quant import calibrate, quantize_model  # noqa: E402
from qcore_bench.registry import registry  # noqa: E402
from qcore_bench.selection import SelectionContext  # noqa: E402
from qcore_bench.tasks.detection.steps import anchor_terms, images, size_groups, teacher_anchors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="retinanet_small")
    parser.add_argument("--n", type=int, default=400, help="training images scored")
    parser.add_argument("--params", default='{"width": 32, "fpn_width": 64, "head_groups": 16}',
                        help="the model's parameters (JSON); default: suites/detection_cpu.yaml's")
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--batch", type=int, default=8, help="training batch of the step benchmark")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dev = torch.device(args.device)
    print(hardware_line())
    with tempfile.TemporaryDirectory() as tmp:
        data = load_shapes(None, Path(tmp), n_train=args.n, n_test=8, image_size=args.size, max_overlap=0.0,
                           min_radius=0.15)  # the objects of detection_cpu
        for i in range(data.n_train):  # decode once, outside every timing
            data.image("train", i)
        arch = registry("models").get(args.model)
        params = json.loads(args.params)
        teacher = build_detector(arch, data.num_classes, torch.Generator().manual_seed(0), params).to(dev).eval()
        student = quantize_model(teacher, 4, 4).to(dev)
        calibrate(student, images(data, "train", list(range(args.batch)), dev))
        anchors = teacher_anchors(teacher, data, args.eval_batch, dev)
        acs = registry("selectors").get("acs")()
        every = torch.arange(data.n_train)

        @torch.no_grad()
        def floor() -> None:
            student.eval()
            for idx in size_groups(data, "train", every, args.eval_batch):
                xs, _ = student.transform(images(data, "train", idx, dev))
                student.head(list(student.backbone(xs.tensors).values()))

        def select() -> None:
            ctx = SelectionContext(
                epoch=0, total_epochs=10, fraction=0.1, labels=torch.zeros(data.n_train, dtype=torch.int64),
                num_classes=1, balanced=False, student=student, teacher=teacher,
                output_fns={"student": lambda: anchor_terms(student, data, data.train.labels, args.eval_batch, dev,
                                                            anchors)},
                generator=torch.Generator().manual_seed(0), device=dev, seed=0, task="detection")
            acs.select(ctx)

        xs = images(data, "train", list(range(args.batch)), dev)
        targets = [{"boxes": data.train.boxes[i].to(dev), "labels": data.train.labels[i].to(dev)}
                   for i in range(args.batch)]
        fp = build_detector(arch, data.num_classes, torch.Generator().manual_seed(0), params).to(dev)
        q = quantize_model(fp, 4, 4).to(dev)
        calibrate(q, xs)
        opts = {m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (fp, q)}

        def step(model: torch.nn.Module) -> None:
            model.train()
            losses = model(xs, targets)
            opts[model].zero_grad()
            (losses["classification"] + losses["bbox_regression"]).backward()
            opts[model].step()

        def timed(fn: object) -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        floor(), select(), step(fp), step(q)  # warm-up
        sel: dict[str, list[float]] = {"floor": [], "acs": []}
        stp: dict[str, list[float]] = {"fp": [], "qat": []}
        for rep in range(args.reps):
            order = [("floor", floor), ("acs", select)]
            for name, fn in order if rep % 2 == 0 else order[::-1]:
                sel[name].append(timed(fn))
            pair = [("fp", lambda: step(fp)), ("qat", lambda: step(q))]
            for name, fn in pair if rep % 2 == 0 else pair[::-1]:
                stp[name].append(timed(fn))
        acs_ratio = statistics.median(a / f for a, f in zip(sel["acs"], sel["floor"]))
        step_ratio = statistics.median(a / f for a, f in zip(stp["qat"], stp["fp"]))
        print(f"{args.model}, {args.n} images of {args.size} px, device {dev}, threads {torch.get_num_threads()}, "
              f"pid {os.getpid()}")
        print(f"per-image ACS selection: {statistics.median(sel['acs']):.3f} s, student-forward floor "
              f"{statistics.median(sel['floor']):.3f} s: {acs_ratio:.2f}x the floor")
        print(f"training step, batch {args.batch}: FP {statistics.median(stp['fp']) * 1000:.1f} ms, LSQ W4/A4 "
              f"{statistics.median(stp['qat']) * 1000:.1f} ms: {step_ratio:.2f}x")


if __name__ == "__main__":
    main()
