"""A picture of a detection cell's predictions: its final student on a few test images, predicted
boxes (with class and score) beside the ground truth, so a reader sees what an mAP means.

    qcore-bench picture CELL OUT.png [--results R] [--images 6] [--min-score 0.3]

It reads the cell's ``cell.json`` and its last checkpoint (``ckpt.pt``, kept beside the results
until the cell's folder is cleaned), rebuilds the quantized student exactly as the run built it,
and draws with PIL.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...data.coco import DetectionData
from ...models.retinanet import build_detector
from ...paths import cache_dir
from ...quant import quantize_model
from ...registry import registry
from ...runtime import load_data
from ...cells import Cell
from .. import dataset_task
from .steps import images

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw(data: DetectionData, student: torch.nn.Module, count: int, min_score: float, scale: int = 3) -> object:
    """A strip of ``count`` test images: white boxes the ground truth, coloured boxes the predictions."""
    from PIL import Image, ImageDraw

    student.eval()
    with torch.no_grad():
        dets = student(images(data, "test", list(range(count)), torch.device("cpu")))
    tiles = []
    for i, det in enumerate(dets):
        img = Image.fromarray(data.image("test", i).permute(1, 2, 0).numpy())
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        pen = ImageDraw.Draw(img)
        sx, sy = data.test.scales[i]
        for a in data.test_gt["annotations"]:
            if a["image_id"] == data.test.ids[i]:
                x, y, w, h = a["bbox"]
                pen.rectangle([x * sx * scale, y * sy * scale, (x + w) * sx * scale, (y + h) * sy * scale],
                              outline=(255, 255, 255), width=1)
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if score < min_score:
                continue
            colour = COLOURS[label % len(COLOURS)]
            pen.rectangle([v * scale for v in box], outline=colour, width=2)
            pen.text((box[0] * scale + 2, box[1] * scale + 1), f"{data.classes[label]} {score:.2f}", fill=colour)
        tiles.append(img)
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 4
    return strip


class PictureError(ValueError):
    """The cell cannot be drawn: not a detection cell, no checkpoint, too few test images."""


def picture(folder: Path, count: int, min_score: float) -> object:
    """The strip of the stored cell in ``folder``: its final student on the first ``count`` test images."""
    record = json.loads((folder / "cell.json").read_text())
    cell = Cell.model_validate(record["config"])
    if (task := dataset_task(cell.dataset.name)) != "detection":
        raise PictureError(f"cell {folder.name} is a {task} cell; pictures are drawn for detection cells")
    if not (folder / "ckpt.pt").is_file():
        raise PictureError(f"cell {folder.name} has no checkpoint ({folder / 'ckpt.pt'}): committed stores leave it "
                           f"out; run it again (qcore-bench run SUITE --clear {folder.name}) to draw it")
    data: DetectionData = load_data(cell.dataset, cache_dir())
    if count > len(data.test):
        raise PictureError(f"--images {count}: the test set has {len(data.test)} images")
    fp = build_detector(registry("models").get(cell.model), data.num_classes, torch.Generator(), cell.model_params)
    student = quantize_model(fp, cell.w_bits, cell.a_bits, **cell.quant.model_dump())
    state = torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=False)
    student.load_state_dict(state["model"])
    return draw(data, student, count, min_score)
