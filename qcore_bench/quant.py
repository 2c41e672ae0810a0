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
from torch.autograd.function import once_differentiable

_MIN_STEP = 1e-8  # keeps x / step finite when the first batch is all zeros


def bits_supported(bits: int) -> bool:
    """True for the bit widths LSQ handles: 2..8, and 32 meaning full precision."""
    return bits == 32 or 2 <= bits <= 8


def _check_bits(bits: int) -> None:
    if not bits_supported(bits):
        raise ValueError(f"unsupported bit width {bits}; supported: 2..8 or 32")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b), without a full-size temporary when both share a dense layout."""
    if a.dtype in (torch.float32, torch.float64) and a.dtype == b.dtype:
        if a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.reshape(-1), b.reshape(-1))
        if a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(
            memory_format=torch.channels_last
        ):
            return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return torch.sum(a * b, dtype=torch.promote_types(a.dtype, torch.float32))


class _LSQFunction(torch.autograd.Function):
    """LSQ's forward and its exact gradients as one autograd node.

    Forward: v = x / s, out = round(clamp(v, Qn, Qp)) * s. Backward (Esser et al., eqs. 3
    and 5): dL/dx = dL/dout where Qn < v < Qp, else 0; dL/ds = g * sum(dL/dout * dq) with
    dq = round(v) - v inside, Qn below, Qp above. A value exactly at a clip edge counts as
    clipped, as in the paper, whatever the torch version (torch's clamp has let the gradient
    through at its bounds in some versions and not in others).

    Why a Function: the autograd graph of round/clamp/gradient-scale tricks keeps several
    full-size tensors per quantizer alive until the backward and builds many more
    temporaries. Here the forward allocates two (v, kept, and the output) and the backward
    the gradient plus two short-lived ones that the allocator recycles from one layer to
    the next: on a CPU every fresh large tensor costs page faults on top of its memory
    pass. dq is summed directly, not as sum(dout * round(v)) - sum(dout * v), which
    cancels badly at 8 bits.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, grad_scale: float, qn: int, qp: int) -> torch.Tensor:
        v = torch.div(x, step)
        ctx.save_for_backward(v)
        ctx.grad_scale, ctx.qn, ctx.qp, ctx.step_dtype = grad_scale, qn, qp, step.dtype
        return torch.clamp(v, qn, qp).round_().mul_(step)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (v,) = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        grad_x = grad_step = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.hardtanh_backward(grad_out, v, qn, qp)  # grad where qn < v < qp, else 0
        if ctx.needs_input_grad[1]:
            rounded = torch.clamp(v, qn, qp).round_()
            dq = torch.ops.aten.hardtanh_backward(v, v, qn, qp)  # v where qn < v < qp, else 0
            torch.sub(rounded, dq, out=dq)
            del rounded
            grad_step = (_dot(grad_out, dq) * ctx.grad_scale).to(ctx.step_dtype).reshape(())
        return grad_x, grad_step, None, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, grad_scale: float, qn: int, qp: int) -> torch.Tensor:
    """LSQ fake quantization ``round(clamp(x / step, qn, qp)) * step``.

    The step size's gradient is multiplied by ``grad_scale`` (LSQ's 1/sqrt(N * Qp)); x gets
    the straight-through gradient inside the range. Without autograd (evaluation, selection
    scoring) it is four in-place passes over one temporary.
    """
    if torch.is_grad_enabled() and (x.requires_grad or step.requires_grad):
        return _LSQFunction.apply(x, step, grad_scale, qn, qp)
    return torch.div(x, step).clamp_(qn, qp).round_().mul_(step)


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
        return lsq_quantize(x, self.step, 1.0 / math.sqrt(n * self.qp), self.qn, self.qp)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, per_sample={self.per_sample}"


class _Quantized:
    """What QConv2d and QLinear share: LSQ quantizers for the input activation and the weight."""

    def _add_quantizers(self, w_bits: int, a_bits: int, act_signed: bool,
                        device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.weight_quant = LSQ(w_bits, signed=True, per_sample=False, device=device, dtype=dtype)
        self.act_quant = LSQ(a_bits, signed=act_signed, per_sample=True, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"


class QConv2d(_Quantized, nn.Conv2d):
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
        self._add_quantizers(w_bits, a_bits, act_signed, device, dtype)

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


class QLinear(_Quantized, nn.Linear):
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
        self._add_quantizers(w_bits, a_bits, act_signed, device, dtype)

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


POLICIES = ("all", "acs_resnet", "weight_only_blocks")


def _policy_bits(name: str, module: nn.Module, policy: str, w_bits: int, a_bits: int,
                 quantize_downsample: bool) -> tuple[int, int] | None:
    """(w_bits, a_bits) of a layer other than conv1/fc under ``policy``, or None to keep it FP."""
    shortcut = "shortcut" in name or "downsample" in name
    if shortcut and (policy == "acs_resnet" or not quantize_downsample):
        return None
    if policy == "acs_resnet":
        three_by_three = isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.groups == 1
        return (w_bits, a_bits) if three_by_three else None
    if policy == "weight_only_blocks":
        return (w_bits, 32) if isinstance(module, nn.Conv2d) and name != "conv_last" else None
    return w_bits, a_bits


def quantize_model(
    model: nn.Module,
    w_bits: int,
    a_bits: int,
    first_last: str = "fp",
    quantize_downsample: bool = True,
    policy: str = "all",
    act_grad_scale: str = "per_sample",
) -> nn.Module:
    """Deep copy of ``model`` with its Conv2d/Linear layers replaced by LSQ-quantized versions.

    The stem ``conv1`` and classifier ``fc`` (a model's ``edge_layers`` where it lists them:
    a detector's stem and final predictor convs) stay full precision (``first_last="fp"``) or
    use W8/A8 (``"8bit"``; the stem's input is a normalised image, so its activation
    quantizer is signed). ``policy`` picks the other layers quantized at W/A:
    "all": every Conv2d/Linear (shortcut/downsample convs only if ``quantize_downsample``);
    "acs_resnet": only the 3x3 convs of the residual blocks, with their input activations
    (shortcuts FP; the ACS code's ResNet-18); "weight_only_blocks": the weights of every
    block conv, activations FP (needs a_bits 32; the last 1x1 ``conv_last`` stays FP; the
    ACS code's MobileNetV2). Activation quantizers are unsigned (post-ReLU inputs) except
    for the layers the model lists in its ``signed_inputs``.

    ``act_grad_scale``: the N of an activation step size's gradient scale 1/sqrt(N Qp).
    "per_sample" (default): the features of one sample, as LSQ defines N for a layer's
    activations; "per_batch": every element of the batch (``x.numel()``), as the ACS code
    computes it, which shrinks the step-size gradient by sqrt(batch size).
    """
    _check_bits(w_bits)
    _check_bits(a_bits)
    if first_last not in ("fp", "8bit"):
        raise ValueError(f"first_last must be 'fp' or '8bit', got {first_last!r}")
    if policy not in POLICIES:
        raise ValueError(f"quantization policy must be one of {list(POLICIES)}, got {policy!r}")
    if act_grad_scale not in ("per_sample", "per_batch"):
        raise ValueError(f"act_grad_scale must be 'per_sample' or 'per_batch', got {act_grad_scale!r}")
    if policy == "weight_only_blocks" and a_bits != 32:
        raise ValueError(f"policy 'weight_only_blocks' keeps activations full precision: use bits {w_bits}/32")
    qmodel = copy.deepcopy(model)
    signed = getattr(qmodel, "signed_inputs", frozenset())
    edges = tuple(getattr(qmodel, "edge_layers", ("conv1", "fc")))  # stem first, then the final predictor(s)
    replacements: dict[str, nn.Module] = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, (QConv2d, QLinear)):
            raise ValueError(f"model is already quantized (module {name!r})")
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if name in edges:
            if first_last == "8bit":
                replacements[name] = _quantize_layer(module, 8, 8, act_signed=(name == edges[0]))
            continue
        bits = _policy_bits(name, module, policy, w_bits, a_bits, quantize_downsample)
        if bits is not None:
            replacements[name] = _quantize_layer(module, *bits, act_signed=name in signed)
    if policy != "all" and not any(name not in edges for name in replacements):
        raise ValueError(f"quantization policy {policy!r} quantizes no layer of {type(model).__name__}")
    for name, new in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(qmodel.get_submodule(parent_name), child_name, new)
        new.act_quant.per_sample = act_grad_scale == "per_sample"
    qmodel.quant_policy = {
        "policy": policy,
        "w_bits": w_bits,
        "a_bits": a_bits,
        "first_last": first_last,
        "quantize_downsample": quantize_downsample,
        **({"act_grad_scale": act_grad_scale} if act_grad_scale != "per_sample" else {}),
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
