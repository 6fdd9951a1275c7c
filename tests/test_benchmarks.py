"""Smoke runs of the benchmark commands (tiny sizes, one seed) so that they keep working."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_accuracy_benchmark_smoke(tmp_path):
    out = tmp_path / "acc"
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "bench_accuracy.py"),
           "--methods", "softmax", "decoupled_balanced_softmax", "--seeds", "0",
           "--iters", "2", "--train-images", "160", "--classes", "12",
           "--max-images-per-class", "130", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "accuracy.json").read_text())["summary"]
    assert set(summary) == {"softmax", "decoupled_balanced_softmax"}
    for method in summary.values():
        assert set(method) == {"AP", "APr", "APc", "APf", "AP_box", "hmean", "gmean",
                               "train_min"}
        assert len(method["AP"]["runs"]) == 1
    assert "| decoupled_balanced_softmax |" in (out / "accuracy.md").read_text()
    # the decoupled run started from the softmax run of the same seed
    log = (out / "decoupled_balanced_softmax" / "seed0" / "stdout.txt").read_text()
    assert str(out / "softmax" / "seed0" / "model_final.pth") in log


def test_cost_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "bench_cost.py"),
           "--variants", "stock_d2_head", "balanced_softmax", "--steps", "1", "--warmup", "0",
           "--mem-steps", "1", "--pool", "1", "--out", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["stock_d2_head", "balanced_softmax"]
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["median_step_s"] > 0
