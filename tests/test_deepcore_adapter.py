"""The DeepCore adapter: the glue against a fake DeepCore package, and the real one when importable."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite
from torch import nn

from qcore_bench.cli import main
from qcore_bench.data import apply_label_noise
from qcore_bench.data.augment import normalize
from qcore_bench.data.synthetic import load_synthetic
from qcore_bench.seeding import make_generator
from qcore_bench.selection import SelectionContext, SelectionError, validate_selection
from qcore_bench.selectors.deepcore import DeepCoreError, DeepCoreSelector, available_methods, load_deepcore
from qcore_bench.store import Store
from qcore_bench.suite import SuiteError, expand, load_suite

# A stand-in for DeepCore with the same shape: deepcore.methods re-exports CoresetMethod subclasses.
FAKE = {
    "deepcore/__init__.py": "",
    "deepcore/nets/__init__.py": """
        def MLP(channel, num_classes, im_size, **kwargs): ...
        def ResNet18(channel, num_classes, im_size, **kwargs): ...
    """,
    "deepcore/methods/__init__.py": """
        from .coresetmethod import *
        from .fake import *
    """,
    "deepcore/methods/coresetmethod.py": """
        class CoresetMethod:
            def __init__(self, dst_train, args, fraction=0.5, random_seed=None, **kwargs):
                self.dst_train, self.args, self.fraction, self.random_seed = dst_train, args, fraction, random_seed
    """,
    "deepcore/methods/fake.py": """
        import numpy as np
        import torch
        from .coresetmethod import CoresetMethod

        CALLS = []

        class FakeMethod(CoresetMethod):
            # records what it gets; selects the first k samples of class 0, weighted by knob
            def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                         balance=False, knob=1.0, **kwargs):
                super().__init__(dst_train, args, fraction, random_seed)
                CALLS.append(dict(dataset=dst_train, args=args, fraction=fraction, random_seed=random_seed,
                                  epochs=epochs, specific_model=specific_model, balance=balance, knob=knob,
                                  kwargs=kwargs))
                self.knob = knob

            def select(self, **kwargs):
                torch.manual_seed(self.random_seed)  # DeepCore seeds and draws from the global generators
                np.random.seed(self.random_seed)
                torch.rand(3), np.random.rand(3)
                print("fake DeepCore progress line")
                k = round(self.fraction * len(self.dst_train))
                first = np.arange(len(self.dst_train))[self.dst_train.targets == 0][:k]
                return {"indices": first[::-1], "weights": np.full(len(first), self.knob)}

        class TakesAll(CoresetMethod):
            def select(self, **kwargs):
                return {"indices": np.arange(len(self.dst_train), dtype=np.float64)}

        class Exploding(CoresetMethod):
            def select(self, **kwargs):
                raise RuntimeError("boom")
    """,
}


def _purge() -> None:
    for name in [m for m in sys.modules if m == "deepcore" or m.startswith("deepcore.")]:
        del sys.modules[name]


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No deepcore module imported before or left behind after the test (the real one is put back)."""
    for name in [m for m in sys.modules if m == "deepcore" or m.startswith("deepcore.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    _purge()


def install(root: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
    return root


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: None) -> Any:
    """The fake DeepCore on sys.path; returns its recorded calls."""
    install(tmp_path / "fake", monkeypatch, FAKE)
    return lambda: importlib.import_module("deepcore.methods.fake").CALLS


def make_ctx(*, n: int = 40, shape: tuple[int, ...] = (1, 8, 8), fraction: float = 0.25, balanced: bool = True,
             seed: int = 0, epoch: int = 0) -> tuple[SelectionContext, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, *shape, generator=g)
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]  # 20 per class
    ctx = SelectionContext(epoch=epoch, total_epochs=4, fraction=fraction, labels=labels, num_classes=2,
                           balanced=balanced, student=nn.Identity(), teacher=nn.Identity(), output_fns={},
                           generator=torch.Generator().manual_seed(epoch), device=torch.device("cpu"), seed=seed,
                           images_fn=lambda: images)
    return ctx, images


def test_deepcore_gets_a_dataset_view_and_an_args_namespace(fake: Any) -> None:
    ctx, images = make_ctx()
    DeepCoreSelector("FakeMethod", epochs=3, lr=0.05, batch=16, params={"knob": 2.0}).select(ctx)
    (call,) = fake()
    ds = call["dataset"]
    assert len(ds) == 40 and len(ds.classes) == 2
    assert isinstance(ds.targets, torch.Tensor) and torch.equal(ds.targets, ctx.labels)
    x, y = ds[7]
    assert torch.equal(x, images[7]) and y == int(ctx.labels[7]) and x.shape == (1, 8, 8)
    a = call["args"]
    assert (a.device, a.num_classes, a.channel, tuple(a.im_size)) == ("cpu", 2, 1, (8, 8))
    assert (a.selection_epochs, a.selection_lr, a.selection_batch, a.selection_optimizer) == (3, 0.05, 16, "SGD")
    assert (a.workers, a.gpu, a.model) == (0, None, "MLP")  # DeepCore's ResNet18 is not built for 8x8 images
    assert (call["fraction"], call["epochs"], call["specific_model"], call["balance"], call["knob"]) == \
        (0.25, 3, "MLP", True, 2.0)
    assert call["kwargs"] == {"torchvision_pretrain": False}  # nothing is downloaded unless asked
    assert 0 <= call["random_seed"] < 2**32


def test_model_defaults_to_resnet18_for_cifar_shaped_images_and_balance_follows_the_suite(fake: Any) -> None:
    ctx, _ = make_ctx(shape=(3, 32, 32), balanced=False)
    DeepCoreSelector("FakeMethod").select(ctx)
    DeepCoreSelector("FakeMethod", model="MLP", balance=True).select(ctx)
    first, second = fake()
    assert (first["args"].model, first["specific_model"], first["balance"]) == ("ResNet18", "ResNet18", False)
    assert (second["specific_model"], second["balance"]) == ("MLP", True)


def test_the_selection_is_deepcores_answer(fake: Any) -> None:
    ctx, _ = make_ctx()
    sel = DeepCoreSelector("FakeMethod", params={"knob": 0.5}).select(ctx)
    expected = torch.nonzero(ctx.labels == 0).flatten()[:10]  # first round(0.25 * 40) samples of class 0
    assert sorted(sel.indices.tolist()) == expected.tolist()
    assert sel.indices.dtype == torch.int64 and torch.equal(sel.weights, torch.full((10,), 0.5))
    assert ctx.metrics == {"deepcore_selected": 10.0, "deepcore_budget_gap": 0.0}
    validate_selection(sel, n=40, budget=ctx.budget, name="deepcore:FakeMethod", variable_budget=True)
    assert DeepCoreSelector.variable_budget


def test_global_rng_and_stdout_are_left_alone(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(123)
    np.random.seed(7)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    DeepCoreSelector("FakeMethod").select(make_ctx()[0])
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert "fake DeepCore progress line" not in capsys.readouterr().out


def test_deepcores_seed_comes_from_the_cell_seed_and_the_epoch(fake: Any) -> None:
    for seed, epoch in [(0, 0), (0, 0), (1, 0), (0, 3)]:
        DeepCoreSelector("FakeMethod").select(make_ctx(seed=seed, epoch=epoch)[0])
    seeds = [c["random_seed"] for c in fake()]
    assert seeds[0] == seeds[1] and len({seeds[0], seeds[2], seeds[3]}) == 3


def test_the_unrelated_pypi_package_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       clean_modules: None) -> None:
    install(tmp_path / "pypi", monkeypatch, {"deepcore/__init__.py": "def mean_confidence_interval(x): ...\n"})
    with pytest.raises(DeepCoreError, match=r"not DeepCore: it has no deepcore\.methods.*PyPI package 'deepcore'"):
        load_deepcore()
    with pytest.raises(DeepCoreError, match="not DeepCore"):
        DeepCoreSelector("Uncertainty").select(make_ctx()[0])
    assert available_methods() == []


def test_a_deepcore_without_coresetmethod_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     clean_modules: None) -> None:
    install(tmp_path / "odd", monkeypatch, {"deepcore/__init__.py": "", "deepcore/methods/__init__.py": ""})
    with pytest.raises(DeepCoreError, match=r"no deepcore\.methods\.coresetmethod\.CoresetMethod"):
        load_deepcore()


def test_missing_deepcore_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, clean_modules: None) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "deepcore").exists()])
    with pytest.raises(DeepCoreError, match=r"not importable.*PatrickZH/DeepCore.*PYTHONPATH"):
        DeepCoreSelector("Uncertainty").select(make_ctx()[0])
    assert available_methods() == []


def test_bad_names_and_parameters_are_clear_errors(fake: Any) -> None:
    ctx, _ = make_ctx()
    with pytest.raises(DeepCoreError, match="no method 'FakeMethd'; did you mean 'FakeMethod'"):
        DeepCoreSelector("FakeMethd").select(ctx)
    with pytest.raises(DeepCoreError, match="params.knobb: .* no such argument; did you mean 'knob'"):
        DeepCoreSelector("FakeMethod", params={"knobb": 1}).select(ctx)
    with pytest.raises(DeepCoreError, match="model 'ResNet81' is not a network of deepcore.nets; did you mean"):
        DeepCoreSelector("FakeMethod", model="ResNet81").select(ctx)
    for kwargs, match in [({"method": "Full"}, "built-in selector 'full'"), ({"method": "EarlyTrain"}, "base class"),
                          ({"method": "FakeMethod", "params": {"epochs": 3}}, "use the parameter 'epochs'"),
                          ({"method": "FakeMethod", "epochs": -1}, "epochs must be >= 0"),
                          ({"method": "deepcore:FakeMethod"}, "name of a DeepCore method")]:
        with pytest.raises(ValueError, match=match):
            DeepCoreSelector(**kwargs)


def test_a_size_beyond_deepcores_rounding_and_a_failure_inside_it_are_errors(fake: Any) -> None:
    with pytest.raises(SelectionError, match="TakesAll selected 40 samples for a budget of 10"):
        DeepCoreSelector("TakesAll").select(make_ctx()[0])
    with pytest.raises(DeepCoreError, match="DeepCore Exploding failed: RuntimeError: boom"):
        DeepCoreSelector("Exploding").select(make_ctx()[0])


def test_a_context_without_images_says_so() -> None:
    ctx, _ = make_ctx()
    ctx._images_fn = None
    with pytest.raises(RuntimeError, match="no training images"):
        ctx.train_images()


def test_suites_name_deepcore_methods_and_ls_lists_them(fake: Any, tmp_path: Path) -> None:
    path = write_suite(tmp_path / "s.yaml", method=["deepcore:FakeMethod",
                                                    {"name": "deepcore:TakesAll", "params": {"epochs": 2}}])
    cells = expand(load_suite(path))
    assert {(c.method.name, c.method.selector, tuple(sorted(c.method.params.items()))) for c in cells} == {
        ("deepcore:FakeMethod", "deepcore", (("method", "FakeMethod"),)),
        ("deepcore:TakesAll", "deepcore", (("epochs", 2), ("method", "TakesAll")))}
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0
    with pytest.raises(SuiteError, match="unknown parameter 'epoch'; did you mean 'epochs'"):
        load_suite(write_suite(tmp_path / "bad.yaml", method=[{"name": "deepcore:FakeMethod", "params": {"epoch": 2}}]))
    out = CliRunner().invoke(main, ["ls", "selectors", "deepcore:*"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert [line.split()[0] for line in lines] == ["deepcore:Exploding", "deepcore:FakeMethod", "deepcore:TakesAll"]
    assert all("DeepCore (PYTHONPATH)" in line for line in lines)


def test_a_cell_runs_deepcore_on_the_normalised_training_images(fake: Any, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {"train": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
                        method=["deepcore:FakeMethod"])
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    (call,) = fake()
    (cell,) = expand(load_suite(suite))
    data = load_synthetic(None, tmp_path, n_train=256, n_test=128, num_classes=4)
    noisy, _ = apply_label_noise(data.train_y, 4, cell.noise.kind, cell.noise.rate,
                                 make_generator(cell.seed, "label-noise"))
    assert torch.allclose(call["dataset"].images, normalize(data.train_x, data.mean, data.std).float())
    assert torch.equal(call["dataset"].targets, noisy) and not torch.equal(noisy, data.train_y)
    (rec,) = Store(results).records()
    assert rec["result"]["samples_trained"] == 64  # DeepCore's 64 = the budget of a quarter of 256


def test_real_deepcore_runs_uniform_and_uncertainty(clean_modules: None) -> None:
    """Only with a DeepCore checkout on PYTHONPATH."""
    try:
        load_deepcore()
    except DeepCoreError as exc:
        pytest.skip(str(exc))
    ctx, _ = make_ctx(n=64)
    for selector in (DeepCoreSelector("Uniform"), DeepCoreSelector("Uncertainty", epochs=1, batch=32)):
        sel = selector.select(ctx)
        validate_selection(sel, n=64, budget=ctx.budget, name="real", variable_budget=True)
        assert torch.bincount(ctx.labels[sel.indices], minlength=2).tolist() == [8, 8]
