"""The detection steps: batches of images and targets, a training pass, COCO mAP, and the
per-anchor terms of one eval pass that per-image selectors score.

Every pass that scores or evaluates images groups them by size (images of one size in one
batch, in index order), so no image is padded for the sake of another: an image's outputs,
its anchors and its scores do not depend on which images share its batch or on their order.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterator

import torch
from torch import nn
from torchvision.ops import box_iou

from ...data.coco import DetectionData
from ...selection import AnchorTerms
from ...training import TrainingError

CONFIDENT = 0.3  # a teacher anchor counts for d_DS when its highest class probability reaches this
CANDIDATE = 0.05  # an anchor is a candidate detection (entropy term) from this probability: torchvision's
CLIP_NORM = 10.0  # gradient-norm clip of every detector training step (focal-loss RetinaNets spike early)


def size_groups(data: DetectionData, split: str, indices: torch.Tensor, batch_size: int) -> Iterator[list[int]]:
    """``indices`` in batches of at most ``batch_size`` images of one size, in index order."""
    sizes = (data.train if split == "train" else data.test).sizes
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in sorted(int(j) for j in indices):
        by_size.setdefault(sizes[i], []).append(i)
    for members in by_size.values():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


def images(data: DetectionData, split: str, idx: list[int], device: torch.device) -> list[torch.Tensor]:
    return [data.image(split, i).to(device).float().div_(255) for i in idx]


def train_pass(model: nn.Module, opt: torch.optim.Optimizer, data: DetectionData, labels: list[torch.Tensor],
               indices: torch.Tensor, batch_size: int, generator: torch.Generator, augment: bool,
               device: torch.device) -> float:
    """One pass over ``indices`` in a seeded order (horizontal flips drawn from the same generator when
    ``augment``); RetinaNet's focal + L1 loss; returns the mean loss per image."""
    model.train()
    order = indices[torch.randperm(len(indices), generator=generator)]
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = [int(i) for i in order[start:start + batch_size]]
        flips = torch.rand(len(idx), generator=generator) < 0.5 if augment else torch.zeros(len(idx), dtype=torch.bool)
        xs, targets = [], []
        for i, flip in zip(idx, flips.tolist()):
            x, boxes = data.image("train", i).to(device).float().div_(255), data.train.boxes[i].to(device)
            if flip:
                w = x.shape[-1]
                x, boxes = x.flip(-1), torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            xs.append(x)
            targets.append({"boxes": boxes, "labels": labels[i].to(device)})
        losses = model(xs, targets)
        loss = losses["classification"] + losses["bbox_regression"]
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss at batch {start // batch_size}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, data: DetectionData, batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """COCO-format detections of the test set, in the original images' pixels."""
    model.eval()
    results: list[dict[str, Any]] = []
    for idx in size_groups(data, "test", torch.arange(len(data.test)), batch_size):
        for i, det in zip(idx, model(images(data, "test", idx, device))):
            sx, sy = data.test.scales[i]
            b = det["boxes"].cpu().double()
            for (x0, y0, x1, y1), score, label in zip(b.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": data.test.ids[i], "category_id": data.cat_ids[label],
                                "bbox": [x0 / sx, y0 / sy, (x1 - x0) / sx, (y1 - y0) / sy], "score": float(score)})
    return results


def coco_map(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO mAP@[.5:.95], AP50 and AP75 (in %) of ``results`` against the ground truth ``gt``
    (a COCO instances dict) through pycocotools' COCOeval; no detection at all scores 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = {k: gt[k] for k in ("images", "annotations", "categories")}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [0.0 if s < 0 else float(s) * 100 for s in ev.stats[:3]]  # -1: no ground truth to score
    return {"map": stats[0], "ap50": stats[1], "ap75": stats[2]}


def evaluate_map(model: nn.Module, data: DetectionData, batch_size: int, device: torch.device) -> dict[str, float]:
    """The test set's mAP, AP50 and AP75 (%), eval mode."""
    m = coco_map(data.test_gt, predict(model, data, batch_size, device))
    return {"test_map": m["map"], "test_ap50": m["ap50"], "test_ap75": m["ap75"]}


def _head(model: nn.Module, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Class logits [B, A, K], box regressions [B, A, 4] and the anchors of one eval forward."""
    batch, _ = model.transform(xs)
    feats = list(model.backbone(batch.tensors).values())
    out = model.head(feats)
    return out["cls_logits"].float(), out["bbox_regression"].float(), model.anchor_generator(batch, feats)


@torch.no_grad()
def teacher_anchors(model: nn.Module, data: DetectionData, batch_size: int, device: torch.device
                    ) -> list[dict[str, torch.Tensor]]:
    """Per training image, the FP teacher's confident anchors (highest probability >= CONFIDENT, else
    its single most confident one): their indices, class probabilities and box regressions."""
    model.eval()
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(data.n_train)]
    for idx in size_groups(data, "train", torch.arange(data.n_train), batch_size):
        cls, reg, _ = _head(model, images(data, "train", idx, device))
        for b, i in enumerate(idx):
            p = cls[b].sigmoid()
            top = p.max(dim=1).values
            keep = torch.nonzero(top >= CONFIDENT).flatten()
            keep = keep if len(keep) else top.argmax().reshape(1)
            out[i] = {"anchors": keep.cpu(), "probs": p[keep].cpu(), "boxes": reg[b][keep].cpu()}
    return out


def match_anchors(model: nn.Module, boxes: list[torch.Tensor], anchors: torch.Tensor) -> torch.Tensor:
    """RetinaNet's own matching (its ``proposal_matcher``: IoU thresholds, low-quality matches kept)
    of a batch of images that share ``anchors`` [A, 4], in one pass instead of one per image:
    [B, A], the index of the box each anchor matches in its image's ``boxes``, negative for none."""
    m = model.proposal_matcher
    k = max((len(b) for b in boxes), default=0)
    matches = torch.full((len(boxes), len(anchors)), m.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)
    if k == 0:
        return matches
    padded = anchors.new_zeros(len(boxes), k, 4)
    real = torch.zeros(len(boxes), k, dtype=torch.bool, device=anchors.device)
    for b, bx in enumerate(boxes):
        padded[b, :len(bx)], real[b, :len(bx)] = bx, True
    iou = box_iou(padded, anchors).masked_fill_(~real[..., None], -1.0)  # [B, k, A]; padding never wins
    best, matches = iou.max(dim=1)
    nearest = matches.clone()
    matches[best < m.low_threshold] = m.BELOW_LOW_THRESHOLD
    matches[(best >= m.low_threshold) & (best < m.high_threshold)] = m.BETWEEN_THRESHOLDS
    if m.allow_low_quality_matches:  # each box keeps its highest-IoU anchors (ties included)
        b, _, a = torch.nonzero((iou == iou.max(dim=2, keepdim=True).values) & real[..., None], as_tuple=True)
        matches[b, a] = nearest[b, a]
    return matches


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return (torch.special.entr(p) + torch.special.entr(1 - p)).sum(dim=1)


@torch.no_grad()
def anchor_terms(model: nn.Module, data: DetectionData, labels: list[torch.Tensor], batch_size: int,
                 device: torch.device, teacher: list[dict[str, torch.Tensor]] | None = None) -> AnchorTerms:
    """One eval forward per training image: the d_EVS terms on the anchors matched to its boxes
    (labels: the noisy training labels), the d_DS terms on the teacher's confident anchors, and
    the entropy on its candidate anchors (see ``AnchorTerms``)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ec", "eb", "ei", "dc", "db", "di", "en", "ni")}
    try:
        for idx in size_groups(data, "train", torch.arange(data.n_train), batch_size):
            cls, reg, anchors = _head(model, images(data, "train", idx, device))
            probs = cls.sigmoid()
            cand = torch.nonzero(probs.max(dim=2).values >= CANDIDATE)  # [m, 2]: (image in batch, anchor)
            parts["en"].append(_entropy(probs[cand[:, 0], cand[:, 1]]))
            parts["ni"].append(torch.as_tensor(idx, device=device)[cand[:, 0]])
            rows = torch.as_tensor(idx, device=device)  # the training index of each image of the batch
            boxes = [data.train.boxes[i].to(device) for i in idx]
            matches = match_anchors(model, boxes, anchors[0])  # one size: every image has these anchors
            bi, ai = torch.nonzero(matches >= 0, as_tuple=True)  # image by image, anchors in order
            if len(bi):
                first = torch.tensor([0] + [len(b) for b in boxes], device=device).cumsum(0)[:-1]
                gt = first[bi] + matches[bi, ai]  # the matched box's row among the batch's boxes
                y = torch.cat([labels[i] for i in idx]).to(device)[gt]
                target = model.box_coder.encode_single(torch.cat(boxes)[gt], anchors[0][ai])
                p = probs[bi, ai]
                onehot = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
                parts["ec"].append((p - onehot).norm(dim=1))
                parts["eb"].append((reg[bi, ai] - target).abs().sum(dim=1))
                parts["ei"].append(rows[bi])
            if teacher is not None:
                t = [teacher[i] for i in idx]
                counts = torch.tensor([len(x["anchors"]) for x in t], device=device)
                bi = torch.repeat_interleave(torch.arange(len(idx), device=device), counts)
                ai = torch.cat([x["anchors"] for x in t]).to(device)
                parts["dc"].append((probs[bi, ai] - torch.cat([x["probs"] for x in t]).to(device)).norm(dim=1))
                parts["db"].append((reg[bi, ai] - torch.cat([x["boxes"] for x in t]).to(device)).abs().sum(dim=1))
                parts["di"].append(rows[bi])
    finally:
        model.train(was_training)

    def cat(key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat(parts[key]).to(dtype).cpu() if parts[key] else torch.zeros(0, dtype=dtype)

    return AnchorTerms(data.n_train, cat("ec"), cat("eb"), cat("ei", torch.int64), cat("dc"), cat("db"),
                       cat("di", torch.int64), cat("en"), cat("ni", torch.int64))

