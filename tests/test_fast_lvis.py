"""The engine (balms_det.lvis_eval) must equal lvis-api 0.5.3 (run under the numpy shim)."""

import copy
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from eval_cases import _rle_str, handcrafted_set, make_dataset, make_results

from balms_det.evaluation.lvis_compat import lvis_numpy_compat, run_lvis_api
from balms_det.lvis_eval import LVISGroundTruth, LVISInputError, evaluate_lvis

pytestmark = pytest.mark.torch_free
TOL = 1e-9


# ---------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------
def assert_same(ours, ref):
    ref_res = ref.get_results()
    assert list(ours.results.keys()) == list(ref_res.keys())
    for k, v in ref_res.items():
        assert abs(float(ours.results[k]) - float(v)) <= TOL, (k, ours.results[k], v)
    p_ref = ref.eval["precision"]
    r_ref = ref.eval["recall"]
    assert ours.precision.shape == p_ref.shape
    assert ours.recall.shape == r_ref.shape
    np.testing.assert_array_equal(ours.precision == -1, p_ref == -1)
    np.testing.assert_allclose(ours.precision, p_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.recall, r_ref, rtol=0, atol=TOL)
    assert ours.cat_ids == list(ref.params.cat_ids)
    # per-category AP, as lvis-api would compute it for a single category
    for k, cid in enumerate(ref.params.cat_ids):
        p = p_ref[:, :, k, 0]
        p = p[p > -1]
        exp = float(np.mean(p)) if p.size else float("nan")
        got = ours.per_category_ap()[cid]
        assert (math.isnan(exp) and math.isnan(got)) or abs(exp - got) <= TOL


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize(
    "seed,adversarial,max_dets", [(0, False, 300), (1, True, 300), (2, True, 15), (3, True, 300)]
)
def test_matches_lvis_api(tmp_path, iou_type, seed, adversarial, max_dets):
    ds = make_dataset(seed, adversarial=adversarial)
    res = make_results(
        ds, seed + 100, adversarial=adversarial, big_image=320 if seed == 3 else None
    )
    gt_path = _write(tmp_path, "gt.json", ds)
    ds_before = copy.deepcopy(ds)
    res_before = copy.deepcopy(res)
    ref = run_lvis_api(gt_path, copy.deepcopy(res), iou_type, max_dets=max_dets)
    # from the in-memory dict and list (not modified) ...
    ours = evaluate_lvis(ds, res, iou_type, max_dets=max_dets)
    assert ds == ds_before and res == res_before
    assert_same(ours, ref)
    # ... and from files
    res_path = _write(tmp_path, "res.json", res)
    ours_f = evaluate_lvis(gt_path, res_path, iou_type, max_dets=max_dets)
    assert_same(ours_f, ref)
    assert "Average Precision" in ours.summary_str()


def test_file_streaming_in_small_pieces(tmp_path, monkeypatch):
    """A results file scanned in small pieces (elements cut by their ends, read again), in byte
    ranges read by two threads; text that looks like element boundaries inside strings."""
    from balms_det.lvis_eval import reader

    ds = make_dataset(5, n_img=12)
    res = make_results(ds, 6)
    for i in range(0, len(res), 7):  # strings that look like element boundaries
        res[i]["note"] = '}, {"a": 1}, {'
    res_path = _write(tmp_path, "res.json", res)
    ref = run_lvis_api(_write(tmp_path, "gt.json", ds), copy.deepcopy(res), "bbox")
    monkeypatch.setattr(reader, "PIECE_BYTES", 997)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    assert len(reader._Text(res_path).ranges(3)) == 3
    for workers in (3, 1):
        assert_same(evaluate_lvis(ds, res_path, "bbox", workers=workers), ref)


def test_segmentation_only_results(tmp_path):
    """Results without "bbox": lvis-api takes area and box from the mask."""
    ds = make_dataset(7, n_img=20)
    res = make_results(ds, 8)
    for r in res:
        del r["bbox"]
        if isinstance(r["segmentation"], list):
            im = next(i for i in ds["images"] if i["id"] == r["image_id"])
            rle = mask_utils.merge(
                mask_utils.frPyObjects(r["segmentation"], im["height"], im["width"])
            )
            r["segmentation"] = _rle_str(rle)
    gt_path = _write(tmp_path, "gt.json", ds)
    for iou_type in ("bbox", "segm"):
        ref = run_lvis_api(gt_path, copy.deepcopy(res), iou_type)
        assert_same(evaluate_lvis(ds, res, iou_type), ref)


def test_ground_truth_reuse_and_lvis_object(tmp_path):
    from lvis import LVIS

    ds = make_dataset(9, n_img=15)
    res = make_results(ds, 10)
    gt_path = _write(tmp_path, "gt.json", ds)
    gt = LVISGroundTruth(gt_path)
    for iou_type in ("segm", "bbox"):
        ref = run_lvis_api(LVIS(gt_path), copy.deepcopy(res), iou_type)
        assert_same(evaluate_lvis(gt, res, iou_type), ref)
        assert_same(evaluate_lvis(LVIS(gt_path), res, iou_type), ref)


def test_no_detections_for_a_category_with_gt(tmp_path):
    ds = make_dataset(11, n_img=15)
    res = make_results(ds, 12)
    gone = ds["categories"][0]["id"]
    res = [r for r in res if r["category_id"] != gone]
    ref = run_lvis_api(_write(tmp_path, "gt.json", ds), copy.deepcopy(res), "segm")
    ours = evaluate_lvis(ds, res, "segm")
    assert_same(ours, ref)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def test_unknown_category_and_image_ids(tmp_path):
    ds = make_dataset(13, n_img=8)
    res = make_results(ds, 14, dets_per_img=(3, 6))
    bad = copy.deepcopy(res)
    bad[0]["category_id"] = 99999
    bad[1]["image_id"] = 123456
    with pytest.raises(LVISInputError) as e:
        evaluate_lvis(ds, bad, "bbox")
    assert "99999" in str(e.value) and "123456" in str(e.value)
    res_path = _write(tmp_path, "my_results.json", bad)
    with pytest.raises(LVISInputError) as e:
        evaluate_lvis(_write(tmp_path, "gt.json", ds), res_path, "segm")
    assert "my_results.json" in str(e.value) and "99999" in str(e.value)


@pytest.mark.parametrize(
    "segm",
    [
        {"counts": "abc"},  # no size
        {"size": [3, 4], "counts": "PP"},  # wrong size
        [[1.0, 2.0, 3.0]],  # odd polygon
        [],  # no polygon
        "not a mask",
        {"size": [1, 1], "counts": 7},
    ],
)
def test_malformed_segmentation(tmp_path, segm):
    ds = make_dataset(15, n_img=6)
    res = make_results(ds, 16, dets_per_img=(4, 8))
    # a detection of a category that has ground truth in its image, so it is evaluated
    a = ds["annotations"][0]
    det = {
        "image_id": a["image_id"],
        "category_id": a["category_id"],
        "bbox": a["bbox"],
        "score": 0.5,
        "segmentation": segm,
    }
    bad = res + [det]
    res_path = _write(tmp_path, "seg_results.json", bad)
    with pytest.raises(LVISInputError) as e:
        evaluate_lvis(ds, res_path, "segm")
    msg = str(e.value)
    assert "seg_results.json" in msg and "#%d" % (len(bad) - 1) in msg


def test_malformed_bbox_and_json(tmp_path):
    ds = make_dataset(17, n_img=5)
    res = make_results(ds, 18, dets_per_img=(3, 5))
    bad = copy.deepcopy(res)
    bad[2]["bbox"] = [1, 2, 3]
    with pytest.raises(LVISInputError, match="bbox"):
        evaluate_lvis(ds, bad, "bbox")
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(res)[:-20])
    with pytest.raises(LVISInputError, match="broken.json"):
        evaluate_lvis(ds, str(path), "bbox")
    with pytest.raises(ValueError):
        evaluate_lvis(ds, res, "keypoints")


# ---------------------------------------------------------------------------------------
# numpy shim
# ---------------------------------------------------------------------------------------
def test_numpy_shim_restores_state():
    had = "float" in np.__dict__
    before = np.__dict__.get("float")
    with lvis_numpy_compat():
        assert np.float is float or (had and np.float is before)
        np.ones(2).astype(np.float)
    assert ("float" in np.__dict__) == had
    if had:
        assert np.__dict__["float"] is before
    # also restored when the block raises
    with pytest.raises(RuntimeError):
        with lvis_numpy_compat():
            raise RuntimeError("boom")
    assert ("float" in np.__dict__) == had


def test_handcrafted_ties_ignore_and_id_zero(tmp_path):
    """IoU ties between ground truth (the last one wins), ignored ground truth taken only
    when no regular one matches, ground truth with id 0, ties in score across images."""
    ds, res = handcrafted_set()
    gt_path = _write(tmp_path, "gt.json", ds)
    for iou_type in ("bbox", "segm"):
        ref = run_lvis_api(gt_path, copy.deepcopy(res), iou_type)
        assert_same(evaluate_lvis(ds, res, iou_type), ref)
