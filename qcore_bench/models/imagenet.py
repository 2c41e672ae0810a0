"""torchvision's ImageNet ResNets with our model interface, and their published weights.

``resnet18_imagenet`` is the ACS paper's ImageNet student (and, with torchvision's
weights, its full-precision DS reference and starting point); ``resnet101_imagenet`` its
distillation teacher. The weights are read from the local torch hub cache (or a path in
the suite), never downloaded at run time: benchmark nodes often have no internet, and
many cells downloading at once would race.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _resnet_class() -> type:
    from torchvision.models.resnet import ResNet

    class ImageNetResNet(ResNet):
        """torchvision's ResNet plus ``features()`` and ``feature_dim`` (what selectors read)."""

        def features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.avgpool(x), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x))

    return ImageNetResNet


def _build(block_name: str, layers: list[int], num_classes: int, in_channels: int) -> nn.Module:
    from torchvision.models import resnet

    model = _resnet_class()(getattr(resnet, block_name), layers, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.feature_dim = model.fc.in_features
    return model


def resnet18_imagenet(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 as in torchvision (7x7 stem, max-pool): the ACS paper's ImageNet student."""
    return _build("BasicBlock", [2, 2, 2, 2], num_classes, in_channels)


def resnet101_imagenet(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-101 as in torchvision: the ACS paper's ImageNet distillation teacher."""
    return _build("Bottleneck", [3, 4, 23, 3], num_classes, in_channels)


# torchvision's IMAGENET1K_V1 weights (what the ACS code loads through `pretrained=True`)
resnet18_imagenet.weights_file = "resnet18-f37072fd.pth"
resnet101_imagenet.weights_file = "resnet101-63fe2227.pth"
_URL = "https://download.pytorch.org/models/"


class WeightsError(FileNotFoundError):
    """Published weights that are not on this machine; the message says where to put them."""


def weights_path(arch_fn: object, name: str, path: str | None = None) -> Path:
    """Where the weights of ``arch_fn`` are read from: ``path``, else the torch hub cache."""
    if path is not None:
        return Path(path).expanduser()
    file = getattr(arch_fn, "weights_file", None)
    if file is None:
        raise WeightsError(f"model '{name}' has no published weights: set teacher.pretrained: false to train "
                           f"it, or give teacher.weights: <path to a state dict>")
    return Path(torch.hub.get_dir()) / "checkpoints" / file


def load_weights(model: nn.Module, arch_fn: object, name: str, path: str | None = None) -> Path:
    """Load published full-precision weights into ``model`` (in place); returns the file read."""
    where = weights_path(arch_fn, name, path)
    if not where.is_file():
        file = getattr(arch_fn, "weights_file", where.name)
        raise WeightsError(
            f"weights of '{name}' not found at {where}. This program never downloads at run time: on a machine "
            f"with internet run\n    curl -L -o {file} {_URL}{file}\nand copy the file to {where.parent}/ "
            f"(the torch hub cache, $TORCH_HOME/hub/checkpoints), or give its path as teacher.weights "
            f"(train.kd.weights for the distillation teacher).")
    state = torch.load(where, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(f"weights in {where} do not fit model '{name}' (classes or channels differ?): "
                           f"{str(err).splitlines()[0]}") from err
    return where
