"""MobileNetV2 (CIFAR, width multiplier), torchvision's ImageNet ResNets with published weights,
and the named quantization policies (which layers are quantized, at which bits)."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

from qcore_bench.models import build
from qcore_bench.models.imagenet import WeightsError, load_weights, resnet18_imagenet
from qcore_bench.models.mobilenetv2 import mobilenetv2
from qcore_bench.models.resnet import resnet18
from qcore_bench.quant import QConv2d, QLinear, quantize_model


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quantized(model: nn.Module) -> dict[str, QConv2d | QLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}


@pytest.mark.parametrize(("width", "stem", "last_block"), [(0.5, 16, 160), (1.0, 32, 320)])
def test_mobilenetv2_cifar_shapes_and_width(width: float, stem: int, last_block: int) -> None:
    model = build(mobilenetv2, 100, 3, gen(), {"width": width}).eval()
    assert model.conv1.out_channels == stem and model.conv1.stride == (1, 1)
    assert len(model.layers) == 17 and model.layers[-1].project.out_channels == last_block
    assert model.feature_dim == 1280 and model.fc.out_features == 100
    seen = []
    model.conv_last.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32, generator=gen(1))
        feats, out = model.features(x), model(x)
    assert seen[0] == (2, last_block, 4, 4)  # CIFAR variant: overall stride 8
    assert feats.shape == (2, 1280) and out.shape == (2, 100) and torch.allclose(out, model.fc(feats))
    # residual blocks where the shape is kept; linear (signed) block outputs feed the next expansion
    assert [b.residual for b in model.layers[:4]] == [False, False, True, False]
    assert "layers.0.expand" not in model.signed_inputs and model.layers[0].expand is None
    assert {"layers.1.expand", "layers.16.expand", "conv_last"} <= model.signed_inputs


def test_mobilenetv2_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="width must be > 0"):
        mobilenetv2(10, width=0)


def test_weight_only_blocks_quantizes_block_conv_weights_only() -> None:
    fp = build(mobilenetv2, 100, 3, gen(), {"width": 0.5})
    q = quantize_model(fp, 2, 32, policy="weight_only_blocks")
    layers = quantized(q)
    assert len(layers) == 2 + 16 * 3  # first block: depthwise + project; 16 more blocks with an expansion
    assert all(name.startswith("layers.") for name in layers)
    assert all(m.w_bits == 2 and m.weight_quant.bits == 2 and m.act_quant.bits == 32 for m in layers.values())
    assert type(q.conv1) is nn.Conv2d and type(q.conv_last) is nn.Conv2d and type(q.fc) is nn.Linear
    assert q.quant_policy["policy"] == "weight_only_blocks"
    with pytest.raises(ValueError, match="keeps activations full precision"):
        quantize_model(fp, 2, 4, policy="weight_only_blocks")


def test_activation_quantizers_are_signed_where_the_model_says_so() -> None:
    fp = build(mobilenetv2, 10, 3, gen(), {"width": 0.5})
    q = quantize_model(fp, 4, 4)
    layers = quantized(q)
    assert layers["conv_last"].act_quant.signed and layers["layers.1.expand"].act_quant.signed
    assert not layers["layers.1.depthwise"].act_quant.signed and not layers["layers.1.project"].act_quant.signed


@pytest.mark.parametrize("arch", [resnet18, resnet18_imagenet])
def test_acs_resnet_quantizes_only_the_3x3_block_convs(arch) -> None:
    fp = build(arch, 10, 3, gen())
    q = quantize_model(fp, 4, 4, policy="acs_resnet")
    layers = quantized(q)
    assert sorted(layers) == sorted(f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2))
    assert all(m.kernel_size == (3, 3) and (m.w_bits, m.a_bits) == (4, 4) for m in layers.values())
    everything = quantized(quantize_model(fp, 4, 4))  # "all": the 1x1 shortcut/downsample convs too
    assert len(everything) == 16 + 3 and any("shortcut" in n or "downsample" in n for n in everything)
    with pytest.raises(ValueError, match="quantizes no layer"):
        quantize_model(build(mobilenetv2, 10, 3, gen()), 4, 4, policy="acs_resnet")
    with pytest.raises(ValueError, match="policy must be one of"):
        quantize_model(fp, 4, 4, policy="most")


def test_resnet18_imagenet_matches_torchvision_and_exposes_features() -> None:
    from torchvision.models import resnet18 as tv_resnet18

    ours = build(resnet18_imagenet, 1000, 3, gen())
    with torch.random.fork_rng():  # torchvision initialises from the global RNG
        reference = tv_resnet18()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()]
    ours.load_state_dict(reference.state_dict())
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen(1))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
        assert ours.features(x).shape == (2, 512) and ours.feature_dim == 512


def test_published_weights_come_from_the_hub_cache_or_a_clear_error(tmp_path: pathlib.Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = build(resnet18_imagenet, 10, 3, gen())
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError, match="never downloads") as err:
        load_weights(model, resnet18_imagenet, "resnet18_imagenet")
    message = str(err.value)
    assert str(expected) in message and "never downloads" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message and "teacher.weights" in message
    published = build(resnet18_imagenet, 10, 3, gen(7)).state_dict()
    expected.parent.mkdir(parents=True)
    torch.save(published, expected)
    assert load_weights(model, resnet18_imagenet, "resnet18_imagenet") == expected
    assert all(torch.equal(v, published[k]) for k, v in model.state_dict().items())
    other = tmp_path / "mine.pth"
    torch.save(build(resnet18_imagenet, 5, 3, gen()).state_dict(), other)
    with pytest.raises(WeightsError, match="do not fit model 'resnet18_imagenet'"):
        load_weights(model, resnet18_imagenet, "resnet18_imagenet", str(other))
