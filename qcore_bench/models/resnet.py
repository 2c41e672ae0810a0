"""CIFAR-style ResNets (3x3 stem, no max-pool) used as backbones in the benchmark.

Every conv except the stem sees a post-ReLU (non-negative) input, which is what lets
``qcore_bench.quant`` use unsigned activation quantizers inside the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, stages of BasicBlocks, global average pool and a linear classifier ``fc``."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n_blocks, width, stride) in enumerate(zip(blocks_per_stage, widths, strides)):
            blocks = []
            for j in range(n_blocks):
                blocks.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, shape [B, feature_dim] (used by selectors)."""
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet8(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-8: 3 stages x 1 block, widths 16/32/64 (small enough for CPU smoke runs)."""
    return ResNet([1, 1, 1], [16, 32, 64], [1, 2, 2], num_classes, in_channels)


def resnet20(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-20 (He et al. CIFAR variant): 3 stages x 3 blocks, widths 16/32/64."""
    return ResNet([3, 3, 3], [16, 32, 64], [1, 2, 2], num_classes, in_channels)


def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18: 4 stages x 2 blocks, widths 64/128/256/512, 3x3 stem, no max-pool."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2], num_classes, in_channels)
