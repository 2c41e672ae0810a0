"""Paper scale: the shipped suites, the ImageNet path end to end, published-weight teachers with a
separate distillation teacher, the teacher-output cache, and the CPU-scale CIFAR-10 suite."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_suite
from test_data_paths import make_tree

from qcore_bench import teacher as teacher_module
from qcore_bench.cli import main
from qcore_bench.models import build
from qcore_bench.models.resnet import resnet8, resnet20
from qcore_bench.runner import Runtime, run_cell
from qcore_bench.store import Store
from qcore_bench.suite import SuiteError, expand, load_suite
from qcore_bench.teacher import OutputCache

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted((REPO / "suites").glob("*.yaml"))
CIFAR_JPEG = next((p / "cifar10-jpeg.tar.gz" for p in (Path("/work/shared/data"), REPO.parent / "shared" / "data")
                   if (p / "cifar10-jpeg.tar.gz").is_file()), None)


def records(results: Path) -> dict[str, dict]:
    return {r["config"]["method"]["name"]: r for r in Store(results).records()}


def table_rows(output: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in output.splitlines() if line.startswith("| ")}


def data_root_with_every_layout(root: Path) -> Path:
    """The files the up-front data checks look for, for every data set a shipped suite names (empty
    stand-ins: validate and plan read no image)."""
    for folder, files in (("cifar-10-batches-py", ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]),
                          ("cifar-100-python", ["meta", "train", "test"])):
        (root / folder).mkdir(parents=True)
        for name in files:
            (root / folder / name).touch()
    for tree, splits in (("imagenet", ("train", "val")), ("cifar10-jpeg", ("train", "test"))):
        for split in splits:
            (root / tree / split / "n01").mkdir(parents=True)
            (root / tree / split / "n01" / "0.png").touch()
    instances = {"images": [{"id": 1, "file_name": "1.jpg", "height": 8, "width": 8}],
                 "categories": [{"id": 1, "name": "thing"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16,
                                  "iscrowd": 0}]}
    (root / "coco" / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "coco" / split).mkdir()
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_shipped_suite_validates_and_plans(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = CliRunner().invoke(main, ["validate", str(path)], env={"QCORE_DATA": str(tmp_path / "nothing")})
    needs_data = out.exit_code == 2  # checked before anything runs: one line naming the data set
    names = {c.dataset.name for c in expand(load_suite(path))}
    assert needs_data == bool(names & {"cifar10", "cifar100", "imagenet", "imagefolder", "coco"}), out.output
    if needs_data:
        assert re.fullmatch(rf"error: {re.escape(str(path))}: grid\.dataset: \w+: [^\n]+\n", out.output), out.output
    monkeypatch.setenv("QCORE_DATA", str(data_root_with_every_layout(tmp_path / "data")))
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    cells = int(re.search(r"has (\d+) cells", out.output).group(1))
    assert cells == len(expand(load_suite(path)))
    plan = CliRunner().invoke(main, ["plan", str(path), "--results", str(tmp_path / "r")])
    assert plan.exit_code == 0, plan.output
    assert plan.output.count(" pending\n") == cells and plan.output.endswith(f"\n{cells} cells: 0 done, {cells} pending, 0 failed\n")
    assert path.read_text().startswith("#")  # every suite opens with a comment block saying what it runs


PAPER_SUITES = ("imagenet_fraction_sweep", "cifar100_mobilenetv2", "cifar10_resnet18", "cifar10_label_noise",
                "cifar10_cpu")


def test_paper_suites_hold_the_paper_recipes() -> None:
    for name in PAPER_SUITES:
        text = (REPO / "suites" / f"{name}.yaml").read_text()
        assert "Needs:" in text or "Data:" in text, name  # each says what it needs
    imagenet = load_suite(REPO / "suites" / "imagenet_fraction_sweep.yaml")
    assert (imagenet.train.epochs, imagenet.train.optimizer, imagenet.train.lr, imagenet.train.batch_size) == (
        120, "adam", 1.25e-3, 512)
    assert imagenet.train.kd.enabled and imagenet.train.kd.teacher.name == "resnet101_imagenet"
    assert imagenet.teacher.pretrained and imagenet.quant.policy == "acs_resnet"
    assert imagenet.grid.fraction == [0.1, 0.3, 0.5, 0.6, 0.7, 0.8] and imagenet.grid.bits == ["4/4"]
    mobilenet = load_suite(REPO / "suites" / "cifar100_mobilenetv2.yaml")
    assert mobilenet.grid.model[0].params == {"width": 0.5} and mobilenet.quant.policy == "weight_only_blocks"
    assert (mobilenet.train.epochs, mobilenet.train.lr, mobilenet.train.schedule, len(mobilenet.grid.seed)) == (
        200, 0.01, "linear", 5)
    for suite in (imagenet, mobilenet, load_suite(REPO / "suites" / "cifar10_label_noise.yaml")):
        assert [m.name for m in suite.grid.method] == ["full", "acs", "random", "el2n", "forgetting", "glister",
                                                       "moderate", "random_adaptive"]
        assert next(m for m in suite.grid.method if m.name == "acs").params["every"] == 10


def test_new_keys_at_their_defaults_keep_cell_ids(tmp_path: Path) -> None:
    base = load_suite(write_suite(tmp_path / "a.yaml"))
    ident = expand(base)[0].identity()
    assert "model_params" not in ident and "policy" not in ident["quant"] and "pretrained" not in ident["teacher"]
    assert "teacher" not in ident["train"]["kd"] and "compile" not in ident["train"]
    same = load_suite(write_suite(tmp_path / "b.yaml", model={"name": "resnet8", "params": {}}),
                      ["train.compile=true", "teacher.weights=/somewhere/w.pth"])
    assert [c.id for c in expand(base)] == [c.id for c in expand(same)]
    other = load_suite(write_suite(tmp_path / "c.yaml"), ["quant.policy=acs_resnet"])
    assert not {c.id for c in expand(base)} & {c.id for c in expand(other)}
    assert expand(other)[0].quant.policy == "acs_resnet"


@pytest.mark.parametrize(("overrides", "needle"), [
    (["quant.policy=weight_only_blocks", "grid.bits=['4/4']"], "grid.bits[0]: policy 'weight_only_blocks'"),
    (["grid.model={name: mobilenetv2, params: {widht: 0.5}}"], "grid.model[0].params: unknown parameter 'widht'"),
    (["teacher.pretrained=true"], "grid.model[0]: model 'resnet8' has no published weights"),
    (["train.kd.teacher=resnet1O1_imagenet"], "train.kd.teacher: unknown model 'resnet1O1_imagenet'"),
    (["grid.dataset={name: imagenet, params: {image_sise: 16}}"], "unknown parameter 'image_sise'"),
])
def test_paper_scale_suite_errors_name_the_key(tmp_path: Path, overrides: list[str], needle: str) -> None:
    with pytest.raises(SuiteError, match=re.escape(needle)):
        load_suite(write_suite(tmp_path / "s.yaml"), overrides)


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("imagenet"), [(40, 30), (25, 36), (33, 33)], n_train=8, n_val=4)


def test_imagenet_suite_runs_end_to_end_through_worker_processes(imagenet_tree: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_NUM_WORKERS", "2")
    suite = write_suite(tmp_path / "s.yaml", {"train": {"epochs": 2, "batch_size": 8, "lr": 0.05},
                                              "teacher": {"epochs": 1, "batch_size": 8}},
                        dataset={"name": "imagenet", "root": str(imagenet_tree), "params": {"image_size": 16}},
                        fraction=[0.5], noise=[0.0], method=["full", {"name": "acs", "params": {"every": 1}}])
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    runs = records(results)
    assert set(runs) == {"full", "acs"}
    for name, rec in runs.items():
        res = rec["result"]
        assert res["train_size"] == 24 and res["samples_trained"] == 2 * (24 if name == "full" else 12)
        assert res["quant_policy"]["policy"] == "all" and rec["config"]["quant"]["policy"] == "all"
        assert 0 <= res["final_acc"] <= 100
    assert runs["acs"]["result"]["selections"] == 2
    table = CliRunner().invoke(main, ["table", "--results", str(results), "--out", str(tmp_path / "t")])
    assert table.exit_code == 0 and {"full", "acs"} <= set(table_rows(table.output))


def test_published_teacher_and_a_separate_distillation_teacher(imagenet_tree: Path, tmp_path: Path) -> None:
    """teacher.pretrained loads the DS reference (= the student's start) and the KD teacher from weight
    files instead of training them; both outputs are cached; the KD teacher is another architecture."""
    reference, kd_weights = tmp_path / "resnet8.pth", tmp_path / "resnet20.pth"
    torch.save(build(resnet8, 3, 3, torch.Generator().manual_seed(11)).state_dict(), reference)
    torch.save(build(resnet20, 3, 3, torch.Generator().manual_seed(12)).state_dict(), kd_weights)
    data = {"train": {"epochs": 2, "batch_size": 8, "lr": 0.05,
                      "kd": {"enabled": True, "teacher": "resnet20", "weights": str(kd_weights)}},
            "teacher": {"pretrained": True, "weights": str(reference)}}
    path = write_suite(tmp_path / "s.yaml", data, dataset={"name": "imagenet", "root": str(imagenet_tree),
                                                           "params": {"image_size": 16}},
                       fraction=[0.5], noise=[0.0], method=[{"name": "acs", "params": {"every": 1}}])
    (cell,) = expand(load_suite(path))
    cache = tmp_path / "cache"
    rt = Runtime(torch.device("cpu"), cache, num_workers=0)
    result = run_cell(cell, Store(tmp_path / "r"), rt)
    assert result["teacher"]["samples"] == 0 and result["kd_teacher"]["samples"] == 0  # loaded, not trained
    assert result["teacher"]["key"] != result["kd_teacher"]["key"]
    assert not list((cache / "teachers").glob("*.pt"))
    assert len(list((cache / "teachers").glob("*.json"))) == 2  # their measured test accuracies
    saved = list((cache / "outputs").glob("*.pt"))
    assert len(saved) == 1  # ACS read the DS reference's outputs (the KD teacher's were not asked for)
    outputs = torch.load(saved[0], weights_only=True)
    model = build(resnet8, 3, 3, torch.Generator())
    model.load_state_dict(torch.load(reference, weights_only=True))
    first = model.eval()(torch.zeros(1, 3, 16, 16)).shape
    assert outputs["logits"].shape == (24, first[1]) and outputs["features"].shape == (24, 64)


def test_teacher_outputs_are_computed_once_and_shared_across_cells(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = teacher_module.compute_outputs
    monkeypatch.setattr(teacher_module, "compute_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(OutputCache, "_memory", type(OutputCache._memory)())
    path = write_suite(tmp_path / "s.yaml", {"train": {"epochs": 2, "batch_size": 32},
                                             "teacher": {"epochs": 1, "batch_size": 32}},
                       dataset={"name": "synthetic", "params": {"n_train": 96, "n_test": 32}},
                       fraction=[0.25, 0.5], method=[{"name": "acs", "params": {"every": 1}}])
    cells = expand(load_suite(path))
    rt = Runtime(torch.device("cpu"), tmp_path / "cache")
    first = run_cell(cells[0], Store(tmp_path / "r"), rt)
    assert len(calls) == 1  # two selections, one teacher pass
    OutputCache._memory.clear()  # a new process: the outputs come from disk
    second = run_cell(cells[1], Store(tmp_path / "r"), rt)
    assert len(calls) == 1 and first["teacher"]["key"] == second["teacher"]["key"]
    assert len(list((tmp_path / "cache" / "outputs").glob("*.pt"))) == 1


@pytest.fixture(scope="module")
def cifar_jpeg_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 training and 5 test JPEGs of each CIFAR-10 class, extracted from the shared archive."""
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    want: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEG) as archive:
        for member in archive:
            parts = member.name.lstrip("./").split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            left = want.setdefault(key, 10 if parts[0] == "train" else 5)
            if left > 0:
                archive.extract(member, root, filter="data")
                want[key] -= 1
            if len(want) == 20 and not any(want.values()):
                break
    return root


@pytest.mark.skipif(CIFAR_JPEG is None, reason="needs shared/data/cifar10-jpeg.tar.gz next to the repository")
def test_cpu_suite_shrunk_to_seconds_on_real_cifar10_jpegs(cifar_jpeg_subset: Path, tmp_path: Path) -> None:
    suite = REPO / "suites" / "cifar10_cpu.yaml"
    overrides = [f"grid.dataset.root={cifar_jpeg_subset}", "grid.dataset.params.image_size=16", "train.epochs=2",
                 "teacher.epochs=1", "grid.fraction=[0.3]",
                 "grid.method=[full, acs, random, {name: el2n, params: {proxy_epochs: 2}}, "
                 "{name: forgetting, params: {proxy_epochs: 2}}, {name: glister, params: {proxy_epochs: 1}}, moderate]"]
    results = tmp_path / "results"
    args = ["run", str(suite), "--results", str(results)]
    for item in overrides:
        args += ["--set", item]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    runs = records(results)
    assert len(runs) == 7
    for rec in runs.values():
        res = rec["result"]
        assert res["train_size"] == 100 and res["epochs"] == 2
        assert rec["config"]["dataset"]["params"] == {"max_train": 10000, "max_test": 2000, "image_size": 16}
    table = CliRunner().invoke(main, ["table", "--results", str(results), "--out", str(tmp_path / "t")])
    assert table.exit_code == 0, table.output
    rows = table_rows(table.output)
    assert {"full", "acs", "random", "el2n", "forgetting", "glister", "moderate"} <= set(rows)
    assert "30%" in rows["method"]
    accuracies = [float(x) for x in re.findall(r"(\d+\.\d\d)", rows["acs"])]
    assert accuracies and all(0 <= a <= 100 for a in accuracies)
    suite_text = yaml.safe_load(suite.read_text())
    assert suite_text["grid"]["dataset"]["root"] == "cifar10-jpeg"  # under the data root ($QCORE_DATA)
    assert json.loads((results / "runs" / rec["id"] / "cell.json").read_text())["config"]["dataset"]["root"] == str(
        cifar_jpeg_subset)
