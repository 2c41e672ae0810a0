import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcore_bench.models import build
from qcore_bench.models.resnet import resnet8
from qcore_bench.quant import (
    LSQ,
    QConv2d,
    QLinear,
    bits_supported,
    calibrate,
    param_groups,
    quantize_model,
    quantizers,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@pytest.fixture(scope="module")
def fp_model() -> nn.Module:
    return build(resnet8, 10, 3, gen(0)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16, generator=gen(1))


def test_bits_supported():
    assert [b for b in range(0, 40) if bits_supported(b)] == [2, 3, 4, 5, 6, 7, 8, 32]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_forward_is_on_the_clamped_grid(bits, signed):
    quant = LSQ(bits, signed=signed, per_sample=False)
    qn, qp = qrange(bits, signed)
    s = 0.1
    with torch.no_grad():
        quant.step.fill_(s)
        quant.initialized.fill_(True)
    x = torch.linspace(qn * s - 1, qp * s + 1, 5000)
    out = quant(x).detach()
    codes = out / s
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= qn - 1e-4 and codes.max() <= qp + 1e-4
    # Inputs beyond the range saturate at its ends, and every grid point is reachable.
    assert torch.allclose(codes[x < qn * s], torch.tensor(float(qn)))
    assert torch.allclose(codes[x > qp * s], torch.tensor(float(qp)))
    assert codes.round().unique().numel() == qp - qn + 1
    # Inside the range the output is the nearest grid point.
    inside = (x / s > qn) & (x / s < qp)
    assert torch.all((out - x)[inside].abs() <= s / 2 + 1e-5)


def test_bits_32_is_identity():
    quant = LSQ(32, signed=False, per_sample=True)
    x = torch.randn(4, 5, generator=gen())
    assert quant(x) is x
    assert list(quant.parameters()) == []
    assert bool(quant.initialized)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, False), (8, True)])
def test_step_initialised_once_from_first_batch(bits, signed):
    quant = LSQ(bits, signed=signed, per_sample=True)
    assert not bool(quant.initialized)
    x = torch.randn(6, 10, generator=gen())
    quant.eval()  # initialisation happens in any mode
    quant(x)
    _, qp = qrange(bits, signed)
    expected = 2 * x.abs().mean() / math.sqrt(qp)
    assert torch.isclose(quant.step.detach(), expected)
    assert bool(quant.initialized)
    quant.train()
    quant(10 * x)
    assert torch.isclose(quant.step.detach(), expected)
    assert "initialized" in quant.state_dict()


def test_all_zero_first_batch_gives_positive_step():
    quant = LSQ(4, signed=False, per_sample=False)
    out = quant(torch.zeros(10))
    assert quant.step.item() > 0
    assert torch.all(torch.isfinite(out))


def reference_grads(x, grad_out, s, qn, qp, n):
    """Analytic LSQ gradients (Esser et al., eq. 3 with the 1/sqrt(N*Qp) scale)."""
    v = x / s
    below, above = v < qn, v > qp
    inside = ~below & ~above
    dq_ds = torch.where(below, float(qn), torch.where(above, float(qp), torch.round(v) - v))
    g = 1 / math.sqrt(n * qp)
    return grad_out * inside, g * (grad_out * dq_ds).sum()


@pytest.mark.parametrize("bits,signed", [(2, True), (3, False), (4, True), (8, False)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_gradients_match_analytic_lsq(bits, signed, per_sample):
    qn, qp = qrange(bits, signed)
    quant = LSQ(bits, signed=signed, per_sample=per_sample).double()
    s = 0.25
    with torch.no_grad():
        quant.step.fill_(s)
        quant.initialized.fill_(True)
    # Values below, inside and above the range, kept away from rounding/clamp boundaries.
    grid = torch.arange(qn, qp, dtype=torch.double)
    codes = torch.cat([
        torch.tensor([qn - 2.3, qn - 0.6], dtype=torch.double),
        grid + 0.3,
        grid + 0.8,
        torch.tensor([qp + 0.4, qp + 3.1], dtype=torch.double),
    ])
    x = (codes * s).reshape(2, -1).requires_grad_()
    grad_out = torch.randn(x.shape, generator=gen(), dtype=torch.double)
    quant(x).backward(grad_out)
    n = x.shape[1] if per_sample else x.numel()
    gx, gs = reference_grads(x.detach(), grad_out, s, qn, qp, n)
    assert torch.allclose(x.grad, gx)
    assert torch.allclose(quant.step.grad, gs)


def round_ste(x):
    return x + (torch.round(x) - x).detach()


def grad_scale(x, scale):
    y = x * scale
    return (x - y).detach() + y


def straightforward_lsq(x, step, qn, qp, n):
    """LSQ composed from autograd ops, as it was before the fused Function. hardtanh, not
    clamp: its gradient is 0 at the bounds on every torch version (the paper's convention)."""
    s = grad_scale(step, 1 / math.sqrt(n * qp))
    return round_ste(F.hardtanh(x / s, float(qn), float(qp))) * s


def fast_and_straightforward(x, bits, signed, per_sample, s, grad_out):
    """(output, x.grad, step.grad) of the LSQ module and of straightforward_lsq."""
    qn, qp = qrange(bits, signed)
    quant = LSQ(bits, signed=signed, per_sample=per_sample).to(x.dtype)
    with torch.no_grad():
        quant.step.fill_(s)
        quant.initialized.fill_(True)
    step = quant.step.detach().clone().requires_grad_()
    n = x[0].numel() if per_sample else x.numel()
    results = []
    for fn in (quant, lambda t: straightforward_lsq(t, step, qn, qp, n)):
        xi = x.detach().clone().requires_grad_()
        out = fn(xi)
        out.backward(grad_out)
        results.append((out.detach(), xi.grad))
    return results[0] + (quant.step.grad,), results[1] + (step.grad,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits,signed", [(2, True), (2, False), (4, False), (8, True)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_fast_path_equals_straightforward_at_edges_and_ties(dtype, bits, signed, per_sample):
    qn, qp = qrange(bits, signed)
    s = 0.25  # a power of two: x = code * s and x / s are exact, so the codes below are exact
    grid = torch.arange(qn, qp + 1, dtype=dtype)
    codes = torch.cat([
        torch.tensor([qn - 3.0, qn - 0.5, qn - 1e-3, qp + 1e-3, qp + 0.5, qp + 2.0], dtype=dtype),
        grid,  # includes both clip edges exactly
        grid[:-1] + 0.5,  # exact ties: round half to even
        grid[:-1] + 0.3,
    ])
    x = (codes * s).reshape(2, -1)
    grad_out = torch.randn(x.shape, generator=gen(), dtype=dtype)
    n = x.shape[1] if per_sample else x.numel()
    assert grad_scale(torch.tensor(s, dtype=dtype), 1 / math.sqrt(n * qp)).item() == s  # same forward step
    fast, ref = fast_and_straightforward(x, bits, signed, per_sample, s, grad_out)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])
    # In float32 the straightforward sum carries ~1e-6 of cancellation error of its own.
    assert torch.allclose(fast[2], ref[2], rtol=1e-6 if dtype == torch.float64 else 2e-6, atol=0)
    # The paper's formula written out (in float64), edges counted as clipped.
    v = codes.reshape(2, -1)
    inside = (v > qn) & (v < qp)
    assert torch.equal(fast[0], torch.round(v.clamp(qn, qp)) * s)
    assert torch.equal(fast[1], grad_out * inside)
    v = v.double()
    dq = torch.where(inside, torch.round(v) - v, torch.where(v <= qn, float(qn), float(qp)))
    expected = (grad_out.double() * dq).sum() / math.sqrt(n * qp)
    assert abs(fast[2].item() / expected.item() - 1) < 1e-6
    assert torch.equal(torch.round(torch.tensor([0.5, 1.5, 2.5])), torch.tensor([0.0, 2.0, 2.0]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_equals_straightforward_on_activations(channels_last):
    x = torch.relu(torch.randn(4, 8, 6, 6, generator=gen(2)))  # post-ReLU: many exact zeros (= Qn)
    grad_out = torch.randn(x.shape, generator=gen(3))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    fast, ref = fast_and_straightforward(x, 3, False, True, 0.25, grad_out)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
    assert torch.allclose(fast[2], ref[2], rtol=1e-6, atol=0)
    assert fast[0].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_step_gradient_accurate_in_float32_at_8_bits():
    # Codes around 100..250: sum(g * round(v)) - sum(g * v) would cancel ~3 digits away
    # (the straightforward version's error here is ~2e-7 of the scale below, 10x the fast path's).
    s, qp = 0.25, 255
    x = (100 + 150 * torch.rand(32, 16, 16, 16, generator=gen(4))) * s
    grad_out = torch.randn(x.shape, generator=gen(5))
    fast, _ = fast_and_straightforward(x, 8, False, True, s, grad_out)
    v = (x / s).double()  # the forward's float32 codes, exactly
    dq = torch.where((v > 0) & (v < qp), torch.round(v) - v, torch.where(v <= 0, 0.0, float(qp)))
    terms = grad_out.double() * dq / math.sqrt(x[0].numel() * qp)
    assert abs(fast[2].item() - terms.sum().item()) < 1e-7 * terms.abs().sum().item()


def test_gradient_only_where_needed_and_no_grad_path_matches():
    quant = LSQ(4, signed=True, per_sample=False)
    x = torch.randn(50, generator=gen())
    quant(x)  # initialises the step
    trained = quant(x.clone().requires_grad_())
    with torch.no_grad():
        assert torch.equal(quant(x), trained)
    quant(x).sum().backward()  # x needs no gradient: only the step gets one
    assert quant.step.grad is not None
    quant.step.requires_grad_(False)
    xg = x.clone().requires_grad_()
    quant(xg).sum().backward()
    v = x / quant.step
    assert torch.equal(xg.grad, ((v > -8) & (v < 7)).float())


def block_convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"}


def test_quantize_model_fp_first_last(fp_model):
    q = quantize_model(fp_model, 4, 3)
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    convs = block_convs(q)
    assert len(convs) == 8  # 3 blocks x 2 convs + 2 shortcuts
    for name, m in convs.items():
        assert isinstance(m, QConv2d), name
        assert (m.w_bits, m.a_bits) == (4, 3)
        assert m.weight_quant.bits == 4 and m.weight_quant.signed
        assert m.act_quant.bits == 3 and not m.act_quant.signed
        assert "w_bits=4, a_bits=3" in repr(m)
    assert q.quant_policy == {
        "policy": "all", "w_bits": 4, "a_bits": 3, "first_last": "fp", "quantize_downsample": True
    }


def test_quantize_model_8bit_first_last(fp_model):
    q = quantize_model(fp_model, 2, 2, first_last="8bit")
    assert isinstance(q.conv1, QConv2d) and isinstance(q.fc, QLinear)
    assert (q.conv1.w_bits, q.conv1.a_bits, q.fc.w_bits, q.fc.a_bits) == (8, 8, 8, 8)
    assert q.conv1.act_quant.signed and not q.fc.act_quant.signed
    assert all(m.w_bits == 2 and m.a_bits == 2 for m in block_convs(q).values())


def test_quantize_downsample_false_keeps_shortcuts_fp(fp_model):
    q = quantize_model(fp_model, 4, 4, quantize_downsample=False)
    for name, m in block_convs(q).items():
        assert isinstance(m, QConv2d) == ("shortcut" not in name), name
    assert q.quant_policy["quantize_downsample"] is False


@pytest.mark.parametrize("w_bits,a_bits", [(1, 4), (9, 4), (4, 1), (4, 16)])
def test_unsupported_bits_raise(fp_model, w_bits, a_bits):
    with pytest.raises(ValueError, match="supported: 2..8 or 32"):
        quantize_model(fp_model, w_bits, a_bits)


def test_bad_first_last_and_double_quantization_raise(fp_model):
    with pytest.raises(ValueError, match="first_last must be 'fp' or '8bit', got 'int8'"):
        quantize_model(fp_model, 4, 4, first_last="int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(quantize_model(fp_model, 4, 4), 4, 4)


def test_original_model_untouched(fp_model, images):
    before = {k: v.clone() for k, v in fp_model.state_dict().items()}
    y_before = fp_model(images)
    q = quantize_model(fp_model, 2, 2, first_last="8bit")
    calibrate(q, images)
    q.train()
    q(images).sum().backward()
    assert not any(isinstance(m, (QConv2d, QLinear)) for m in fp_model.modules())
    assert all(torch.equal(before[k], v) for k, v in fp_model.state_dict().items())
    assert torch.equal(fp_model(images), y_before)
    assert all(p.grad is None for p in fp_model.parameters())


def test_quantize_does_not_touch_global_rng(fp_model):
    state = torch.get_rng_state()
    quantize_model(fp_model, 4, 4, first_last="8bit")
    assert torch.equal(state, torch.get_rng_state())


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_w8a8_close_to_fp_and_w2_is_not(fp_model, images):
    y = fp_model(images)
    q8 = quantize_model(fp_model, 8, 8, first_last="8bit")
    calibrate(q8, images)
    q2 = quantize_model(fp_model, 2, 2)
    calibrate(q2, images)
    assert relative_error(q8(images), y) < 0.1
    assert relative_error(q2(images), y) > 0.3


def test_w32a32_matches_fp(fp_model, images):
    q = quantize_model(fp_model, 32, 32)
    assert list(quantizers(q)) == []
    assert torch.allclose(q(images), fp_model(images), atol=1e-5)


def test_calibrate_initialises_all_and_keeps_bn_stats(fp_model, images):
    q = quantize_model(fp_model, 4, 4, first_last="8bit")
    q.train()
    q.layer1[0].bn1.eval()  # mixed modes must be restored exactly
    n_quant = len(list(quantizers(q)))
    assert n_quant == 2 * 10  # 8 block convs + stem + fc, each with W and A quantizers
    assert not any(bool(m.initialized) for m in quantizers(q))
    bn_before = {k: v.clone() for k, v in q.state_dict().items() if "running" in k}
    calibrate(q, images)
    assert all(bool(m.initialized) for m in quantizers(q))
    assert all(torch.equal(bn_before[k], q.state_dict()[k]) for k in bn_before)
    assert q.training and not q.layer1[0].bn1.training and q.layer1[0].bn2.training
    # A train-mode forward would have changed them, so the check above can fail.
    q(images)
    assert not all(torch.equal(bn_before[k], q.state_dict()[k]) for k in bn_before)


def test_calibrate_reinitialises_from_given_batch():
    layer = QLinear.from_float(nn.Linear(5, 3), 4, 4)
    x = torch.rand(8, 5, generator=gen())
    layer(100 * x)
    calibrate(layer, x)
    assert torch.isclose(layer.act_quant.step.detach(), 2 * x.mean() / math.sqrt(15))


def test_calibrate_raises_for_unreached_quantizer(images):
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = QLinear.from_float(nn.Linear(3, 2), 4, 4)
            self.unused = QLinear.from_float(nn.Linear(2, 2), 4, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(RuntimeError, match="unused"):
        calibrate(Partial(), torch.rand(4, 3, generator=gen()))


def test_from_float_copies_layer():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True)
    q = QConv2d.from_float(conv, 32, 32)
    assert torch.equal(q.weight, conv.weight) and torch.equal(q.bias, conv.bias)
    assert (q.stride, q.padding, q.kernel_size) == (conv.stride, conv.padding, conv.kernel_size)
    x = torch.randn(2, 3, 8, 8, generator=gen())
    assert torch.allclose(q(x), conv(x))
    q.weight.data.zero_()
    assert conv.weight.abs().sum() > 0  # a copy, not shared storage


def test_param_groups_split(fp_model):
    q = quantize_model(fp_model, 4, 4, first_last="8bit")
    groups = param_groups(q, 5e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {id(p): n for n, p in q.named_parameters()}
    assert decayed.isdisjoint(free) and decayed | free == set(names)
    assert all(g["weight_decay"] == 5e-4 for g in groups if g["weight_decay"] > 0)
    weights = {
        f"{n}.weight" for n, m in q.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    assert {names[i] for i in decayed} == weights
    assert any(names[i].endswith("step") for i in free)
    assert any(names[i] == "fc.bias" for i in free)
    torch.optim.SGD(groups, lr=0.1)  # accepted by an optimizer as-is


def test_per_batch_activation_gradient_scale_is_the_reference_codes_convention() -> None:
    """ACS's code scales an activation step's gradient by 1/sqrt(x.numel() Qp): sqrt(batch) below LSQ's."""
    from qcore_bench.quant import quantize_model

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    x = torch.randn(8, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    grads = {}
    for convention in ("per_sample", "per_batch"):
        q = quantize_model(model, 4, 4, act_grad_scale=convention)
        layer = q.get_submodule("2")
        assert layer.act_quant.per_sample == (convention == "per_sample")
        q(x).sum().backward()
        grads[convention] = layer.act_quant.step.grad.clone()
    assert torch.allclose(grads["per_batch"] * math.sqrt(8), grads["per_sample"], rtol=1e-5)
    with pytest.raises(ValueError, match="act_grad_scale must be 'per_sample' or 'per_batch'"):
        quantize_model(model, 4, 4, act_grad_scale="per_tensor")
