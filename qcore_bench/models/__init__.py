"""Model construction with initialisation drawn only from an explicit generator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = ["build", "init_weights"]


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter of ``model`` in place, drawing only from ``generator``.

    Convs: Kaiming normal (fan_out, ReLU). BatchNorm, GroupNorm: weight 1, bias 0, running stats reset.
    Linear: torch's default (Kaiming uniform with a=sqrt(5), bias U(-1/sqrt(fan_in), ..)).
    Raises TypeError for parameters of other module types so none is left uninitialised.
    """
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, _ConvNd):
            nn.init.kaiming_normal_(
                module.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (_BatchNorm, nn.GroupNorm)):
            if module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                module.reset_running_stats()
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features) if module.in_features > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        else:
            continue
        done.update(id(p) for p in module.parameters(recurse=False))
    for name, param in model.named_parameters():
        if id(param) not in done:
            raise TypeError(f"init_weights cannot initialise parameter {name!r}")
    return model


def build(
    arch_fn: Callable[..., nn.Module],
    num_classes: int,
    in_channels: int,
    generator: torch.Generator,
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``arch_fn(num_classes, in_channels=..., **params)`` on CPU with weights from ``generator``.

    The model is constructed on the meta device, so torch's default initialisation never
    runs and the global RNG is not advanced; results depend only on ``generator``.
    """
    with torch.device("meta"):
        model = arch_fn(num_classes, in_channels=in_channels, **(params or {}))
    model.to_empty(device="cpu")
    return init_weights(model, generator)
