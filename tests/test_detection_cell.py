"""A detection cell end to end (shapes, a few images, one epoch), and the suites detection refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from qcore_bench.cli import main
from qcore_bench.store import Store

TINY_DETECTION = {
    "name": "tiny_det",
    "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "optimizer": "adam", "weight_decay": 0.0},
    "teacher": {"epochs": 1, "batch_size": 4, "lr": 0.001, "optimizer": "adam", "weight_decay": 0.0},
    "eval_batch_size": 8,
    "grid": {
        "dataset": {"name": "shapes", "params": {"n_train": 12, "n_test": 4, "image_size": 48}},
        "model": {"name": "retinanet_small", "params": {"width": 8, "fpn_width": 16}},
        "bits": ["4/4"],
        "fraction": [0.5],
        "noise": [0.25],
        "method": ["full", "acs", {"name": "unc", "selector": "uncertainty", "params": {"proxy_epochs": 1}}],
    },
}


def write(path: Path, **changes: object) -> Path:
    suite = json.loads(json.dumps(TINY_DETECTION))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            suite[section][field] = value
        else:
            suite[section] = value
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_tiny_detection_cell_runs_end_to_end_and_tables_show_map(tmp_path: Path) -> None:
    suite, results = write(tmp_path / "s.yaml"), tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    runs = {r["config"]["method"]["name"]: r for r in Store(results).records()}
    assert set(runs) == {"full", "acs", "unc"}
    for name, rec in runs.items():
        res = rec["result"]
        history = [json.loads(line) for line in (results / "runs" / rec["id"] / "history.jsonl").open()]
        assert res["task"] == "detection" and res["final_map"] == history[-1]["test_map"]
        assert 0 <= res["final_map"] <= 100 and {"test_ap50", "test_ap75"} <= set(history[-1])
        assert res["samples_trained"] == (12 if name == "full" else 6)
        assert res["noisy_in_train"] == round(0.25 * res["train_boxes"])  # exact box-class flips
        assert 0 <= res["noisy_boxes_selected_frac_mean"] <= res["noisy_selected_frac_mean"] <= 1
        assert res["quant_policy"]["w_bits"] == 4 and res["teacher"]["test_map"] >= 0
    assert runs["acs"]["result"]["selection_metrics"][0]["acs_beta"] == 1.0
    assert runs["unc"]["result"]["proxy"]["runs"] == 1
    table = CliRunner().invoke(main, ["table", "--results", str(results), "--out", str(tmp_path / "t")])
    assert table.exit_code == 0, table.output
    assert "metric mAP" in table.output and "mAP@[.5:.95]" in table.output
    assert (tmp_path / "t" / "tables.md").is_file()
    strip = tmp_path / "acs.png"
    drawn = CliRunner().invoke(main, ["picture", runs["acs"]["id"][:6], str(strip), "--results", str(results),
                                      "--images", "2", "--min-score", "0"])
    assert drawn.exit_code == 0, drawn.output
    with Image.open(strip) as img:  # two 48-px test images drawn 3x, 4 px apart
        assert img.size == (2 * 48 * 3 + 4, 48 * 3) and img.getextrema() != ((0, 0),) * 3
    (results / "runs" / runs["acs"]["id"] / "ckpt.pt").unlink()  # as in a committed store
    again = CliRunner().invoke(main, ["picture", runs["acs"]["id"], str(strip), "--results", str(results)])
    assert again.exit_code == 2 and "has no checkpoint" in again.output and again.output.count("\n") == 1


def test_picture_refuses_what_it_cannot_draw_in_one_line(tmp_path: Path) -> None:
    quickstart = Path(__file__).resolve().parents[1] / "results" / "quickstart"
    cid = sorted(p.name for p in (quickstart / "runs").iterdir())[0]
    for results, cell, needle in ((quickstart, cid, f"cell {cid} is a classification cell"),
                                  (quickstart, "zzz", "no stored cell has an id starting with 'zzz'"),
                                  (tmp_path, cid, "no runs/ folder")):
        out = CliRunner().invoke(main, ["picture", cell, str(tmp_path / "p.png"), "--results", str(results)])
        assert out.exit_code == 2 and out.output.count("\n") == 1 and needle in out.output, out.output
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("changes, message", [
    ({"grid": {**TINY_DETECTION["grid"], "method": ["glister"]}},
     r"grid\.method\[0\]: selector 'glister' does not support detection \(data set 'shapes'\); selectors for "
     r"detection: .*acs"),
    ({"grid": {**TINY_DETECTION["grid"], "model": "resnet8"}},
     r"grid\.model\[0\]: model 'resnet8' is built for classification, data set 'shapes' \(grid\.dataset\[0\]\) "
     r"is for detection"),
    ({"train__kd": {"enabled": True}}, r"train\.kd\.enabled: distillation is not defined for detection"),
])
def test_what_detection_cannot_do_is_refused_by_validate(tmp_path: Path, changes: dict, message: str) -> None:
    suite = write(tmp_path / "s.yaml", **changes)
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "results")])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), out.output
    assert not (tmp_path / "results").exists()


def test_a_bad_coco_annotation_file_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    grid = {**TINY_DETECTION["grid"], "dataset": {"name": "coco", "root": str(root)}}
    suite = write(tmp_path / "s.yaml", grid=grid)
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "results")])
    assert out.exit_code == 2, out.output
    assert "instances_train2017.json: images: the list is empty" in out.output
    assert not (tmp_path / "results").exists()
