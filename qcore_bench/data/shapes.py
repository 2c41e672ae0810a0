"""``shapes``: a generated detection set written as real COCO files and read by the ``coco`` loader.

A seeded generator draws, per image, a cluttered background (a colour gradient, random
lines and small blobs that are not objects) and 1 to ``max_objects`` filled shapes of
``CLASSES`` with varied sizes and colours, whose boxes overlap by at most ``max_overlap``
(IoU); the tight box of each shape is its annotation. The images (PNG) and ``annotations/instances_*.json`` go
into ``<cache>/data/shapes-<hash of the parameters>``, written once (atomic rename), and
are read back through ``load_coco``: the same path as COCO itself. The drawing seed is a
parameter of the data set, never the cell's seed, so every cell sees the same images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile

import numpy as np

from qcore_bench.data.catalog import describe
from qcore_bench.data.coco import DetectionData, load_coco

CLASSES = ("circle", "square", "triangle", "cross", "star")
CAT_IDS = (1, 3, 5, 7, 9)  # gaps on purpose, as in COCO: the loader maps ids to classes
MAX_RADIUS = 0.25  # the largest object radius, as a share of the image size
DEFAULTS = {"max_overlap": 0.2, "min_radius": 0.1}  # the sets made before these were parameters


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    else:  # cross: a plus sign of arm width 0.35 r
        a = 0.35
        base = [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a),
                (-a, a), (-a, 1)]
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in base]
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _image(rng: np.random.Generator, size: int, max_objects: int, max_overlap: float, min_radius: float
           ) -> tuple[object, list[tuple[int, list[float]]]]:
    from PIL import Image, ImageDraw

    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    bg = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 1))
    bg += rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # clutter: lines and small blobs
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=col,
                      width=int(rng.integers(1, 4)))
        else:
            x, y, r = *rng.uniform(0, size, 2), rng.uniform(0.01, 0.03) * size
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
    objects: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            r = rng.uniform(min_radius, MAX_RADIUS) * size
            cx, cy = rng.uniform(r, size - r, 2)
            kind = int(rng.integers(len(CLASSES)))
            name = CLASSES[kind]
            pts = ([(cx - r, cy - r), (cx + r, cy + r)] if name == "circle"
                   else _polygon(name, cx, cy, r, rng.uniform(0, 2 * math.pi)))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = [max(0.0, min(xs)), max(0.0, min(ys)), min(size, max(xs)), min(size, max(ys))]
            if all(_iou(box, other) <= max_overlap for _, other in objects):
                break
        else:
            continue
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if name == "circle":
            draw.ellipse(pts, fill=col)
        else:
            draw.polygon(pts, fill=col)
        objects.append((kind, box))
    return img, objects


def _iou(a: list[float], b: list[float]) -> float:
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def generate(out: pathlib.Path, n_train: int, n_test: int, size: int, max_objects: int, seed: int,
             max_overlap: float, min_radius: float) -> None:
    """Write the COCO layout of a shapes set under ``out`` (train2017/, val2017/, annotations/)."""
    rng = np.random.default_rng(seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CAT_IDS, CLASSES)]
    ann_id, image_id = 1, 1
    for split, n in (("train2017", n_train), ("val2017", n_test)):
        (out / split).mkdir(exist_ok=True)
        images, anns = [], []
        for _ in range(n):
            img, objects = _image(rng, size, max_objects, max_overlap, min_radius)
            name = f"{image_id:08d}.png"
            img.save(out / split / name)
            images.append({"id": image_id, "file_name": name, "height": size, "width": size})
            for kind, (x0, y0, x1, y1) in objects:
                w, h = x1 - x0, y1 - y0
                anns.append({"id": ann_id, "image_id": image_id, "category_id": CAT_IDS[kind],
                             "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                             "area": round(w * h, 2), "iscrowd": 0})
                ann_id += 1
            image_id += 1
        doc = {"images": images, "annotations": anns, "categories": cats}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


@describe("Shapes")
def load_shapes(root: str | None, cache_dir: pathlib.Path, n_train: int = 400, n_test: int = 100,
                image_size: int = 96, max_objects: int = 4, seed: int = 0,
                max_overlap: float = DEFAULTS["max_overlap"],
                min_radius: float = DEFAULTS["min_radius"]) -> DetectionData:
    """The shapes set of these parameters, generated into the cache on first use (root unused).

    ``max_overlap``: the largest IoU between two objects' boxes (0: no object hides part of
    another); ``min_radius``: the smallest object radius as a share of ``image_size`` (the
    largest is 0.25)."""
    params = {"n_train": n_train, "n_test": n_test, "image_size": image_size, "max_objects": max_objects,
              "seed": seed, "version": 2}
    for key in ("n_train", "n_test", "image_size", "max_objects"):
        if not isinstance(params[key], int) or params[key] < 1:
            raise ValueError(f"shapes: {key} must be an integer >= 1, got {params[key]!r}")
    if not 0 <= max_overlap < 1:
        raise ValueError(f"shapes: max_overlap must be in [0, 1), got {max_overlap!r}")
    if not 0 < min_radius <= MAX_RADIUS:
        raise ValueError(f"shapes: min_radius must be in (0, {MAX_RADIUS}], got {min_radius!r}")
    # named only when not the default, so the sets generated before these parameters keep their folder
    params.update({k: v for k, v in (("max_overlap", max_overlap), ("min_radius", min_radius)) if v != DEFAULTS[k]})
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    where = pathlib.Path(cache_dir) / "data" / f"shapes-{digest}"
    if not (where / "annotations" / "instances_val2017.json").is_file():
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".shapes-", dir=where.parent))
        try:
            generate(tmp, n_train, n_test, image_size, max_objects, seed, max_overlap, min_radius)
            try:
                os.rename(tmp, where)
            except OSError:  # another process wrote it first: theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_coco(str(where), cache_dir, min_size=image_size, max_size=image_size)


load_shapes.task = "detection"  # type: ignore[attr-defined]
