"""benchmarks/gpu.py --tiny: every code path of the GPU evidence script, on a CPU, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_tiny_on_the_cpu_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["tiny"] and report["environment"]["device"] == "cpu"
    measured = [r for r in report["steps"] if "images_per_s" in r]
    assert {r["model"] for r in measured} == {"resnet18", "mobilenetv2_x0.5", "resnet18_imagenet"}
    assert all(r["images_per_s"] > 0 for r in measured)
    assert all(r["lsq_over_fp_time"] > 0 for r in measured if r["bits"] != "32/32" and r["model"] != "resnet18_imagenet")
    assert report["selection"]["acs_over_floor"] > 0 and report["data_path"]["speedup"] > 0
    assert 0 <= report["cell"]["final_acc"] <= 100 and report["cell"]["samples_trained"] == 26  # 10% of 256, 1 epoch
    assert len(report["projections"]) == 3 and all(p["gpu_hours"] > 0 for p in report["projections"])
    assert (out / "gpu.md").read_text().startswith("# GPU evidence (tiny, ")


def test_without_a_gpu_the_full_run_refuses_in_one_line(tmp_path: Path) -> None:
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full run would start")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip() == (
        "error: no GPU here: run with --tiny for a CPU check of the code paths")
