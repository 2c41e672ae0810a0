import pytest
import torch
from torch import nn

from qcore_bench.models import build, init_weights
from qcore_bench.models.resnet import resnet8, resnet18, resnet20


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "arch,feature_dim", [(resnet8, 64), (resnet20, 64), (resnet18, 512)]
)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_output_and_feature_shapes(arch, feature_dim, shape):
    model = build(arch, 10, shape[0], gen()).eval()
    x = torch.randn(2, *shape, generator=gen(1))
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
    assert model.feature_dim == feature_dim
    assert feats.shape == (2, feature_dim)
    assert out.shape == (2, 10)
    assert torch.allclose(out, model.fc(feats))
    assert torch.all(feats >= 0)  # pooled post-ReLU features


def test_cifar_architecture():
    model = resnet20(10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.fc, nn.Linear)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    # Projection shortcut only where the shape changes.
    assert len(model.layer1[0].shortcut) == 0
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d)
    assert model.layer2[0].shortcut[0].kernel_size == (1, 1)
    assert len(model.layer2[1].shortcut) == 0
    r18 = resnet18(100)
    assert [len(getattr(r18, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert r18.fc.out_features == 100


def test_parameter_counts():
    assert n_params(resnet20(10)) == pytest.approx(0.27e6, rel=0.03)
    assert n_params(resnet18(10)) == pytest.approx(11.17e6, rel=0.01)
    assert n_params(resnet8(10)) < n_params(resnet20(10))


def test_build_is_deterministic_and_seed_dependent():
    a = build(resnet8, 10, 3, gen(3)).state_dict()
    b = build(resnet8, 10, 3, gen(3)).state_dict()
    c = build(resnet8, 10, 3, gen(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    assert not torch.equal(a["fc.bias"], c["fc.bias"])


def test_build_leaves_global_rng_untouched():
    state = torch.get_rng_state()
    build(resnet20, 10, 3, gen())
    assert torch.equal(state, torch.get_rng_state())


def test_build_initialisation_values():
    model = build(resnet20, 10, 3, gen())
    assert all(p.device.type == "cpu" for p in model.parameters())
    bn = model.layer2[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.num_batches_tracked.item() == 0
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)).
    w = model.layer3[0].conv2.weight
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    bound = 1 / model.fc.in_features**0.5
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_init_weights_overwrites_existing_model():
    model = resnet8(10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
        model.bn1.running_mean.fill_(3.0)
    init_weights(model, gen(3))
    reference = build(resnet8, 10, 3, gen(3)).state_dict()
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_init_weights_rejects_unknown_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(TypeError, match="1.weight"):
        init_weights(model, gen())
