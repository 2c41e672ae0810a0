"""What the classification loop really trains on, and the numbers it stores about it.

One tiny cell with label noise, an adaptive random selector (two selections), cosine
learning rate and distillation at T=4, run once with its training step observed: every
epoch's trained samples (through ``train_epoch``'s ``on_batch`` hook), every selection,
and the loss of every batch against a hand-written distillation formula. Then each value
a user reads (history lines, ``result.json``) is checked against what was observed.
Beside it, "it learns": full-data QAT on digits far above chance and far above 1% of the data.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from qcore_bench.tasks import classification
from qcore_bench.runner import Runtime, load_data, run_cell
from qcore_bench.store import Store
from qcore_bench.suite import Cell, expand, load_suite
from qcore_bench.training import kd_loss

CPU = torch.device("cpu")
T, HARD, LR, EPOCHS = 4.0, 0.5, 0.05, 4
NOISY_CELL = {
    "name": "loop",
    "train": {"epochs": EPOCHS, "batch_size": 16, "lr": LR, "schedule": "cosine",
              "kd": {"enabled": True, "temperature": T, "hard_weight": HARD}},
    "teacher": {"epochs": 2, "batch_size": 32},
    "grid": {"dataset": {"name": "synthetic", "params": {"n_train": 160, "n_test": 64, "num_classes": 4}},
             "model": "resnet8", "bits": ["2/32"], "fraction": [0.25], "noise": [0.3],
             "method": [{"name": "random_adaptive", "params": {"every": 2}}], "seed": [3]},
}


def one_cell(path: Path, suite: dict) -> Cell:
    path.write_text(yaml.safe_dump(suite))
    (cell,) = expand(load_suite(path))
    return cell


def hand_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float,
            hard: float) -> torch.Tensor:
    """T^2 * soft cross-entropy to the teacher at temperature T, plus ``hard`` x cross-entropy, from exp and log."""
    s, q = student.double() / t, teacher.double() / t
    p_teacher = q.exp() / q.exp().sum(1, keepdim=True)
    log_p_student = s - s.exp().sum(1, keepdim=True).log()
    log_p_hard = student.double() - student.double().exp().sum(1, keepdim=True).log()
    nll = -log_p_hard[torch.arange(len(labels)), labels]
    return -(p_teacher * log_p_student).sum(1) * t * t + hard * nll


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cell run once, with its selections, trained samples and batch losses recorded in order."""
    tmp = tmp_path_factory.mktemp("loop")
    cell = one_cell(tmp / "s.yaml", NOISY_CELL)
    events: list[tuple[str, Any]] = []
    teachers: list[torch.nn.Module] = []
    real_train, real_validate, real_teacher = (classification.train_epoch, classification.validate_selection,
                                               classification.get_teacher)

    def validate(*a: Any, **k: Any) -> Any:
        sel = real_validate(*a, **k)
        events.append(("select", sel.indices.clone()))
        return sel

    def get_teacher(*a: Any, **k: Any) -> Any:
        model, info = real_teacher(*a, **k)
        teachers.append(model)
        return model, info

    def train_epoch(model: Any, opt: Any, data: Any, labels: torch.Tensor, indices: torch.Tensor,
                    **k: Any) -> float:
        seen: list[torch.Tensor] = []
        gaps: list[float] = []
        loss_fn = k["per_sample_loss"]

        def checked_loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            losses = loss_fn(logits, y, x)
            with torch.no_grad():
                want = hand_kd(logits.detach(), teachers[0](x), y, T, HARD)
            gaps.append(float((losses.detach().double() - want).abs().max()))
            return losses

        loss = real_train(model, opt, data, labels, indices, **{**k, "per_sample_loss": checked_loss},
                          on_batch=lambda idx, logits, losses: seen.append(idx.clone()))
        events.append(("train", {"seen": torch.cat(seen), "labels": labels.cpu().clone(), "gaps": gaps}))
        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(classification, "train_epoch", train_epoch)
        mp.setattr(classification, "validate_selection", validate)
        mp.setattr(classification, "get_teacher", get_teacher)
        store = Store(tmp / "results")
        result = run_cell(cell, store, Runtime(CPU, tmp / "cache"))
    clean = load_data(cell.dataset, tmp / "cache").train_y
    epochs, selections, current = [], [], None
    for kind, what in events:
        if kind == "select":
            current = what
            selections.append((len(epochs), what))
        else:
            epochs.append({**what, "selection": current})
    return {"cell": cell, "result": result, "history": store.history(cell.id), "epochs": epochs,
            "selections": selections, "clean": clean}


def test_every_epoch_trains_exactly_the_selected_subset_once(observed: dict) -> None:
    assert [e for e, _ in observed["selections"]] == [0, 2]  # re-drawn every 2 epochs
    first, second = (set(s.tolist()) for _, s in observed["selections"])
    assert first != second and len(first) == len(second) == 40  # 25% of 160
    for epoch in observed["epochs"]:
        seen = Counter(epoch["seen"].tolist())
        assert set(seen) == set(epoch["selection"].tolist()) and set(seen.values()) == {1}
    assert len(observed["epochs"]) == EPOCHS


def test_samples_trained_and_distinct_seen_count_what_was_trained(observed: dict) -> None:
    result, epochs = observed["result"], observed["epochs"]
    assert result["samples_trained"] == sum(len(e["seen"]) for e in epochs) == EPOCHS * 40
    assert result["distinct_samples_seen"] == len(set(torch.cat([e["seen"] for e in epochs]).tolist()))
    assert result["selections"] == 2
    assert [h["selected"] for h in observed["history"] if "selected" in h] == [40, 40]


def test_noisy_share_is_a_hand_count_over_the_selected_subset(observed: dict) -> None:
    clean, labels = observed["clean"], observed["epochs"][0]["labels"]
    wrong = labels != clean
    assert int(wrong.sum()) == observed["result"]["noisy_in_train"] == 48  # 30% of 160
    shares = [float(wrong[s].double().mean()) for _, s in observed["selections"]]
    assert all(abs(s - 0.3) > 0.05 for s in shares)  # unlike the whole set's share: the check can tell them apart
    stored = [h["selected_noisy_frac"] for h in observed["history"] if "selected_noisy_frac" in h]
    assert stored == pytest.approx(shares, abs=1e-12)
    assert observed["result"]["noisy_selected_frac_mean"] == pytest.approx(sum(shares) / 2, abs=1e-12)


def test_the_training_labels_are_the_noisy_ones(observed: dict) -> None:
    """The student trains on the noisy labels the selector saw, the same ones every epoch."""
    labels = [e["labels"] for e in observed["epochs"]]
    assert all(torch.equal(labels[0], other) for other in labels[1:])
    assert not torch.equal(labels[0], observed["clean"])


def test_every_epoch_lr_follows_the_cosine_schedule(observed: dict) -> None:
    lrs = [h["lr"] for h in observed["history"]]
    assert lrs == pytest.approx([LR * 0.5 * (1 + math.cos(math.pi * e / EPOCHS)) for e in range(EPOCHS)], rel=1e-12)
    assert lrs[-1] < lrs[0] / 5  # decays: a constant schedule would be caught


def test_the_training_loss_is_distillation_at_temperature_t_times_t_squared_plus_hard_labels(observed: dict) -> None:
    gaps = [g for e in observed["epochs"] for g in e["gaps"]]
    assert len(gaps) == EPOCHS * 3  # 40 samples in batches of 16
    assert max(gaps) < 1e-4, max(gaps)


def test_kd_loss_matches_the_hand_written_formula_at_several_temperatures() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    labels = torch.zeros(6, dtype=torch.long)
    for t in (1.0, 2.0, 4.0):
        assert torch.allclose(kd_loss(student, teacher, t).double(), hand_kd(student, teacher, labels, t, 0.0),
                              atol=1e-5), t
    # the temperature matters: at T=4 the soft loss is not the T=1 loss
    assert not torch.allclose(kd_loss(student, teacher, 4.0), kd_loss(student, teacher, 1.0), atol=1e-2)
    # identical logits: the loss is T^2 times the teacher's entropy at T
    p = F.softmax(teacher / 4.0, dim=1)
    entropy = -(p * p.log()).sum(1)
    assert torch.allclose(kd_loss(teacher, teacher, 4.0), 16.0 * entropy, atol=1e-5)


LEARNS = {
    "name": "learns",
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.02},
    "teacher": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "grid": {"dataset": "digits", "model": "resnet8", "bits": ["2/32"], "fraction": [0.01],
             "method": ["full", "random"], "seed": [0]},
}


def test_qat_learns_digits_and_full_data_beats_one_percent(tmp_path: Path) -> None:
    path = tmp_path / "learns.yaml"
    path.write_text(yaml.safe_dump(LEARNS))
    store, rt = Store(tmp_path / "results"), Runtime(CPU, tmp_path / "cache")
    acc = {c.method.name: run_cell(c, store, rt) for c in expand(load_suite(path))}
    full, few = acc["full"], acc["random"]
    assert few["samples_trained"] == 3 * 14 and full["samples_trained"] == 3 * 1438
    assert full["final_acc"] > 90.0  # chance is 10%
    assert full["final_acc"] > full["teacher"]["test_acc"] + 3  # QAT itself improved on the 2-epoch start
    assert full["final_acc"] > few["final_acc"] + 20, (full["final_acc"], few["final_acc"])
