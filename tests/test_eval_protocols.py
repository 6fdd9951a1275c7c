"""AP-fixed and AP-pool (Dave et al. 2021) of balms_det.lvis_eval against lvis-api
run the way the authors' scripts run it: top-k per category, ``LVISResults(..., max_dets=-1)``,
``params.max_dets = -1``; for AP-pool the pooled accumulation, written here on top of lvis-api's
per-category matching (``LVISEval.evaluate``)."""

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from eval_cases import make_dataset, make_results
from lvis import LVIS, LVISEval, LVISResults
from test_fast_lvis import _write, assert_same

from balms_det.evaluation.lvis_compat import lvis_numpy_compat, run_lvis_api
from balms_det.evaluation.tasks import top_per_category  # Dave et al.'s filter (the reference's)
from balms_det.lvis_eval import evaluate_lvis

TOL = 1e-9
POOLS = ("all", "r", "c", "f")


def pooled_reference(gt_path, results, iou_type, k):
    """AP-pool from lvis-api's own per-category matching: for each pool and area range, the
    per-image results of the pool's categories (image-major, as the authors concatenate them),
    sorted by score (stable), then lvis-api's precision / recall computation."""
    gt = LVIS(gt_path)
    dt = LVISResults(gt, top_per_category(copy.deepcopy(results), k), max_dets=-1)
    ev = LVISEval(gt, dt, iou_type)
    ev.params.max_dets = -1
    with lvis_numpy_compat():
        ev.evaluate()
    p = ev.params
    n_thr, n_rec, n_area, n_img = len(p.iou_thrs), len(p.rec_thrs), len(p.area_rng), len(p.img_ids)
    members = {
        "all": list(range(len(p.cat_ids))),
        "r": ev.freq_groups[0],
        "c": ev.freq_groups[1],
        "f": ev.freq_groups[2],
    }
    precision = -np.ones((n_thr, n_rec, len(POOLS), n_area))
    recall = -np.ones((n_thr, len(POOLS), n_area))
    for pi, pool in enumerate(POOLS):
        for a in range(n_area):
            E = [
                ev.eval_imgs[c * n_area * n_img + a * n_img + i]
                for i in range(n_img)
                for c in members[pool]
            ]
            E = [e for e in E if e is not None]
            if not E:
                continue
            scores = np.concatenate([e["dt_scores"] for e in E])
            order = np.argsort(-scores, kind="mergesort")
            dt_m = np.concatenate([e["dt_matches"] for e in E], axis=1)[:, order]
            dt_ig = np.concatenate([e["dt_ignore"] for e in E], axis=1)[:, order]
            gt_ig = np.concatenate([e["gt_ignore"] for e in E])
            num_gt = np.count_nonzero(gt_ig == 0)
            if num_gt == 0:
                continue
            tps = np.logical_and(dt_m, np.logical_not(dt_ig))
            fps = np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig))
            tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
            fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
            for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
                rc = tp / num_gt
                recall[t, pi, a] = rc[-1] if len(tp) else 0
                pr = (tp / (fp + tp + np.spacing(1))).tolist()
                for i in range(len(tp) - 1, 0, -1):
                    if pr[i] > pr[i - 1]:
                        pr[i - 1] = pr[i]
                ins = np.searchsorted(rc, p.rec_thrs, side="left")
                row = [0.0] * n_rec
                for r, j in enumerate(ins):
                    if j >= len(pr):
                        break
                    row[r] = pr[j]
                precision[t, :, pi, a] = row
    return precision, recall


def _rle_only(ds, r):
    if isinstance(r["segmentation"], list):
        im = next(i for i in ds["images"] if i["id"] == r["image_id"])
        rle = mask_utils.merge(mask_utils.frPyObjects(r["segmentation"], im["height"], im["width"]))
        r["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return r


def _mean(s):
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1


@pytest.mark.parametrize(
    "seed,adversarial,k",
    [(20, False, 10000), (21, True, 9), (22, True, 3), (23, True, 25)],
)
def test_ap_fixed_equals_lvis_api_with_top_k(tmp_path, seed, adversarial, k):
    ds = make_dataset(seed, n_img=24, adversarial=adversarial)
    res = make_results(ds, seed + 100, dets_per_img=(0, 45), adversarial=adversarial)
    gt_path = _write(tmp_path, "gt.json", ds)
    res_path = _write(tmp_path, "res.json", res)
    counts = np.bincount([r["category_id"] for r in res])
    assert k == 10000 or counts.max() > k  # the top-k keeps fewer than some category has
    for iou_type in ("bbox", "segm"):
        ref = run_lvis_api(gt_path, top_per_category(copy.deepcopy(res), k), iou_type, max_dets=-1)
        ours = evaluate_lvis(ds, res, iou_type, protocol="fixed", dets_per_category=k)
        assert "AR@-1" in ours.results
        assert_same(ours, ref)
        assert_same(
            evaluate_lvis(gt_path, res_path, iou_type, protocol="fixed", dets_per_category=k), ref
        )
    # masks without the boxes (mask areas), as the authors' script evaluates them (lvis-api
    # then reads compressed RLEs only)
    nobox = [_rle_only(ds, {key: v for key, v in r.items() if key != "bbox"}) for r in res]
    ref = run_lvis_api(gt_path, top_per_category(copy.deepcopy(nobox), k), "segm", max_dets=-1)
    ours = evaluate_lvis(
        ds, nobox, "segm", protocol="fixed", dets_per_category=k, ignore_boxes=True
    )
    assert_same(ours, ref)


@pytest.mark.parametrize("seed,adversarial,k", [(30, False, 10000), (31, True, 7), (32, True, 2)])
def test_ap_pool_equals_pooled_lvis_api(tmp_path, seed, adversarial, k):
    ds = make_dataset(seed, n_img=24, adversarial=adversarial)
    res = make_results(ds, seed + 100, dets_per_img=(0, 45), adversarial=adversarial)
    gt_path = _write(tmp_path, "gt.json", ds)
    for iou_type in ("bbox", "segm"):
        p_ref, r_ref = pooled_reference(gt_path, res, iou_type, k)
        ours = evaluate_lvis(ds, res, iou_type, protocol="pool", dets_per_category=k)
        assert ours.precision.shape == p_ref.shape
        np.testing.assert_array_equal(ours.precision == -1, p_ref == -1)
        np.testing.assert_allclose(ours.precision, p_ref, rtol=0, atol=TOL)
        np.testing.assert_allclose(ours.recall, r_ref, rtol=0, atol=TOL)
        exp = {
            "AP": _mean(p_ref[:, :, 0, 0]),
            "AP50": _mean(p_ref[:1, :, 0, 0]),
            "APs": _mean(p_ref[:, :, 0, 1]),
            "APr": _mean(p_ref[:, :, 1, 0]),
            "APc": _mean(p_ref[:, :, 2, 0]),
            "APf": _mean(p_ref[:, :, 3, 0]),
            "AR@-1": _mean(r_ref[:, 0, 0]),
        }
        for key, v in exp.items():
            assert abs(float(ours.results[key]) - v) <= TOL, (iou_type, key)
        # pooling changes the number: not the mean of per-category AP
        fixed = evaluate_lvis(ds, res, iou_type, protocol="fixed", dets_per_category=k)
        assert abs(float(fixed.results["AP"]) - float(ours.results["AP"])) > 1e-6
        with pytest.raises(ValueError, match="pool"):
            ours.per_category_ap()


def test_pool_and_fixed_in_two_threads(tmp_path, monkeypatch):
    """The results read in two byte ranges and the categories scored by two threads give the
    same arrays as one."""
    from balms_det.lvis_eval import reader, score

    ds = make_dataset(40, n_img=30)
    res = make_results(ds, 41, dets_per_img=(10, 40))
    monkeypatch.setattr(score, "PARALLEL_MIN_EVALUATED", 0)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    for protocol in ("standard", "fixed", "pool"):
        one = evaluate_lvis(ds, res, "segm", protocol=protocol, dets_per_category=20, workers=1)
        two = evaluate_lvis(ds, res, "segm", protocol=protocol, dets_per_category=20, workers=2)
        np.testing.assert_array_equal(one.precision, two.precision)
        np.testing.assert_array_equal(one.recall, two.recall)
        np.testing.assert_array_equal(one.num_dets, two.num_dets)
        assert one.results == two.results


def test_fixed_ties_at_the_budget_keep_input_order(tmp_path):
    """Equal scores at the k-th place: the earlier detections in the input are kept, so
    swapping two tied detections of different quality changes AP-fixed exactly as lvis-api."""
    ds = make_dataset(50, n_img=10)
    res = make_results(ds, 51, dets_per_img=(20, 30))
    for r in res:
        r["score"] = 0.5  # every detection ties
    gt_path = _write(tmp_path, "gt.json", ds)
    cat_ids = sorted(c["id"] for c in ds["categories"])
    counts = np.array([sum(r["category_id"] == c for r in res) for c in cat_ids])
    for k in (1, 4):
        ref = run_lvis_api(gt_path, top_per_category(copy.deepcopy(res), k), "bbox", max_dets=-1)
        ours = evaluate_lvis(ds, res, "bbox", protocol="fixed", dets_per_category=k)
        assert_same(ours, ref)
        assert ours.num_dets.max() <= k
        np.testing.assert_array_equal(ours.num_kept, np.minimum(counts, k))
    rev = res[::-1]
    ref = run_lvis_api(gt_path, top_per_category(copy.deepcopy(rev), 4), "bbox", max_dets=-1)
    assert_same(evaluate_lvis(ds, rev, "bbox", protocol="fixed", dets_per_category=4), ref)


def test_lvis_api_engine_runs_ap_fixed_the_authors_way(tmp_path, caplog):
    from balms_det.evaluation.tasks import evaluate_tasks, prepare_gt_dataset

    ds = prepare_gt_dataset(make_dataset(55, n_img=12))
    res = make_results(ds, 56, dets_per_img=(5, 30))
    tasks = ["bbox_fixed", "segm_fixed"]
    with caplog.at_level("INFO"):
        fast, pc_fast, n_fast = evaluate_tasks(ds, res, tasks, dets_per_category=400)
    short = sum(sum(r["category_id"] == c["id"] for r in res) < 400 for c in ds["categories"])
    assert f"{short} of {len(ds['categories'])} categories have fewer than 400" in caplog.text
    fast, pc_fast, n_fast = evaluate_tasks(ds, res, tasks, dets_per_category=4)
    ref, pc_ref, n_ref = evaluate_tasks(ds, res, tasks, engine="lvis-api", dets_per_category=4)
    for t in tasks:
        for k, v in ref[t].items():
            assert (np.isnan(v) and np.isnan(fast[t][k])) or abs(fast[t][k] - v) <= 1e-7, (t, k)
        assert n_fast[t] == n_ref[t] and max(n_ref[t].values()) <= 4
