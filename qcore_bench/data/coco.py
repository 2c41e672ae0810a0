"""COCO-format object detection data: ``<root>/{train2017,val2017}/`` and
``<root>/annotations/instances_{train,val}2017.json``, read with pycocotools.

Category ids (COCO's run 1..90 with gaps) map to contiguous class indices in id order and
back for evaluation. Crowd boxes are left out of the training targets (RetinaNet has no
ignore regions) and kept in the evaluation ground truth, where COCOeval treats them as
regions a detection may fall in without counting as a false positive. Images of any size
are resized once, on first use, so that the short side is ``min_size`` unless the long
side would exceed ``max_size`` (torchvision's rule); predictions are mapped back to the
original pixels before COCOeval, so the mAP is that of the original annotations.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qcore_bench.data.bundle import DatasetError
from qcore_bench.data.catalog import describe
from qcore_bench.paths import data_root
SPLITS = {"train": "train2017", "test": "val2017"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's: what pretrained backbones expect


@dataclass
class Split:
    """One split: its image files, COCO ids, training targets and resize factors."""

    files: list[pathlib.Path]
    ids: list[int]  # COCO image ids, aligned with files
    boxes: list[torch.Tensor]  # float [k, 4] xyxy in resized pixels, crowd boxes left out
    labels: list[torch.Tensor]  # int64 [k] contiguous class indices
    scales: list[tuple[float, float]]  # (sx, sy): resized = original * scale
    sizes: list[tuple[int, int]]  # resized (h, w)
    cache: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class DetectionData:
    """A COCO-format detection set: images decoded and resized on first use (kept in memory),
    targets in resized pixels, and the test ground truth in COCO's own form for COCOeval."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    cat_ids: tuple[int, ...]  # COCO category id of each class index
    test_gt: dict[str, Any]  # the test annotations (kept images only, crowd boxes included), original pixels
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def train_boxes(self) -> int:
        return sum(len(b) for b in self.train.boxes)

    def image(self, split: str, i: int) -> torch.Tensor:
        """uint8 [3, H, W] of image ``i`` of ``split`` ("train" or "test"), resized; decoded once."""
        s = self.train if split == "train" else self.test
        if i not in s.cache:
            s.cache[i] = _decode(s.files[i], s.sizes[i])
        return s.cache[i]


def _decode(path: pathlib.Path, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"coco: cannot decode {path}: {exc}") from None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if tuple(x.shape[1:]) == size:
        return x.contiguous()
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0].round().clamp(0, 255).to(torch.uint8)


def resized(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``min_size``, capped so the long side is <= ``max_size``."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def read_annotations(path: pathlib.Path) -> dict[str, Any]:
    """The JSON of a COCO instances file, checked: one-line DatasetError naming the file and the key."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found; expected <root>/annotations/"
                           f"instances_{{train,val}}2017.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: {key}: expected a list (a COCO instances file)")
    if not data["images"]:
        raise DatasetError(f"{path}: images: the list is empty; expected at least one image")
    if not data["categories"]:
        raise DatasetError(f"{path}: categories: the list is empty; expected at least one category")
    images = {im.get("id") for im in data["images"]}
    cats = {c.get("id") for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in images:
            raise DatasetError(f"{path}: annotations[{i}].image_id: unknown image id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cats:
            raise DatasetError(f"{path}: annotations[{i}].category_id: unknown category id "
                               f"{ann.get('category_id')!r}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DatasetError(f"{path}: annotations[{i}].bbox: expected [x, y, width, height], got {box!r}")
    return data


def _split(data: dict[str, Any], image_dir: pathlib.Path, cat_index: dict[int, int], limit: int | None,
           min_size: int, max_size: int) -> tuple[Split, dict[str, Any]]:
    images = sorted(data["images"], key=lambda im: im["id"])[:limit]
    kept = {im["id"] for im in images}
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in kept}
    for ann in data["annotations"]:
        if ann["image_id"] in kept:
            by_image[ann["image_id"]].append(ann)
    split = Split([], [], [], [], [], [])
    for im in images:
        h, w = int(im["height"]), int(im["width"])
        rh, rw = resized(h, w, min_size, max_size)
        sx, sy = rw / w, rh / h
        anns = [a for a in by_image[im["id"]] if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.stack([xywh[:, 0] * sx, xywh[:, 1] * sy, (xywh[:, 0] + xywh[:, 2]) * sx,
                             (xywh[:, 1] + xywh[:, 3]) * sy], dim=1)
        split.files.append(image_dir / im["file_name"])
        split.ids.append(int(im["id"]))
        split.boxes.append(boxes)
        split.labels.append(torch.tensor([cat_index[a["category_id"]] for a in anns], dtype=torch.int64))
        split.scales.append((sx, sy))
        split.sizes.append((rh, rw))
    gt = {"images": images, "categories": data["categories"],
          "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}
    return split, gt


def _base(root: str | None) -> pathlib.Path:
    base = pathlib.Path(root).expanduser() if root is not None else data_root() / "coco"
    if not base.is_dir():
        raise DatasetError(f"coco: root {base} does not exist; expected {base}/train2017, {base}/val2017 and "
                           f"{base}/annotations/instances_{{train,val}}2017.json (point data.root at it)")
    return base


def _annotations(base: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    train = read_annotations(base / "annotations" / "instances_train2017.json")
    test = read_annotations(base / "annotations" / "instances_val2017.json")
    if sorted(c["id"] for c in test["categories"]) != sorted(c["id"] for c in train["categories"]):
        raise DatasetError(f"{base}/annotations/instances_val2017.json: categories: the ids differ from the "
                           f"training file's")
    return train, test


def check_coco(root: str | None, **params: Any) -> None:
    """The root and both annotation files are there and well formed: run by ``validate``, ``plan``
    and ``run`` before any cell is claimed, so a missing data set is one line, as for the others."""
    _annotations(_base(root))


@describe("COCO", check_coco)
def load_coco(root: str | None, cache_dir: pathlib.Path, min_size: int = 800, max_size: int = 1333,
              max_train: int | None = None, max_test: int | None = None) -> DetectionData:
    """COCO 2017 (or any set in its layout) from ``root`` (default: the data root's ``coco/``);
    ``max_train``/``max_test``: the first images by id."""
    base = _base(root)
    for name, value in (("min_size", min_size), ("max_size", max_size), ("max_train", max_train),
                        ("max_test", max_test)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DatasetError(f"coco: {name} must be an integer >= 1, got {value!r}")
    train_json, test_json = _annotations(base)
    cats = sorted(train_json["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    train, _ = _split(train_json, base / SPLITS["train"], cat_index, max_train, min_size, max_size)
    test, gt = _split(test_json, base / SPLITS["test"], cat_index, max_test, min_size, max_size)
    for split, folder in ((train, SPLITS["train"]), (test, SPLITS["test"])):
        missing = [f for f in split.files if not f.is_file()]
        if missing:
            raise DatasetError(f"coco: {len(missing)} image file(s) listed in the {folder} annotations are "
                               f"missing, e.g. {missing[0]}")
    return DetectionData(train, test, tuple(c["name"] for c in cats), tuple(c["id"] for c in cats), gt)


load_coco.task = "detection"  # type: ignore[attr-defined]


def apply_box_noise(data: DetectionData, rate: float, generator: torch.Generator
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(noisy labels, flipped mask) per training image: exactly round(rate * boxes) training boxes,
    drawn uniformly, each moved to a uniformly drawn *other* class (symmetric class flip)."""
    from qcore_bench.data.noise import apply_label_noise

    flat = torch.cat(data.train.labels) if data.train.labels else torch.zeros(0, dtype=torch.int64)
    kind = "symmetric" if rate > 0 else "none"
    noisy, mask = apply_label_noise(flat, data.num_classes, kind, rate, generator)
    counts = [len(lab) for lab in data.train.labels]
    return list(noisy.split(counts)), list(mask.split(counts))
