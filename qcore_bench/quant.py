"""Learned Step-size Quantization (LSQ, Esser et al., ICLR 2020) for quantization-aware training.

Written here rather than taken from ``torch.ao.quantization`` so that the step-size
initialisation, gradient scaling and first/last-layer policy are explicit and match the
ACS setting being benchmarked.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_MIN_STEP = 1e-8  # keeps x / step finite when the first batch is all zeros


def bits_supported(bits: int) -> bool:
    """True for the bit widths LSQ handles: 2..8, and 32 meaning full precision."""
    return bits == 32 or 2 <= bits <= 8


def _check_bits(bits: int) -> None:
    if not bits_supported(bits):
        raise ValueError(f"unsupported bit width {bits}; supported: 2..8 or 32")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return x unchanged but with its gradient multiplied by ``scale``."""
    y = x * scale
    return (x - y).detach() + y


class LSQ(nn.Module):
    """Per-tensor LSQ quantizer with a learnable step size.

    The step size is initialised from the first tensor seen (in train or eval mode) as
    ``2 * mean(|x|) / sqrt(Qp)``; ``per_sample=True`` means x is a batch of activations, so
    the gradient scale uses the number of features per sample instead of ``x.numel()``.
    ``bits == 32`` is the identity and has no step parameter.
    """

    def __init__(
        self,
        bits: int,
        signed: bool,
        per_sample: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_bits(bits)
        self.bits = bits
        self.signed = signed
        self.per_sample = per_sample
        if signed:
            self.qn, self.qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            self.qn, self.qp = 0, 2**bits - 1
        if bits == 32:
            self.register_parameter("step", None)
        else:
            self.step = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        self.register_buffer("initialized", torch.tensor(bits == 32, device=device))
        self._ready = bits == 32  # host-side copy of `initialized`: no device sync per forward

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read the loaded buffer on the next forward

    @torch.no_grad()
    def reset(self) -> None:
        """Mark the step size as uninitialised so the next forward re-initialises it."""
        if self.step is not None:
            self.step.fill_(1.0)
        self.initialized.fill_(self.bits == 32)
        self._ready = self.bits == 32

    @torch.no_grad()
    def _init_step(self, x: torch.Tensor) -> None:
        step = 2 * x.detach().abs().mean() / math.sqrt(self.qp)
        self.step.copy_(step.clamp_min(_MIN_STEP))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 32:
            return x
        if not self._ready:
            if not bool(self.initialized):
                self._init_step(x)
            self._ready = True
        n = x[0].numel() if self.per_sample else x.numel()
        s = grad_scale(self.step, 1.0 / math.sqrt(n * self.qp))
        return round_ste(torch.clamp(x / s, self.qn, self.qp)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, per_sample={self.per_sample}"


class QConv2d(nn.Conv2d):
    """Conv2d whose input activation and weight pass through LSQ quantizers."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        w_bits: int,
        a_bits: int,
        act_signed: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device=device, dtype=dtype,
        )
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.weight_quant = LSQ(w_bits, signed=True, per_sample=False, device=device, dtype=dtype)
        self.act_quant = LSQ(a_bits, signed=act_signed, per_sample=True, device=device, dtype=dtype)

    @classmethod
    def from_float(
        cls, layer: nn.Conv2d, w_bits: int, a_bits: int, act_signed: bool = False
    ) -> QConv2d:
        """Quantized copy of ``layer``; built on the meta device so no RNG is drawn."""
        q = cls(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
            w_bits=w_bits, a_bits=a_bits, act_signed=act_signed,
            device="meta", dtype=layer.weight.dtype,
        )
        return _finish_from_float(q, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"


class QLinear(nn.Linear):
    """Linear layer whose input activation and weight pass through LSQ quantizers."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        w_bits: int,
        a_bits: int,
        act_signed: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.weight_quant = LSQ(w_bits, signed=True, per_sample=False, device=device, dtype=dtype)
        self.act_quant = LSQ(a_bits, signed=act_signed, per_sample=True, device=device, dtype=dtype)

    @classmethod
    def from_float(
        cls, layer: nn.Linear, w_bits: int, a_bits: int, act_signed: bool = False
    ) -> QLinear:
        """Quantized copy of ``layer``; built on the meta device so no RNG is drawn."""
        q = cls(
            layer.in_features, layer.out_features, layer.bias is not None,
            w_bits=w_bits, a_bits=a_bits, act_signed=act_signed,
            device="meta", dtype=layer.weight.dtype,
        )
        return _finish_from_float(q, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"


def _finish_from_float(q: QConv2d | QLinear, layer: nn.Conv2d | nn.Linear) -> QConv2d | QLinear:
    """Materialise a meta-built quantized layer and copy the float layer's parameters."""
    q.to_empty(device=layer.weight.device)
    with torch.no_grad():
        q.weight.copy_(layer.weight)
        if layer.bias is not None:
            q.bias.copy_(layer.bias)
    q.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        q.bias.requires_grad_(layer.bias.requires_grad)
    q.weight_quant.reset()
    q.act_quant.reset()
    q.train(layer.training)
    return q


def _quantize_layer(
    layer: nn.Module, w_bits: int, a_bits: int, act_signed: bool = False
) -> QConv2d | QLinear:
    if isinstance(layer, nn.Conv2d):
        return QConv2d.from_float(layer, w_bits, a_bits, act_signed)
    return QLinear.from_float(layer, w_bits, a_bits, act_signed)


def quantize_model(
    model: nn.Module,
    w_bits: int,
    a_bits: int,
    first_last: str = "fp",
    quantize_downsample: bool = True,
) -> nn.Module:
    """Deep copy of ``model`` with every Conv2d/Linear replaced by its LSQ-quantized version.

    The stem ``conv1`` and classifier ``fc`` stay full precision (``first_last="fp"``) or
    use W8/A8 (``"8bit"``; the stem's input is a normalised image, so its activation
    quantizer is signed). Other activation quantizers are unsigned because their inputs are
    post-ReLU in our ResNets. ``quantize_downsample=False`` keeps shortcut/downsample convs FP.
    """
    _check_bits(w_bits)
    _check_bits(a_bits)
    if first_last not in ("fp", "8bit"):
        raise ValueError(f"first_last must be 'fp' or '8bit', got {first_last!r}")
    qmodel = copy.deepcopy(model)
    replacements: dict[str, nn.Module] = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, (QConv2d, QLinear)):
            raise ValueError(f"model is already quantized (module {name!r})")
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if name in ("conv1", "fc"):
            if first_last == "8bit":
                replacements[name] = _quantize_layer(module, 8, 8, act_signed=(name == "conv1"))
        elif not quantize_downsample and ("shortcut" in name or "downsample" in name):
            continue
        else:
            replacements[name] = _quantize_layer(module, w_bits, a_bits)
    for name, new in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(qmodel.get_submodule(parent_name), child_name, new)
    qmodel.quant_policy = {
        "w_bits": w_bits,
        "a_bits": a_bits,
        "first_last": first_last,
        "quantize_downsample": quantize_downsample,
    }
    return qmodel


def quantizers(model: nn.Module) -> Iterator[LSQ]:
    """The LSQ modules of ``model`` that actually quantize (bits < 32)."""
    for module in model.modules():
        if isinstance(module, LSQ) and module.bits < 32:
            yield module


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """(Re-)initialise every LSQ step size from one eval-mode forward pass of the batch x.

    Done before the first coreset selection so that selection sees a properly initialised
    quantized model (the reference ACS code selects before initialisation). Eval mode keeps
    BatchNorm running statistics untouched; each module's train/eval flag is restored.
    """
    modes = [(module, module.training) for module in model.modules()]
    for quantizer in quantizers(model):
        quantizer.reset()
    model.eval()
    try:
        model(x)
    finally:
        for module, training in modes:
            module.training = training
    names = {module: name for name, module in model.named_modules()}
    missing = [names[q] for q in quantizers(model) if not bool(q.initialized)]
    if missing:
        raise RuntimeError(f"quantizers not initialised by the calibration pass: {missing}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups with weight decay on conv/linear weights only.

    Biases, BatchNorm affine parameters and LSQ step sizes are not decayed: decaying a step
    size would shrink the quantization range for no reason.
    """
    decay: list[nn.Parameter] = []
    decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if id(module.weight) not in decay_ids:
                decay.append(module.weight)
                decay_ids.add(id(module.weight))
    no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
