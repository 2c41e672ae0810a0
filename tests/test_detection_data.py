"""Detection data and scores: the coco loader on real COCO files, the generated shapes set,
exact box-class noise, COCO mAP, and the per-image scores selectors read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from qcore_bench.data.bundle import DatasetError
from qcore_bench.data.coco import DetectionData, Split, apply_box_noise, load_coco, read_annotations
from qcore_bench.data.shapes import CAT_IDS, load_shapes
from qcore_bench.models.retinanet import build_detector, retinanet_small
from qcore_bench.selection import reduce_per_image
from qcore_bench.seeding import make_generator
from qcore_bench.tasks.detection.steps import anchor_terms, coco_map, images, match_anchors, teacher_anchors

COCO_TINY = Path.home() / ".cache" / "qcore-bench" / "data" / "coco-tiny"
needs_coco_tiny = pytest.mark.skipif(not (COCO_TINY / "annotations").is_dir(), reason="coco-tiny not extracted")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> DetectionData:
    return load_shapes(None, tmp_path_factory.mktemp("cache"), n_train=24, n_test=8, image_size=64)


@needs_coco_tiny
def test_coco_tiny_ids_crowd_boxes_and_sizes() -> None:
    data = load_coco(str(COCO_TINY), Path("."), min_size=320, max_size=480)
    raw = json.loads((COCO_TINY / "annotations" / "instances_train2017.json").read_text())
    assert data.n_train == len(raw["images"]) == 80 and len(data.test) == 80
    assert data.num_classes == 80 and data.cat_ids == tuple(sorted(c["id"] for c in raw["categories"]))
    assert max(data.cat_ids) == 90  # COCO's ids have gaps; the classes are contiguous
    crowd = sum(a["iscrowd"] for a in raw["annotations"])
    assert crowd > 0 and data.train_boxes == sum(
        1 for a in raw["annotations"] if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0)
    assert any(a["iscrowd"] for a in data.test_gt["annotations"])  # kept for evaluation
    i = 5
    h, w = data.train.sizes[i]
    assert min(h, w) == 320 or max(h, w) == 480
    assert tuple(data.image("train", i).shape) == (3, h, w)
    first = next(a for a in sorted(raw["annotations"], key=lambda a: a["id"])
                 if a["image_id"] == data.train.ids[i] and not a["iscrowd"])
    sx, sy = data.train.scales[i]
    x, y, bw, bh = first["bbox"]
    assert any(torch.allclose(b, torch.tensor([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy]))
               for b in data.train.boxes[i])
    assert data.classes[data.cat_ids.index(first["category_id"])] == next(
        c["name"] for c in raw["categories"] if c["id"] == first["category_id"])
    small = load_coco(str(COCO_TINY), Path("."), min_size=64, max_size=96, max_train=10, max_test=4)
    assert small.n_train == 10 and len(small.test) == 4 and len(small.test_gt["images"]) == 4


@needs_coco_tiny
def test_map_on_real_coco_files_is_100_for_the_ground_truth_and_drops_when_shifted() -> None:
    data = load_coco(str(COCO_TINY), Path("."), max_test=20)
    gt = [a for a in data.test_gt["annotations"] if not a["iscrowd"]]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt]
    assert coco_map(data.test_gt, perfect) == {"map": 100.0, "ap50": 100.0, "ap75": 100.0}
    shifted = [{**p, "bbox": [p["bbox"][0] + 0.25 * p["bbox"][2], *p["bbox"][1:]]} for p in perfect]
    m = coco_map(data.test_gt, shifted)
    assert m["map"] < 70 and m["ap75"] < 100 and m["ap50"] == 100.0
    assert coco_map(data.test_gt, []) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_map_is_100_for_the_ground_truth_and_lower_when_boxes_shift(shapes: DetectionData) -> None:
    gt = shapes.test_gt
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert coco_map(gt, perfect) == {"map": 100.0, "ap50": 100.0, "ap75": 100.0}
    shifted = coco_map(gt, [{**p, "bbox": [p["bbox"][0] + 0.2 * p["bbox"][2], *p["bbox"][1:]]} for p in perfect])
    assert shifted["map"] < 100 and shifted["ap75"] < 100
    wrong_class = [{**p, "category_id": CAT_IDS[(CAT_IDS.index(p["category_id"]) + 1) % 5]} for p in perfect]
    assert coco_map(gt, wrong_class)["map"] == 0.0


def test_shapes_is_real_coco_read_back_by_the_same_loader(shapes: DetectionData, tmp_path: Path) -> None:
    assert shapes.classes == ("circle", "square", "triangle", "cross", "star") and shapes.cat_ids == CAT_IDS
    assert shapes.n_train == 24 and all(1 <= len(b) <= 4 for b in shapes.train.boxes)
    assert tuple(shapes.image("train", 0).shape) == (3, 64, 64)
    again = load_shapes(None, tmp_path, n_train=24, n_test=8, image_size=64)  # another cache: same seed, same set
    assert torch.equal(again.image("test", 3), shapes.image("test", 3))
    assert all(torch.equal(a, b) for a, b in zip(again.train.boxes, shapes.train.boxes))
    other = load_shapes(None, tmp_path, n_train=24, n_test=8, image_size=64, seed=1)
    assert not torch.equal(other.image("train", 0), shapes.image("train", 0))


def test_shapes_overlap_and_size_parameters_hold_for_every_box(tmp_path: Path) -> None:
    def boxes(**params: float) -> list[torch.Tensor]:
        return load_shapes(None, tmp_path, n_train=40, n_test=4, image_size=64, **params).train.boxes

    def overlapping(bs: list[torch.Tensor]) -> int:
        return sum(int((box_iou(b, b).triu(1) > 0).sum()) for b in bs)

    def extent(bs: list[torch.Tensor]) -> torch.Tensor:  # the longer side of each box
        b = torch.cat(bs)
        return torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])

    default, apart = boxes(), boxes(max_overlap=0.0, min_radius=0.2)
    assert overlapping(default) > 0 and overlapping(apart) == 0
    # every shape's longer side spans at least 1.4 radii (a square's, the least); min 0.2 x 64 px
    assert extent(default).min() < 1.4 * 0.2 * 64 <= extent(apart).min()
    for bad in ({"max_overlap": 1.0}, {"min_radius": 0.3}, {"min_radius": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            boxes(**bad)


def test_box_noise_flips_exactly_the_share_of_boxes_to_other_classes(shapes: DetectionData) -> None:
    labels, flipped = apply_box_noise(shapes, 0.2, make_generator(0, "label-noise"))
    total = shapes.train_boxes
    assert int(torch.cat(flipped).sum()) == round(0.2 * total)
    clean, noisy, mask = torch.cat(shapes.train.labels), torch.cat(labels), torch.cat(flipped)
    assert torch.equal(noisy != clean, mask)
    again, _ = apply_box_noise(shapes, 0.2, make_generator(0, "label-noise"))
    assert all(torch.equal(a, b) for a, b in zip(labels, again))
    other, _ = apply_box_noise(shapes, 0.2, make_generator(1, "label-noise"))
    assert not all(torch.equal(a, b) for a, b in zip(labels, other))
    none, none_mask = apply_box_noise(shapes, 0.0, make_generator(0, "label-noise"))
    assert not torch.cat(none_mask).any() and torch.equal(torch.cat(none), clean)


@pytest.mark.parametrize("reduction", ["mean", "sum", "topk"])
def test_reduce_per_image_matches_a_loop(reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    values, image = torch.rand(50, generator=g), torch.randint(0, 6, (50,), generator=g)
    out = reduce_per_image(values, image, 7, reduction, k=3)  # image 6 has no anchors
    for i in range(7):
        v = values[image == i]
        want = (0.0 if len(v) == 0 else v.mean() if reduction == "mean" else v.sum() if reduction == "sum"
                else v.sort(descending=True).values[:3].mean())
        assert float(out[i]) == pytest.approx(float(want), abs=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce_per_image(values, image, 7, "max")


def _permuted(data: DetectionData, perm: list[int]) -> DetectionData:
    t = data.train
    train = Split([t.files[i] for i in perm], [t.ids[i] for i in perm], [t.boxes[i] for i in perm],
                  [t.labels[i] for i in perm], [t.scales[i] for i in perm], [t.sizes[i] for i in perm])
    return replace(data, train=train)


def test_scores_have_one_value_per_image_and_do_not_depend_on_image_order(shapes: DetectionData) -> None:
    student = build_detector(retinanet_small, shapes.num_classes, torch.Generator().manual_seed(0))
    teacher = build_detector(retinanet_small, shapes.num_classes, torch.Generator().manual_seed(1))
    dev = torch.device("cpu")
    terms = anchor_terms(student, shapes, shapes.train.labels, 5, dev, teacher_anchors(teacher, shapes, 5, dev))
    scores = {"evs": terms.evs(), "ds": terms.ds(), "unc": terms.uncertainty(), "evs_top": terms.evs(0.5, "topk", 4)}
    for s in scores.values():
        assert s.shape == (24,) and torch.isfinite(s).all()
    assert (scores["evs"] > 0).all() and (scores["ds"] > 0).all()  # every image has a box and a teacher anchor
    assert not torch.equal(terms.evs(box_weight=0.0), scores["evs"])  # the box term counts
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(3)).tolist()
    other = _permuted(shapes, perm)
    labels = [shapes.train.labels[i] for i in perm]
    pterms = anchor_terms(student, other, labels, 7, dev, teacher_anchors(teacher, other, 7, dev))
    pscores = {"evs": pterms.evs(), "ds": pterms.ds(), "unc": pterms.uncertainty(),
               "evs_top": pterms.evs(0.5, "topk", 4)}
    for key, s in scores.items():
        assert torch.allclose(pscores[key], s[perm], atol=1e-5), key


def test_batched_matching_is_retinanets_own_per_image(shapes: DetectionData) -> None:
    """The scoring pass matches a batch's anchors in one go: it must give what RetinaNet's matcher
    gives image by image (thresholds, low-quality matches), for images without boxes too."""
    model = build_detector(retinanet_small, shapes.num_classes, torch.Generator().manual_seed(0))
    anchors = model.anchor_generator(model.transform(images(shapes, "train", [0], torch.device("cpu")))[0],
                                     [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)])[0]
    g = torch.Generator().manual_seed(5)
    boxes = [shapes.train.boxes[i] for i in range(12)] + [torch.zeros(0, 4)]
    corner = torch.rand(40, 2, generator=g) * 56  # boxes of every overlap with the anchors, ties among them
    boxes += [torch.cat([corner, corner + 2 + torch.rand(40, 2, generator=g) * 30], 1)[k::4] for k in range(4)]
    matches = match_anchors(model, boxes, anchors)
    for b, bx in enumerate(boxes):
        own = model.proposal_matcher(box_iou(bx, anchors)) if len(bx) else torch.full((len(anchors),), -1)
        assert torch.equal(matches[b], own), b
    assert (matches >= 0).sum() > 13 and (matches == -2).any()
    assert torch.equal(match_anchors(model, [torch.zeros(0, 4)] * 2, anchors), torch.full((2, len(anchors)), -1))


def test_bad_annotation_files_are_one_line_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "instances_train2017.json"
    with pytest.raises(DatasetError, match="annotation file not found"):
        read_annotations(path)
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]}],
           "categories": [{"id": 1, "name": "x"}]}
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"annotations\[0\]\.image_id: unknown image id 7"):
        read_annotations(path)
    path.write_text(json.dumps({**doc, "images": []}))
    with pytest.raises(DatasetError, match="images: the list is empty"):
        read_annotations(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON file"):
        read_annotations(path)
