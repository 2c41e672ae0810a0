"""What tests/test_ddp.py launches under torchrun (gloo, CPU); not a test module itself.

    ddp_worker.py mechanics OUT            the collectives and the sharded training step
    ddp_worker.py cell OUT run-cell ...    ``qcore-bench run-cell ...``, recording per rank what
                                           it selected and which store writes it made

Each rank writes OUT/rank<r>.json when it is done; a failed check exits non-zero.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn


class Flat(nn.Module):
    """A linear classifier over the pixels: no BatchNorm, so DDP must match one process exactly."""

    def __init__(self, pixels: int, classes: int, seed: int = 0) -> None:
        super().__init__()
        self.fc = nn.Linear(pixels, classes)
        g = torch.Generator().manual_seed(seed)  # the same start on every rank, not torch's global RNG
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, pixels, generator=g) * 0.1)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def check_collectives(shard) -> None:
    from qcore_bench import distributed

    for n in (1, 2, 5, 8):  # fewer rows than ranks, uneven and even splits: all rows, in order
        rows = torch.arange(3 * n, dtype=torch.float32).view(n, 3)
        assert torch.equal(distributed.gather_rows(rows[shard.span(n)], n), rows), n

    distributed.assert_same("equal tensors", torch.arange(5), None)
    try:
        distributed.assert_same("a rank-dependent subset", torch.arange(5) + shard.rank)
    except distributed.DistributedError as exc:
        assert "differs across the 2 ranks" in str(exc)
    else:
        raise AssertionError("assert_same let different tensors through")

    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(shard.rank))
    distributed.sync_buffers(bn)
    assert torch.equal(bn.running_mean, torch.full((2,), 0.5)) and int(bn.num_batches_tracked) == 0


def check_training(shard, dev: torch.device) -> None:
    """Two epochs of DDP on the ranks' parts = two epochs of one process on whole batches."""
    from qcore_bench import distributed
    from qcore_bench.data.device import TensorData
    from qcore_bench.data.synthetic import load_synthetic
    from qcore_bench.recipes import Recipe
    from qcore_bench.training import evaluate, kd_loss, make_optimizer, train_epoch

    images = load_synthetic(None, Path("."), n_train=24, n_test=11, num_classes=3, image_size=4)
    data = TensorData(dataclasses.replace(images, crop_padding=1, flip=True), dev)
    indices = torch.arange(1, 23)  # 22 samples in batches of 5: 5, 5, 5, 5, 2; parts of 3 and 2, then 1 and 1
    weights = torch.linspace(0.5, 1.5, len(indices))
    one = Flat(16, 3)
    many = distributed.data_parallel(copy.deepcopy(one), dev)
    teacher = Flat(16, 3, seed=1)

    def distill(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, teacher(x), 2.0)

    def by_hand(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reference's distillation loss, written out: T^2 x soft cross-entropy at T = 2."""
        soft = torch.softmax(teacher(x) / 2.0, dim=1)
        return -(soft * torch.log_softmax(logits / 2.0, dim=1)).sum(dim=1) * 4.0

    def epoch(model: nn.Module, shard: distributed.Shard, e: int, loss=None) -> float:
        opt = make_optimizer(getattr(model, "module", model), Recipe(lr=0.1))
        return train_epoch(model, opt, data, images.train_y, indices, batch_size=5, augmented=True,
                           generator=torch.Generator().manual_seed(e), weights=weights, shard=shard,
                           per_sample_loss=loss if e == 1 else None)

    for e in range(2):  # weighted cross-entropy, then weighted distillation: one process by hand, two with kd_loss
        loss_one, loss_many = epoch(one, distributed.Shard(), e, by_hand), epoch(many, shard, e, distill)
        assert abs(loss_one - loss_many) < 1e-6, (e, loss_one, loss_many)
        for p, q in zip(one.parameters(), many.module.parameters()):
            assert torch.allclose(p, q, atol=1e-6), (e, p, q)

    acc_one, loss_one = evaluate(one, data, 4)
    acc_sharded, loss_sharded = evaluate(one, data, 4, shard=shard)  # 11 test images: blocks of 6 and 5
    assert acc_one == acc_sharded and abs(loss_one - loss_sharded) < 1e-6, (loss_one, loss_sharded)


def mechanics() -> dict:
    from qcore_bench import distributed

    cpu = torch.device("cpu")
    with distributed.process_group(cpu) as dev:
        shard = distributed.shard()
        assert shard.world == 2 and dev == cpu
        check_collectives(shard)
        check_training(shard, dev)
    return {"ok": True}


def cell(args: list[str]) -> dict:
    """``qcore-bench`` with ``args``, recording what this rank selected and wrote."""
    from qcore_bench.tasks import classification
    from qcore_bench.cli import main
    from qcore_bench.store import Store

    record: dict = {"selections": [], "finish": 0, "save_checkpoint": 0}
    validate = classification.validate_selection

    def recording_validate(*a, **k):
        sel = validate(*a, **k)
        record["selections"].append(sel.indices.tolist())
        return sel

    def counting(name: str):
        method = getattr(Store, name)

        def counted(self, *a, **k):
            record[name] += 1
            return method(self, *a, **k)
        return counted

    classification.validate_selection = recording_validate
    Store.finish, Store.save_checkpoint = counting("finish"), counting("save_checkpoint")
    try:
        main(args)
    except SystemExit as exc:
        record["exit"] = exc.code
    return record


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    result = mechanics() if mode == "mechanics" else cell(sys.argv[3:])
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    sys.exit(result.get("exit") or 0)
