"""MobileNetV2 (Sandler et al., CVPR 2018), CIFAR variant, with a width multiplier.

As in the ACS paper's CIFAR-100 runs: a 3x3 stride-1 stem and stride 1 (not 2) in the
second stage, so 32x32 inputs keep enough resolution; width 0.5 there. Unlike the
reference code there is no dropout before the classifier: dropout would draw from
torch's global RNG, which breaks exact resume of a cell.

Names used by the quantization policies: ``conv1`` (stem), ``layers.<i>.{expand,
depthwise,project}`` (the inverted-residual blocks), ``conv_last`` (the last 1x1 conv)
and ``fc``. The block outputs are linear (no ReLU), so the convs that read them
(``expand`` of the next block, ``conv_last``) see signed inputs: ``signed_inputs`` lists
them for activation quantizers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# expansion t, output channels c, blocks n, stride s of the first block (CIFAR: stage 2 stride 1)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (absent when t = 1), 3x3 depthwise, linear 1x1 projection; identity shortcut
    when the shape is kept."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.expand: nn.Conv2d | None = None
        if expansion != 1:
            self.expand = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn_expand = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn_depthwise = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(out_planes)
        self.residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else F.relu6(self.bn_expand(self.expand(x)))
        out = F.relu6(self.bn_depthwise(self.depthwise(out)))
        out = self.bn_project(self.project(out))
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """Stem, inverted-residual blocks, 1x1 conv to ``last_channels``, global average pool, ``fc``."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"mobilenetv2: width must be > 0, got {width}")
        planes = make_divisible(32 * width)
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        blocks: list[nn.Module] = []
        signed: list[str] = []
        for expansion, channels, n, stride in STAGES:
            out_planes = make_divisible(channels * width)
            for i in range(n):
                if blocks and expansion != 1:  # reads the previous block's linear output
                    signed.append(f"layers.{len(blocks)}.expand")
                blocks.append(InvertedResidual(planes, out_planes, stride if i == 0 else 1, expansion))
                planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.feature_dim = make_divisible(1280 * max(1.0, width))
        self.conv_last = nn.Conv2d(planes, self.feature_dim, 1, bias=False)
        self.bn_last = nn.BatchNorm2d(self.feature_dim)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.signed_inputs = frozenset([*signed, "conv_last"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, shape [B, feature_dim] (used by selectors)."""
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn_last(self.conv_last(self.layers(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def mobilenetv2(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MobileNetV2, CIFAR variant; ``width`` multiplies every channel count (0.5 in the ACS paper)."""
    return MobileNetV2(num_classes, in_channels, width)
