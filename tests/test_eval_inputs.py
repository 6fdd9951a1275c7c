"""Bad numbers are errors that name the detection and the file (engine and offline tool);
a category with ground truth but no detection; evaluation without torch / Detectron2."""

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from eval_cases import _rle_str, make_dataset, make_results
from test_fast_lvis import _write

from balms_det.evaluation.lvis_compat import run_lvis_api
from balms_det.evaluation.offline import evaluate_detections_file
from balms_det.lvis_eval import LVISInputError, evaluate_lvis

pytestmark = pytest.mark.torch_free
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    path = os.path.join(REPO, "tools", "evaluate_detections.py")
    spec = importlib.util.spec_from_file_location("evaluate_detections", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data():
    ds = make_dataset(60, n_img=8)
    res = make_results(ds, 61, dets_per_img=(5, 9))
    return ds, res


def _relevant(ds, res):
    """Index of a detection of a category with ground truth in its image."""
    pos = {(a["image_id"], a["category_id"]) for a in ds["annotations"]}
    return next(i for i, r in enumerate(res) if (r["image_id"], r["category_id"]) in pos)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_score_names_the_detection(tmp_path, data, bad):
    ds, res = data
    res = copy.deepcopy(res)
    i = len(res) - 3
    res[i]["score"] = bad
    r = res[i]
    name = re.escape(f"#{i} (image_id {r['image_id']}, category_id {r['category_id']})")
    kind = "NaN" if bad != bad else "infinite"
    with pytest.raises(LVISInputError, match=rf"detection {name}: score is {kind}"):
        evaluate_lvis(ds, res, "bbox")
    path = tmp_path / "nan_scores.json"
    path.write_text(json.dumps(res))  # Python writes NaN / Infinity literals
    gt = _write(tmp_path, "gt.json", ds)
    for protocol in ("standard", "fixed"):
        with pytest.raises(LVISInputError, match=rf"nan_scores.json'.*{name}: score is {kind}"):
            evaluate_lvis(gt, str(path), "segm", protocol=protocol)
    with pytest.raises(SystemExit, match=rf"nan_scores.json'.*{name}: score is {kind}"):
        _tool().main(["--gt", gt, "--dets", str(path)])


def test_nan_score_in_an_image_over_the_cap(tmp_path, data):
    """The 300-per-image cap sorts scores: a NaN there would change what is kept."""
    ds, res = data
    res = copy.deepcopy(res)
    img = res[0]["image_id"]
    extra = [dict(res[0], score=float(s)) for s in np.linspace(0.1, 0.9, 30)]
    extra[7]["score"] = float("nan")
    with pytest.raises(LVISInputError, match=f"detection #{len(res) + 7} \\(image_id {img}"):
        evaluate_lvis(ds, res + extra, "bbox", max_dets=10)


def test_polygon_with_fewer_than_three_points(tmp_path, data):
    ds, res = data
    res = copy.deepcopy(res)
    i = _relevant(ds, res)
    res[i]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]  # two points: pycocotools reads a box
    r = res[i]
    path = _write(tmp_path, "few_points.json", res)
    gt = _write(tmp_path, "gt.json", ds)
    msg = rf"few_points.json'.*#{i} \(image_id {r['image_id']}, category_id {r['category_id']}\).*at least 3 points, this one has 2"
    with pytest.raises(LVISInputError, match=msg):
        evaluate_lvis(gt, path, "segm")
    with pytest.raises(SystemExit, match=msg):
        _tool().main(["--gt", gt, "--dets", path, "--iou-types", "segm"])
    # the same detection with three points is evaluated
    res[i]["segmentation"] = [[10.0, 10.0, 20.0, 20.0, 10.0, 20.0]]
    assert evaluate_lvis(ds, res, "segm").results["AP"] >= 0


def test_non_finite_box_and_missing_fields(data):
    ds, res = data
    bad = copy.deepcopy(res)
    bad[4]["bbox"] = [1.0, float("nan"), 3.0, 4.0]
    with pytest.raises(LVISInputError, match=r"detection #4 .*bbox has a NaN"):
        evaluate_lvis(ds, bad, "bbox")
    bad = copy.deepcopy(res)
    del bad[2]["score"]
    with pytest.raises(LVISInputError, match=r"result #2 lacks \['score'\]"):
        evaluate_lvis(ds, bad, "bbox")
    bad = copy.deepcopy(res)
    bad[3]["image_id"] = 2.5
    with pytest.raises(LVISInputError, match=r"detection #3 .*image_id is not an integer"):
        evaluate_lvis(ds, bad, "bbox")


def test_category_without_detections_is_ap_zero_and_marked(tmp_path):
    ds = make_dataset(62, n_img=15)
    res = make_results(ds, 63)
    gone = ds["categories"][0]["id"]
    res = [r for r in res if r["category_id"] != gone]
    gt = _write(tmp_path, "gt.json", ds)
    dets = _write(tmp_path, "dets.json", res)
    out = tmp_path / "out"
    results, per_class, outputs = evaluate_detections_file(gt, dets, output_dir=str(out))
    ref = run_lvis_api(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in res], "segm")
    ref_dets = {}
    for (_, cat), dts in ref._dts.items():
        ref_dets[cat] = ref_dets.get(cat, 0) + len(dts)
    rows = {r["category_id"]: r for r in json.loads((out / "per_class_ap.json").read_text())}
    assert per_class["segm"][gone] == 0.0 and rows[gone]["AP_segm"] == 0.0
    assert rows[gone]["num_dets_segm"] == 0 and rows[gone]["num_dets_bbox"] == 0
    for cid, row in rows.items():  # detections evaluated, as lvis-api keeps them
        assert row["num_dets_segm"] == ref_dets.get(cid, 0), cid
    other = next(c for c in rows if c != gone and rows[c]["AP_segm"] is not None)
    assert rows[other]["num_dets_segm"] > 0
    csv_head = (out / "per_class_ap.csv").read_text().splitlines()[0]
    assert csv_head.endswith("AP_bbox,AP_segm,num_dets_bbox,num_dets_segm")


def test_no_detection_and_empty_masks_are_told_apart(tmp_path, caplog):
    """A category with ground truth but no detection, and one whose detections all have empty
    masks (area 0: lvis-api does not evaluate them): both AP 0, each its own message."""
    ds = make_dataset(62, n_img=15)
    res = make_results(ds, 63)
    gone, hollow = ds["categories"][0]["id"], ds["categories"][1]["id"]
    res = [r for r in res if r["category_id"] != gone]
    img = {im["id"]: im for im in ds["images"]}
    n_hollow = 0
    for r in res:
        if r["category_id"] == hollow:
            h, w = img[r["image_id"]]["height"], img[r["image_id"]]["width"]
            r["segmentation"] = _rle_str(mask_utils.encode(np.zeros((h, w), np.uint8, order="F")))
            n_hollow += 1
    dets = _write(tmp_path, "dets.json", res)
    with caplog.at_level("INFO"):
        _, per_class, _ = evaluate_detections_file(_write(tmp_path, "gt.json", ds), dets)
    assert per_class["segm"][gone] == per_class["segm"][hollow] == 0.0
    text = caplog.text
    assert f"segm: 1 categories with ground truth have no detection in the images that " in text
    assert f"[{gone}]" in text
    assert "segm: 1 categories with ground truth have detections, all with empty masks" in text
    assert f"{hollow} (" in text and "detections)" in text


def test_mask_tasks_use_mask_areas_in_both_engines(tmp_path):
    """A results file that keeps its boxes: segm's APs / APm / APl use mask areas in the tool
    with either engine, as evaluate_lvis and run_lvis_api do with ignore_boxes=True; with
    ignore_boxes=False both use the boxes' areas (lvis-api's own convention), and differ."""
    ds = make_dataset(62, n_img=15)
    res = [r for r in make_results(ds, 63) if isinstance(r["segmentation"], dict)]
    gt, dets = _write(tmp_path, "gt.json", ds), _write(tmp_path, "dets.json", res)
    fast = evaluate_detections_file(gt, dets, iou_types=["segm"])[0]["segm"]
    ref = evaluate_detections_file(gt, dets, iou_types=["segm"], engine="lvis-api")[0]["segm"]
    assert json.dumps(fast) == json.dumps(ref)
    for ignore in (True, False):
        ours = evaluate_lvis(gt, dets, "segm", ignore_boxes=ignore).results
        theirs = run_lvis_api(gt, dets, "segm", ignore_boxes=ignore).get_results()
        assert all(abs(ours[k] - theirs[k]) < 1e-12 for k in ours), ignore
        if ignore:
            assert abs(ours["APs"] * 100 - fast["APs"]) < 1e-9
    boxes = evaluate_lvis(gt, dets, "segm").results
    assert boxes["APs"] != evaluate_lvis(gt, dets, "segm", ignore_boxes=True).results["APs"]


def test_tool_help_states_the_area_convention():
    spec = importlib.util.spec_from_file_location(
        "evaluate_detections", os.path.join(REPO, "tools", "evaluate_detections.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = " ".join(tool.build_parser().format_help().split())
    assert "by MASK area, with either engine" in text and "ignore_boxes=False" in text


def test_lvis_api_engine_reports_bad_input_the_same_way(tmp_path, data):
    ds, res = data
    res = copy.deepcopy(res)
    res[1]["score"] = float("nan")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(res))
    gt = _write(tmp_path, "gt.json", ds)
    with pytest.raises(LVISInputError, match=r"bad.json'.*detection #1 .*score is NaN"):
        evaluate_detections_file(gt, str(path), engine="lvis-api")
    with pytest.raises(ValueError, match="fast engine only"):
        evaluate_detections_file(
            gt, _write(tmp_path, "ok.json", data[1]), engine="lvis-api", protocols=["pool"]
        )


def test_evaluation_imports_neither_torch_nor_detectron2(tmp_path, data):
    ds, res = data
    gt = _write(tmp_path, "gt.json", ds)
    dets = _write(tmp_path, "dets.json", res)
    code = f"""
import runpy, sys
import balms_det.lvis_eval, balms_det.evaluation.offline
import balms_det.evaluation.tasks, balms_det.evaluation.report
sys.argv = ["evaluate_detections.py", "--gt", {gt!r}, "--dets", {dets!r},
            "--protocols", "standard", "fixed", "pool", "boundary", "--output-dir", {str(tmp_path / "o")!r}]
runpy.run_path({os.path.join(REPO, "tools", "evaluate_detections.py")!r}, run_name="__main__")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "detectron2"))
print("HEAVY", bad)
"""
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path)
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "HEAVY []" in p.stdout
    for task in ("bbox", "segm", "bbox_fixed", "segm_fixed", "bbox_pool", "segm_pool", "boundary"):
        assert f"copypaste: Task: {task}" in p.stdout
    metrics = json.loads((tmp_path / "o" / "lvis_metrics.json").read_text())
    assert set(metrics) == {
        "bbox",
        "segm",
        "bbox_fixed",
        "segm_fixed",
        "bbox_pool",
        "segm_pool",
        "boundary",
    }
    assert "hmean" in metrics["segm_fixed"] and "hmean" not in metrics["segm_pool"]


def test_error_in_a_later_byte_range_names_the_global_index(tmp_path, monkeypatch):
    """Two threads read a file in two byte ranges; a bad detection in the second is named by
    its index in the file."""
    from balms_det.lvis_eval import reader

    ds = make_dataset(64, n_img=20)
    res = make_results(ds, 65, dets_per_img=(20, 30))
    i = len(res) - 5
    res[i]["score"] = float("nan")
    path = tmp_path / "late.json"
    path.write_text(json.dumps(res))
    monkeypatch.setattr(reader, "PIECE_BYTES", 4096)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    assert len(reader._Text(str(path)).ranges(2)) == 2
    with pytest.raises(LVISInputError, match=rf"late.json'.*detection #{i} \(image_id"):
        evaluate_lvis(ds, str(path), "bbox", workers=2)
