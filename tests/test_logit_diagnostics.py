import json
import math

import numpy as np
import pytest
from conftest import tiny_cfg

from balms_det.engine.logit_diagnostics import (
    diagnostics_group_means,
    diagnostics_rows,
    gt_roi_logits,
    logit_diagnostics,
    num_unseparated,
)

# Two classes, four ROIs (hand computation in the comments).
Z = [[3.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 4.0]]
Y = [0, 0, 1, 1]


def test_hand_computed_values():
    d = logit_diagnostics(Z, Y)
    # class 0: own mean (3 + 1) / 2 = 2, others' mean (0 + 2) / 2 = 1 -> m = 1
    # class 1: own mean (2 + 4) / 2 = 3, others' mean (1 + 0) / 2 = 0.5 -> m = 2.5
    np.testing.assert_allclose(d["magnitude_raw"], [1.0, 2.5])
    np.testing.assert_allclose(d["logits_magnitude"], [1.0 / 3.5, 2.5 / 3.5])
    # population std of (3, 1) = 1 -> 1 / 1; of (2, 4) = 1 -> 1 / 2.5
    np.testing.assert_allclose(d["regularized_std"], [1.0, 0.4])
    np.testing.assert_array_equal(d["num_samples"], [2, 2])


def test_scale_invariance_and_undefined_classes():
    z = np.array(Z + [[5.0, -1.0]])
    y = np.array(Y + [0])
    z3 = np.concatenate([z, np.zeros((len(z), 1))], axis=1)  # class 2 has no sample
    a, b = logit_diagnostics(z3, y), logit_diagnostics(3.0 * z3, y)
    for k in ("logits_magnitude", "regularized_std"):
        np.testing.assert_allclose(a[k][:2], b[k][:2])
        assert math.isnan(a[k][2])
    # the 1-norm is over the classes with samples only
    assert abs(np.nansum(np.abs(a["logits_magnitude"])) - 1.0) < 1e-12
    # one sample: magnitude defined, RSD not
    d = logit_diagnostics([[1.0, 0.0], [0.0, 1.0], [0.5, 2.0]], [0, 1, 1])
    assert math.isfinite(d["logits_magnitude"][0]) and math.isnan(d["regularized_std"][0])


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        logit_diagnostics(Z, [0, 0, 1, 2])
    with pytest.raises(ValueError, match="do not match"):
        logit_diagnostics(Z, [0, 1])


def test_rows_and_group_means():
    d = logit_diagnostics(Z, Y)
    rows = diagnostics_rows(d, [3, 500], names=["a", "b"])
    assert [r["group"] for r in rows] == ["r", "f"]
    m = diagnostics_group_means(rows, "regularized_std", np.mean)
    assert m["r"] == pytest.approx(1.0) and m["f"] == pytest.approx(0.4)
    assert m["all"] == pytest.approx(0.7) and math.isnan(m["c"])
    assert diagnostics_group_means(rows + rows[:1], "regularized_std")["all"] == 1.0  # median
    assert num_unseparated(rows) == dict(r=0, c=0, f=0, all=0)


def test_unseparated_class_has_no_rsd():
    # class 1 scores higher on class-0 samples (5, 3) than on its own (1, 0): m_1 = -3.5
    d = logit_diagnostics([[2.0, 5.0], [1.0, 3.0], [0.0, 1.0], [1.0, 0.0]], Y)
    assert d["magnitude_raw"][1] == pytest.approx(-3.5) and math.isnan(d["regularized_std"][1])
    rows = diagnostics_rows(d, [5, 5])
    assert num_unseparated(rows)["r"] == 1
    json.dumps(rows)  # NaN-free (None) for the JSON table


def test_gt_roi_logits_one_roi_per_box_and_batch_invariant(seeded):
    from detectron2.data import DatasetCatalog

    from balms_det.engine.trainer import BalmsTrainer

    cfg = tiny_cfg()
    model = BalmsTrainer.build_model(cfg)
    dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:6]
    expected = [a["category_id"] for d in dicts for a in d["annotations"] if not a.get("iscrowd")]
    z1, y1 = gt_roi_logits(model, dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, 1)
    z4, y4 = gt_roi_logits(model, dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, 4)
    assert z1.shape == (len(expected), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    assert y1.tolist() == expected == y4.tolist()
    # boxes pooled from the right image of a batch: the same logits one image at a time
    np.testing.assert_allclose(z1, z4, rtol=1e-4, atol=1e-4)
    assert model.training  # the mode is restored


def test_bench_diagnostics_on_a_run_folder(tmp_path, monkeypatch, seeded):
    """benchmarks/bench_diagnostics.py on a run folder laid out as tools/train_net.py leaves it
    (config.yaml, model_final.pth, inference/<dataset>/lvis_metrics.json)."""
    import importlib.util
    import os
    import sys

    from conftest import REPO
    from detectron2.checkpoint import DetectionCheckpointer

    from balms_det.engine.trainer import BalmsTrainer

    run = tmp_path / "softmax" / "seed0"
    cfg = tiny_cfg(output_dir=run)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(BalmsTrainer.build_model(cfg), save_dir=str(run)).save("model_final")
    metrics = run / "inference" / cfg.DATASETS.TEST[0] / "lvis_metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"segm": {"AP": 12.5, "APr": 2.5}}))
    spec = importlib.util.spec_from_file_location(
        "bench_diagnostics", os.path.join(REPO, "benchmarks", "bench_diagnostics.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["x", "--out", str(tmp_path), "--methods", "softmax", "--report", "diag"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    per_run = json.loads(
        (tmp_path / "diagnostics/softmax/seed0/logit_diagnostics.json").read_text()
    )
    assert per_run["num_rois"] == sum(r["num_samples"] for r in per_run["per_class"]) > 0
    table = json.loads((tmp_path / "diag.json").read_text())["table"]["softmax"]
    assert (table["APr"], table["AP"]) == (2.5, 12.5)
    assert (tmp_path / "diag.png").stat().st_size > 0
    assert "| softmax | 2.50 | 12.50 |" in (tmp_path / "diag.md").read_text()
