"""A picture of a detection cell's predictions: its final student on a few test images, predicted
boxes (with class and score) beside the ground truth, so a reader sees what an mAP means.

    python -m qcore_bench.tasks.detection.picture RESULTS CELL_ID OUT.png [--images 6] [--min-score 0.3]

It reads the cell's ``cell.json`` and its last checkpoint (``ckpt.pt``, kept beside the results
until the cell's folder is cleaned), rebuilds the quantized student exactly as the run built it,
and draws with PIL.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("cell_id")
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--min-score", type=float, default=0.3)
    args = parser.parse_args()
    folder = args.results / "runs" / args.cell_id
    cell = Cell.model_validate(json.loads((folder / "cell.json").read_text())["config"])
    data = load_data(cell.dataset, cache_dir())
    fp = build_detector(registry("models").get(cell.model), data.num_classes, torch.Generator(), cell.model_params)
    student = quantize_model(fp, cell.w_bits, cell.a_bits, **cell.quant.model_dump())
    state = torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=False)
    student.load_state_dict(state["model"])
    draw(data, student, args.images, args.min_score).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
