"""RetinaNet detectors: torchvision's ``RetinaNet`` class with ResNet-18/50 FPN backbones, and a
reduced variant of the same class (a small ResNet body, a narrow FPN and head) for CPU suites.

Nothing is downloaded: the weights are drawn from the cell's generator (``build_detector``);
a checkpoint (a whole detector's state dict, or an ImageNet backbone's) is loaded on request.
Images reach the model already resized by the data set, so the model's own transform only
normalises and pads them (``PreResized``). ``edge_layers`` names the stem and the two final
predictor convs, which the LSQ policy keeps full precision (or 8-bit); ``signed_inputs`` names
the convs whose input is not a ReLU output (FPN outputs and their sums), which get signed
activation quantizers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from . import init_weights

EDGE_LAYERS = ("backbone.body.conv1", "head.classification_head.cls_logits", "head.regression_head.bbox_reg")
PRIOR = 0.01  # focal loss's prior probability of the class logits at the start


class PreResized(GeneralizedRCNNTransform):
    """The detector's transform without its resize: the data set resized the images already."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def _detector(backbone: nn.Module, num_classes: int, anchor_sizes: tuple[int, ...], head_groups: int = 0,
              ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> RetinaNet:
    """``head_groups`` > 0: GroupNorm of that many groups after every head conv (RetinaNet v2's head)."""
    anchors = AnchorGenerator(tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes),
                              (tuple(ratios),) * len(anchor_sizes))
    head = None
    if head_groups:
        head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(nn.GroupNorm, head_groups))
    model = RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head)
    model.transform = PreResized(1, 1, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    n_fpn = len(anchor_sizes)
    model.edge_layers = EDGE_LAYERS
    model.signed_inputs = frozenset(
        [f"backbone.fpn.layer_blocks.{i}.0" for i in range(n_fpn)] + ["backbone.fpn.extra_blocks.p6",
                                                                       "head.classification_head.conv.0.0",
                                                                       "head.regression_head.conv.0.0"])
    return model


def retinanet_resnet18_fpn(num_classes: int, in_channels: int = 3) -> RetinaNet:
    """RetinaNet, ResNet-18 FPN (P3-P7, 256 channels), torchvision's anchors (32-512 px)."""
    body = _resnet_fpn_extractor(resnet18(weights=None), 5, [2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return _detector(body, num_classes, (32, 64, 128, 256, 512))


def retinanet_resnet50_fpn(num_classes: int, in_channels: int = 3) -> RetinaNet:
    """RetinaNet, ResNet-50 FPN (P3-P7, 256 channels), torchvision's anchors (32-512 px)."""
    body = _resnet_fpn_extractor(resnet50(weights=None), 5, [2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return _detector(body, num_classes, (32, 64, 128, 256, 512))


class _SmallBody(nn.Module):
    """A ResNet body of one BasicBlock per stage, widths w, w, 2w, 4w, 8w; C3-C5 at strides 8-32."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)

        def stage(cin: int, cout: int) -> nn.Sequential:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))
            return nn.Sequential(BasicBlock(cin, cout, stride=2, downsample=down))

        self.layer1, self.layer2 = stage(w, w), stage(w, 2 * w)
        self.layer3, self.layer4 = stage(2 * w, 4 * w), stage(4 * w, 8 * w)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return OrderedDict([("0", c3), ("1", c4), ("2", self.layer4(c4))])


class _SmallBackbone(nn.Module):
    def __init__(self, width: int, fpn_width: int) -> None:
        super().__init__()
        self.body = _SmallBody(width)
        self.fpn = FeaturePyramidNetwork([2 * width, 4 * width, 8 * width], fpn_width)
        self.out_channels = fpn_width

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def retinanet_small(num_classes: int, in_channels: int = 3, width: int = 16, fpn_width: int = 64,
                    anchor_size: int = 16, head_groups: int = 0,
                    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> RetinaNet:
    """The reduced RetinaNet for CPU suites: small body, ``fpn_width``-channel FPN and head, P3-P5,
    anchors ``anchor_size``, 2x and 4x it (x 3 scales x ``aspect_ratios``): for images of about
    64-100 px; ``head_groups`` > 0 puts GroupNorm in the head (faster from-scratch training)."""
    model = _detector(_SmallBackbone(width, fpn_width), num_classes, (anchor_size, 2 * anchor_size, 4 * anchor_size),
                      head_groups, tuple(aspect_ratios))
    model.signed_inputs = model.signed_inputs - {"backbone.fpn.extra_blocks.p6"}
    return model


for _fn in (retinanet_resnet18_fpn, retinanet_resnet50_fpn, retinanet_small):
    _fn.task = "detection"  # type: ignore[attr-defined]


@torch.no_grad()
def _init_head(model: RetinaNet, generator: torch.Generator) -> None:
    """The two final predictor convs as RetinaNet sets them (normal, std 0.01; the class bias at the
    focal prior), seeded. The head's other convs keep the Kaiming init of ``init_weights``:
    RetinaNet's std 0.01 there shrinks the signal about 4x per conv in a 64-channel head."""
    head = model.head
    for conv in (head.classification_head.cls_logits, head.regression_head.bbox_reg):
        nn.init.normal_(conv.weight, std=0.01, generator=generator)
        nn.init.zeros_(conv.bias)
    nn.init.constant_(head.classification_head.cls_logits.bias, -math.log((1 - PRIOR) / PRIOR))


def build_detector(arch_fn: Callable[..., RetinaNet], num_classes: int, generator: torch.Generator,
                   params: dict[str, Any] | None = None) -> RetinaNet:
    """``arch_fn(num_classes, **params)`` on the CPU, every weight drawn from ``generator`` (built on
    the meta device: torch's global RNG is never used)."""
    with torch.device("meta"):
        model = arch_fn(num_classes, **(params or {}))
    model.to_empty(device="cpu")
    init_weights(model, generator)
    _init_head(model, generator)
    return model


def load_checkpoint(model: RetinaNet, path: str) -> str:
    """Load a whole detector's state dict, or a classifier backbone's (e.g. torchvision's ImageNet
    ResNet-18) into ``backbone.body``; returns which. A file that fits neither is refused."""
    where = Path(path).expanduser()
    if not where.is_file():
        raise FileNotFoundError(f"checkpoint {where} not found")
    state = torch.load(where, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    if set(state) == set(own):
        model.load_state_dict(state)
        return "detector"
    body = model.backbone.body.state_dict()
    matched = {k: v for k, v in state.items() if k in body and v.shape == body[k].shape}
    if len(matched) < len(body) * 0.9:
        raise ValueError(f"checkpoint {where}: neither a detector of this architecture nor its backbone "
                         f"({len(matched)} of {len(body)} backbone tensors match)")
    model.backbone.body.load_state_dict(matched, strict=False)
    return "backbone"
