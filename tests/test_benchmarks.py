"""Smoke runs of the benchmark commands (tiny sizes, one seed) so that they keep working."""

import argparse
import importlib.util
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import pytest
from conftest import REPO


def test_accuracy_benchmark_smoke(tmp_path):
    out = tmp_path / "acc"
    cmd = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "bench_accuracy.py"),
        "--methods",
        "softmax",
        "decoupled_balanced_softmax",
        "btm",
        "--seeds",
        "0",
        "--iters",
        "2",
        "--btm-iters",
        "1",
        "--train-images",
        "160",
        "--classes",
        "12",
        "--max-images-per-class",
        "130",
        # 2 validation instances per class: inference of an untrained model is the bulk
        "--val-instances-per-class",
        "2",
        "--out",
        str(out),
        # config overrides pass through to every run (an untrained model's 100 detections
        # per image would make inference the bulk of the smoke test)
        "TEST.DETECTIONS_PER_IMAGE",
        "10",
        "BALMS.BTM.NUM_SUBSETS",
        "1",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "accuracy.json").read_text())["summary"]
    assert set(summary) == {"softmax", "decoupled_balanced_softmax", "btm"}
    for method in summary.values():
        assert set(method) == {"AP", "APr", "APc", "APf", "AP_box", "hmean", "gmean", "train_min"}
        assert len(method["AP"]["runs"]) == 1
    assert "| decoupled_balanced_softmax |" in (out / "accuracy.md").read_text()
    # the passed-through key reached the run (a method's own overrides: the test below)
    cfg = (out / "decoupled_balanced_softmax" / "seed0" / "config.yaml").read_text()
    assert "LOSS: balanced_softmax" in cfg and "DETECTIONS_PER_IMAGE: 10" in cfg
    # the decoupled run started from the softmax run of the same seed
    log = (out / "decoupled_balanced_softmax" / "seed0" / "stdout.txt").read_text()
    assert str(out / "softmax" / "seed0" / "model_final.pth") in log
    # btm: 1 fine-tune per subset (1, from the passed-through override) and stage 2, from the
    # same stage-1 model, evaluated
    btm = out / "btm" / "seed0"
    assert (
        btm / "eval" / "btm+stage2" / "inference" / "synth_lt_val" / "lvis_metrics.json"
    ).exists()
    assert sorted(p.name for p in btm.glob("finetune_*")) == ["finetune_0"]
    assert str(out / "softmax" / "seed0" / "model_final.pth") in (btm / "stdout.txt").read_text()


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "benchmarks", f"{name}.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_training_time_adds_every_training(tmp_path):
    bench = _load_bench("bench_accuracy")
    args = argparse.Namespace(out=str(tmp_path))
    metrics = {"segm": {"AP": 0.5, "APr": 0.25}, "bbox": {"AP": 0.4}}
    logs = {
        "softmax": ["0:04:10"],
        "btm": ["0:00:40", "0:00:41", "0:00:39", "0:01:00"],
        "decoupled_los": ["0:00:30"],
    }
    for method, times in logs.items():
        d = tmp_path / method / "seed3"
        d.mkdir(parents=True)
        (d / "log.txt").write_text(
            "".join(
                f"[11/22 18:48:12] d2.engine.hooks INFO: Total training time: {t} (0:00:00 on "
                "hooks)\n"
                for t in times
            )
        )
        m = pathlib.Path(bench.metrics_path(str(d), method))
        m.parent.mkdir(parents=True)
        m.write_text(json.dumps(metrics))
    assert bench.collect(args, "softmax", 3)["train_min"] == 250 / 60
    assert bench.collect(args, "decoupled_los", 3)["train_min"] == (250 + 30) / 60
    row = bench.collect(args, "btm", 3)  # stage 1 + 3 fine-tunes + stage 2
    assert row["train_min"] == (250 + 40 + 41 + 39 + 60) / 60
    assert (row["AP"], row["APr"], row["AP_box"]) == (0.5, 0.25, 0.4)
    assert math.isnan(row["APc"])


def test_cost_benchmark_smoke(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "bench_cost.py"),
        "--variants",
        "stock_d2_head",
        "balanced_softmax",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--mem-steps",
        "1",
        "--pool",
        "1",
        "--out",
        str(tmp_path),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["stock_d2_head", "balanced_softmax"]
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["median_step_s"] > 0


def test_cost_benchmark_takes_a_config_and_a_class_count():
    """The LVIS recipe's variants: each sets its own loss, hook and trainable parameters over
    the given config (whose META.ENABLED is True); the sweep names give PERIOD and meta batch;
    the class count reaches the head and the generated synthetic set."""
    from balms_det.engine.trainer import setup_cfg

    bench = _load_bench("bench_cost")
    lvis = os.path.join(REPO, "configs", "lvis", "stage2_balms_meta_r50.yaml")
    common = bench.class_count_opts(1203) + ["SOLVER.IMS_PER_BATCH", "2"]
    plain = setup_cfg(
        lvis, bench.variant_opts("stage2_classifier_only", "balanced_sigmoid") + common
    )
    assert not plain.BALMS.META.ENABLED and plain.BALMS.TRAINABLE_PARAMS == ["cls_score"]
    assert plain.MODEL.ROI_BOX_HEAD.BALMS.LOSS == "balanced_sigmoid"
    assert plain.MODEL.ROI_HEADS.NUM_CLASSES == plain.BALMS.SYNTHETIC.NUM_CLASSES == 1203
    assert plain.DATASETS.TRAIN == ("synth_lt_train",) and plain.MODEL.RESNETS.DEPTH == 50
    # 50 down to 1 images per class fit in the generated images (6 objects each at most)
    from balms_det.data.synthetic import SyntheticLTConfig, class_image_counts

    syn = plain.BALMS.SYNTHETIC
    params = SyntheticLTConfig(
        num_classes=1203,
        num_train_images=syn.NUM_TRAIN_IMAGES,
        max_images_per_class=syn.MAX_IMAGES_PER_CLASS,
        min_images_per_class=syn.MIN_IMAGES_PER_CLASS,
    )
    assert sum(class_image_counts(params)) <= 6 * syn.NUM_TRAIN_IMAGES
    sweep = setup_cfg(lvis, bench.variant_opts("stage2_meta_p4_m1", "balanced_sigmoid") + common)
    meta = sweep.BALMS.META
    assert (meta.ENABLED, meta.PERIOD, meta.IMS_PER_BATCH) == (True, 4, 1)
    assert meta.META_LOSS == "balanced" and sweep.BALMS.TRAINABLE_PARAMS == ["cls_score"]
    full = setup_cfg(lvis, bench.variant_opts("meta_p2_m3") + common)
    assert full.BALMS.TRAINABLE_PARAMS == [] and full.BALMS.META.PERIOD == 2
    assert full.MODEL.ROI_BOX_HEAD.BALMS.LOSS == "balanced_softmax"
    with pytest.raises(SystemExit, match="unknown variant 'meta_p2'"):
        bench.variant_opts("meta_p2")


@pytest.mark.parametrize(
    "method, expect",
    [
        ("seesaw", ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", "seesaw"]),
        ("balanced_softmax_rfs_sampler_prior", ["MODEL.ROI_BOX_HEAD.BALMS.PRIOR", "sampler"]),
    ],
)
def test_accuracy_run_command_has_the_method_and_user_overrides(
    tmp_path, monkeypatch, method, expect
):
    """The command a method runs: its config, its own overrides, then the user's (last wins)."""
    bench = _load_bench("bench_accuracy")
    cmds = []

    def fake_subprocess_run(cmd, cwd, stdout, stderr):
        cmds.append(cmd)
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        path = pathlib.Path(bench.metrics_path(out, method))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        return argparse.Namespace(returncode=0)

    monkeypatch.setattr(bench.subprocess, "run", fake_subprocess_run)
    args = argparse.Namespace(
        out=str(tmp_path),
        device="cpu",
        train_images=160,
        classes=12,
        data_seed=0,
        max_images_per_class=130,
        val_instances_per_class=2,
        dets_per_image=100,
        image_size=0,
        iters=2,
        num_gpus=1,
        opts=["TEST.DETECTIONS_PER_IMAGE", "10"],
    )
    bench.run_method(args, method, 0)
    (cmd,) = cmds
    i = next(k for k in range(len(cmd) - 1) if cmd[k : k + 2] == expect)
    assert cmd[cmd.index("--config-file") + 1].endswith(bench.METHODS[method][0])
    assert cmd.index("TEST.DETECTIONS_PER_IMAGE", cmd.index("SEED")) > i  # user's after


def test_accuracy_failed_method_is_reported_and_the_rest_goes_on(tmp_path, monkeypatch):
    bench = _load_bench("bench_accuracy")
    ran = []

    def fake_run(args, method, seed):
        ran.append((method, seed))
        if method == "sigmoid":
            raise SystemExit(f"[bench] {method} seed {seed} failed; see x/stdout.txt")
        return str(tmp_path)

    row = dict(AP=1.0, APr=2.0, APc=3.0, APf=4.0, AP_box=5.0, hmean=6.0, gmean=7.0, train_min=8.0)
    monkeypatch.setattr(bench, "run_method", fake_run)
    monkeypatch.setattr(bench, "collect", lambda args, method, seed: dict(row))
    methods = ["sigmoid", "decoupled_balanced_sigmoid", "softmax"]
    monkeypatch.setattr(
        sys, "argv", ["bench", "--methods", *methods, "--seeds", "0", "1", "--out", str(tmp_path)]
    )
    with pytest.raises(SystemExit, match="2 method"):
        bench.main()
    # the sigmoid failure stops its seeds and skips its dependant, softmax still runs
    assert ran == [("sigmoid", 0), ("softmax", 0), ("softmax", 1)]
    out = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(out["summary"]) == {"softmax"}
    assert out["summary"]["softmax"]["APr"]["runs"] == [2.0, 2.0]
    assert set(out["failed"]) == {"sigmoid", "decoupled_balanced_sigmoid"}
    md = (tmp_path / "accuracy.md").read_text()
    assert "Failed: sigmoid" in md and "its stage 1 (sigmoid) failed" in md


def test_paired_interval_hand_computed():
    bench = _load_bench("bench_accuracy")
    # diffs 1, 2, 3: mean 2, sample std 1, t(0.975, 2) = 4.303 -> 2 +- 4.303 / sqrt(3)
    mean, lo, hi = bench.paired_interval([1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert bench.t975(47) == 2.021 and bench.t975(16) == 2.120  # largest tabulated df <= df
    assert math.isnan(bench.paired_interval([1.0])[1])


def test_paired_differences_pair_by_seed_and_mark_resolved_gains():
    bench = _load_bench("bench_accuracy")
    rows = {
        "softmax": [dict(APr=1.0, AP=10.0, gmean=3.0), dict(APr=5.0, AP=12.0, gmean=4.0)],
        "softmax_rfs": [dict(APr=2.0, AP=9.0, gmean=3.5), dict(APr=6.1, AP=12.5, gmean=4.0)],
        "x": [dict(APr=3.0, AP=10.0, gmean=3.0), dict(APr=7.2, AP=13.0, gmean=4.0)],
    }
    p = bench.paired_differences(rows)
    # x - softmax per seed: APr (2.0, 2.2): mean 2.1, std 0.1414, t(1) = 12.706
    v = p["softmax"]["x"]["APr"]
    assert v["diffs"] == pytest.approx([2.0, 2.2])
    half = 12.706 * statistics.stdev([2.0, 2.2]) / math.sqrt(2)
    assert (v["low"], v["high"]) == pytest.approx((2.1 - half, 2.1 + half))
    assert set(p["softmax"]) == {"softmax_rfs", "x"} and set(p["softmax_rfs"]) == {"x"}
    md = bench.paired_markdown(p)
    # a gain whose interval excludes 0 is starred, one that does not is not
    x_row = next(line for line in md.splitlines() if line.startswith("| x |"))
    apr, ap, gmean = (c.strip() for c in x_row.split("|")[2:5])
    assert apr.startswith("+2.10 [") and apr.endswith("*")  # [0.83, 3.37]
    assert ap.startswith("+0.50 [") and not ap.endswith("*")  # diffs 0, 1: [-5.85, 6.85]
    assert gmean == "+0.00 [+0.00, +0.00]"  # no difference at all


def test_per_class_differences_from_the_per_class_tables(tmp_path):
    bench = _load_bench("bench_accuracy")
    args = argparse.Namespace(out=str(tmp_path), seeds=[0, 1])
    ap = {  # (group, AP) of 3 classes per method and seed
        "softmax": [[("r", 0.0), ("r", 10.0), ("f", 50.0)], [("r", 2.0), ("r", 8.0), ("f", 52.0)]],
        "x": [[("r", 4.0), ("r", 12.0), ("f", 50.0)], [("r", 6.0), ("r", 14.0), ("f", 51.0)]],
    }
    for method, seeds in ap.items():
        for s, classes in enumerate(seeds):
            d = pathlib.Path(bench.metrics_path(bench.run_dir(str(tmp_path), method, s), method))
            d.parent.mkdir(parents=True)
            rows = [dict(category_id=i + 1, group=g, AP_segm=a) for i, (g, a) in enumerate(classes)]
            (d.parent / "per_class_ap.json").write_text(json.dumps(rows))
    out = bench.per_class_differences(args, ["softmax", "x"], ["softmax", "softmax_rfs"])
    assert set(out) == {"softmax"}  # softmax_rfs did not run
    # per class, mean over seeds: r (4, 4) -> 4, (2, 6) -> 4; f (0, -1) -> -0.5
    r, a = out["softmax"]["x"]["APr"], out["softmax"]["x"]["AP"]
    assert r["classes"] == 2 and r["mean"] == pytest.approx(4.0)
    assert r["low"] == pytest.approx(4.0) and r["high"] == pytest.approx(4.0)  # no spread
    assert a["classes"] == 3 and a["mean"] == pytest.approx(7.5 / 3)


def test_method_groups_expand_in_order_once():
    bench = _load_bench("bench_accuracy")
    got = bench.expand_methods(["softmax", "los_sweep", "decoupled_softmax"])
    assert got[:2] == ["softmax", "decoupled_softmax"]  # the sweep's control, once
    assert got[2:4] == ["decoupled_los_d0.1", "decoupled_los_d0.1_fg"]
    assert len(got) == 2 + 2 * len(bench.LOS_DELTAS)
    assert all(m in bench.METHODS for g in bench.METHOD_GROUPS.values() for m in g)
    # every stage 1 of the main table is in it (its decoupled rows start from them)
    main = bench.METHOD_GROUPS["main"]
    assert all(bench.METHODS[m][2] in main for m in main if bench.METHODS[m][2])


def test_recommendations_name_the_best_with_paired_intervals():
    bench = _load_bench("bench_accuracy")

    def runs(aprs, aps, gmeans, minutes):
        rest = dict(APc=0.0, APf=0.0, AP_box=0.0, hmean=0.0, train_min=minutes)
        return [dict(APr=r, AP=a, gmean=g, **rest) for r, a, g in zip(aprs, aps, gmeans)]

    rows = {
        "softmax": runs([1.0, 2.0, 3.0], [30.0, 31.0, 32.0], [5.0, 5.0, 5.0], 3.0),
        "softmax_rfs": runs([3.0, 4.0, 5.5], [30.0, 30.0, 31.0], [6.0, 6.0, 6.0], 3.0),
        "slow": runs([5.0, 3.5, 6.5], [31.0, 32.0, 33.0], [5.5, 5.5, 5.5], 9.0),
    }
    recs = {r["question"]: r for r in bench.recommendations(rows)}
    best_apr = recs["best APr"]
    assert best_apr["method"] == "slow"
    # slow - softmax_rfs per seed: 2, -0.5, 1 -> mean 0.8333, interval includes 0 (a tie)
    v = best_apr["vs"]["softmax_rfs"]
    half = 4.303 * statistics.stdev([2.0, -0.5, 1.0]) / math.sqrt(3)
    mean = 2.5 / 3
    assert (v["mean"], v["low"], v["high"]) == pytest.approx((mean, mean - half, mean + half))
    assert v["text"] == "+0.83 [%+.2f, %+.2f]" % (mean - half, mean + half)
    # slow - softmax: 4, 1.5, 3.5: [-0.29, +6.29], not resolved either
    assert best_apr["vs"]["softmax"]["text"] == "+3.00 [-0.29, +6.29]"
    assert recs["best AP"]["method"] == "slow" and recs["best gmean"]["method"] == "softmax_rfs"
    assert recs["best AP"]["vs"]["softmax"]["text"] == "+1.00 [+1.00, +1.00] *"
    # only softmax_rfs beats softmax on APr with an interval above 0 (2, 2, 2.5)
    assert recs["cheapest resolved APr gain over softmax"]["method"] == "softmax_rfs"
    md = bench.recommendations_markdown(list(recs.values()), bench.summarize(rows))
    assert "| best APr | slow | APr 5.00 ± 1.50 | 9.0 |" in md
    # no gain resolved: the row says so
    same = {"softmax": rows["softmax"], "x": rows["softmax"]}
    last = bench.recommendations(same)[-1]
    assert last["method"] is None
    assert "| none |" in bench.recommendations_markdown([last], bench.summarize(same))
