"""RetinaNet as the harness builds it: seeded weights, the LSQ policy for detectors, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from qcore_bench.models.retinanet import (EDGE_LAYERS, build_detector, load_checkpoint, retinanet_resnet18_fpn,
                                          retinanet_small)
from qcore_bench.quant import LSQ, QConv2d, calibrate, quantize_model


def test_weights_come_from_the_generator_only() -> None:
    a = build_detector(retinanet_small, 5, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = build_detector(retinanet_small, 5, torch.Generator().manual_seed(3))
    c = build_detector(retinanet_small, 5, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.backbone.body.conv1.weight, c.backbone.body.conv1.weight)
    bias = a.head.classification_head.cls_logits.bias
    assert torch.allclose(bias, torch.full_like(bias, -torch.log(torch.tensor(99.0))))  # the focal prior 0.01


@pytest.mark.parametrize("first_last", ["fp", "8bit"])
def test_the_detection_policy_quantizes_every_conv_but_the_stem_and_the_predictors(first_last: str) -> None:
    fp = build_detector(retinanet_small, 5, torch.Generator().manual_seed(0), {"head_groups": 8})
    q = quantize_model(fp, 4, 4, first_last=first_last)
    convs = {n: m for n, m in q.named_modules() if isinstance(m, nn.Conv2d)}
    for name, module in convs.items():
        if name in EDGE_LAYERS:
            assert isinstance(module, QConv2d) == (first_last == "8bit"), name
            if first_last == "8bit":
                assert module.weight_quant.bits == 8 and module.act_quant.bits == 8
        else:
            assert isinstance(module, QConv2d) and module.weight_quant.bits == 4 and module.act_quant.bits == 4, name
    signed = {n for n, m in convs.items() if isinstance(m, QConv2d) and m.act_quant.signed}
    assert {"backbone.fpn.layer_blocks.0.0", "head.classification_head.conv.0.0",
            "head.regression_head.conv.0.0"} <= signed
    assert "backbone.body.layer2.0.conv1" not in signed  # a ReLU output: unsigned
    calibrate(q, [torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    assert all(bool(m.initialized) for m in q.modules() if isinstance(m, LSQ) and m.bits < 32)


def test_a_checkpoint_is_a_whole_detector_or_a_backbone_and_nothing_else(tmp_path: Path) -> None:
    det = build_detector(retinanet_resnet18_fpn, 3, torch.Generator().manual_seed(0))
    torch.save(det.state_dict(), tmp_path / "det.pt")
    other = build_detector(retinanet_resnet18_fpn, 3, torch.Generator().manual_seed(1))
    assert load_checkpoint(other, str(tmp_path / "det.pt")) == "detector"
    assert torch.equal(other.head.regression_head.bbox_reg.weight, det.head.regression_head.bbox_reg.weight)

    backbone = resnet18(weights=None)  # an ImageNet classifier's state dict, fc included
    torch.save(backbone.state_dict(), tmp_path / "resnet18.pth")
    fresh = build_detector(retinanet_resnet18_fpn, 3, torch.Generator().manual_seed(2))
    assert load_checkpoint(fresh, str(tmp_path / "resnet18.pth")) == "backbone"
    assert torch.equal(fresh.backbone.body.layer3[0].conv1.weight, backbone.layer3[0].conv1.weight)

    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a detector of this architecture nor its backbone"):
        load_checkpoint(other, str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(other, str(tmp_path / "missing.pt"))
