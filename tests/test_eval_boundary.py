"""Boundary IoU and boundary AP (Cheng et al. 2021) of the engine: the compiled core's boundary
IoUs against a slow reference (full-image masks, d erosions by a 3 x 3 square with numpy) on
hand-made and adversarial masks, and boundary AP against lvis-api's own matching with that
reference plugged in."""

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from eval_cases import boundary_dataset, mask_rle, slow_boundary, square
from lvis import LVIS, LVISEval, LVISResults

from balms_det.evaluation.lvis_compat import lvis_numpy_compat
from balms_det.lvis_eval import evaluate_lvis, rules
from balms_det.lvis_eval.jsonio import load_core
from balms_det.lvis_eval.params import dilation

pytestmark = pytest.mark.torch_free
TOL = 1e-9


def core_boundary_ious(masks, d, start=2.0):
    """(n, n) min(start, boundary IoU) of every pair of the h x w ``masks`` (uint8 arrays, or
    uncompressed counts lists) by the compiled core, boundary width d."""
    core = load_core()
    h, w = masks[0].shape if hasattr(masks[0], "shape") else masks[0][1]
    segs = [mask_rle(m) if hasattr(m, "shape") else {"size": [h, w], "counts": m[0]} for m in masks]
    n = len(segs)
    counts, off, code, _ = core.masks(
        *rules.segmentation_arrays(segs, np.full(n, h), np.full(n, w))
    )
    assert not code.any()
    vals = np.full(n * n, start)
    core.boundary_ious(
        counts, off, np.full(n, h), np.full(n, w), np.full(n, d), counts, off,
        np.repeat(np.arange(n), n), np.tile(np.arange(n), n), np.arange(n * n), vals,
    )  # fmt: skip
    return vals.reshape(n, n)


def slow_boundary_iou(a, b, d):
    ba, bb = slow_boundary(a, d), slow_boundary(b, d)
    inter, union = int((ba & bb).sum()), int((ba | bb).sum())
    return inter / union if inter else 0.0


def _slow_ious(masks, d):
    bs = [slow_boundary(m, min(d, max(m.shape) + 1)) for m in masks]  # (wider: the same)
    out = np.zeros((len(bs), len(bs)))
    for i, a in enumerate(bs):
        for j, b in enumerate(bs):
            inter = int((a & b).sum())
            out[i, j] = inter / int((a | b).sum()) if inter else 0.0
    return out


def test_dilation_width():
    assert dilation(40, 40) == 1  # 0.02 * 56.57 = 1.13
    assert dilation(10, 10) == 1  # 0.28 rounds to 0: at least 1
    assert dilation(100, 100) == 3  # 2.83
    assert dilation(480, 640) == 16  # 0.02 * 800
    assert dilation(75, 100) == 2  # 0.02 * 125 = 2.5: half to even, as boundary-iou-api


def test_hand_computed_boundary_ious():
    """A 10 x 10 square (d = 1: itself minus its 8 x 8 inside, 36 pixels) against itself (1),
    shifted right by one pixel (the top and bottom rows share 9 pixels each, the left and
    right columns none: 18 / (36 + 36 - 18)), a disjoint one (0), an empty mask (0)."""
    sq = square(40, 40, 5, 5, 10)
    got = core_boundary_ious([sq, square(40, 40, 5, 6, 10), square(40, 40, 25, 25, 10),
                              np.zeros((40, 40), np.uint8)], 1)  # fmt: skip
    assert got[0, 0] == 1.0 and got[0, 1] == got[1, 0] == pytest.approx(1 / 3, abs=1e-15)
    assert got[0, 2] == 0.0 and got[0, 3] == got[3, 3] == 0.0
    # the image border counts as boundary: a square in the corner is all of its 36 pixels
    # (19 if the outside were foreground); a square thinner than 2d + 1 is all boundary
    corner = square(40, 40, 0, 0, 10)
    other = square(40, 40, 1, 0, 10)
    assert slow_boundary(corner, 1).sum() == 36 and slow_boundary(other, 1).sum() == 36
    # the left and right columns share rows 1-9 (the rows are the other's inside)
    want = (9 + 9) / (36 + 36 - 18)
    assert core_boundary_ious([corner, other], 1)[0, 1] == slow_boundary_iou(corner, other, 1)
    assert slow_boundary_iou(corner, other, 1) == pytest.approx(want, abs=1e-15)


def _adversarial_masks(rng, h, w):
    """Empty, full, one pixel (in a corner), a line along each border, thin inner lines, a
    diagonal, rectangles on the border, a ring (two runs per column), speckle, a checkerboard."""
    out = []
    m = np.zeros((h, w), np.uint8)
    out.append(m)
    out.append(np.ones((h, w), np.uint8))
    for y, x in ((0, 0), (h - 1, w - 1), (int(rng.integers(h)), int(rng.integers(w)))):
        m = np.zeros((h, w), np.uint8)
        m[y, x] = 1
        out.append(m)
    for sl in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1], np.s_[h // 2, 1:-1]):
        m = np.zeros((h, w), np.uint8)
        m[sl] = 1
        out.append(m)
    m = np.zeros((h, w), np.uint8)
    m[:, w // 2 : w // 2 + 2] = 1  # a vertical line two pixels wide
    out.append(m)
    yy, xx = np.mgrid[:h, :w]
    out.append((yy == xx).astype(np.uint8))  # a diagonal: one pixel per column
    out.append(((yy + xx) % 2).astype(np.uint8))  # checkerboard
    r = np.hypot(yy - h / 2, xx - w / 2)
    out.append(((r < min(h, w) * 0.45) & (r > min(h, w) * 0.2)).astype(np.uint8))  # a ring
    for _ in range(3):
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(-3, h)), int(rng.integers(-3, w))
            m[
                max(y0, 0) : y0 + int(rng.integers(1, h + 1)),
                max(x0, 0) : x0 + int(rng.integers(1, w + 1)),
            ] = 1
        out.append(m)
    out.append((rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.uint8))
    return out


def test_core_boundary_ious_equal_the_slow_reference():
    """Every pair of random and adversarial masks (empty, full, one pixel, border lines and
    corners, thin lines, rings, speckle, d larger than the object), at the image's d and at
    d = 1, 2, 7, 60: the core's boundary IoU is bit-equal to the slow reference's; min() with
    the value already there."""
    rng = np.random.default_rng(5)
    sizes = [(1, 1), (1, 7), (9, 1), (2, 2), (5, 3)] + [
        (int(rng.integers(3, 40)), int(rng.integers(3, 40))) for _ in range(6)
    ]
    for h, w in sizes:
        masks = _adversarial_masks(rng, h, w)
        for d in sorted({dilation(h, w), 1, 2, 7, 60}):
            ref = _slow_ious(masks, d)
            assert core_boundary_ious(masks, d).tobytes() == ref.tobytes(), (h, w, d)
    sq = [square(40, 40, 5, 5, 10), square(40, 40, 5, 6, 10)]
    np.testing.assert_array_equal(core_boundary_ious(sq, 1, start=0.3), [[0.3] * 2] * 2)
    got = core_boundary_ious(sq, 1, start=0.5)
    assert got[0, 1] == got[1, 0] == 18 / 54 and got[0, 0] == 0.5


def test_core_boundaries_of_non_canonical_rles():
    """Counts with zero-length runs (touching runs of ones, leading zeros), as uncompressed
    RLEs may hold them: the slow reference's boundary IoUs."""
    rng = np.random.default_rng(1)
    h, w = 6, 5
    lists = [[2, 3, 0, 2, 23], [0, 0, 5, 3, 22], [0, 30], [5, 0, 0, 4, 21], [3, 2, 0, 0, 0, 4, 21]]
    for _ in range(20):  # random runs, some of length 0
        c = rng.integers(0, 4, int(rng.integers(2, 12))).tolist()
        if sum(c) < h * w:
            lists.append(c + [h * w - sum(c)])
    full = [np.repeat(np.arange(len(c)) % 2, c).reshape(w, h).T.astype(np.uint8) for c in lists]
    for d in (1, 2):
        ref = _slow_ious(full, d)
        got = core_boundary_ious([(c, (h, w)) for c in lists], d)
        assert got.tobytes() == ref.tobytes()


# ------------------------------------------------------------------------------------------
# Boundary AP against a slow reference
# ------------------------------------------------------------------------------------------
class SlowBoundaryEval(LVISEval):
    """lvis-api with its IoU replaced by min(mask IoU, boundary IoU) (mask IoU for crowd
    ground truth), computed on full decoded masks."""

    cache = {}

    def _b(self, rle, d):
        key = (rle["counts"] if isinstance(rle["counts"], bytes) else rle["counts"].encode(), d)
        if key not in self.cache:
            m = mask_utils.decode(rle).astype(bool)
            self.cache[key] = (m, slow_boundary(m, d))
        return self.cache[key]

    def compute_iou(self, img_id, cat_id):
        gt, dt = self._get_gt_dt(img_id, cat_id)
        if len(gt) == 0 and len(dt) == 0:
            return []
        idx = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in idx]
        img = self.lvis_gt.imgs[img_id]
        d = max(int(round(0.02 * math.sqrt(img["height"] ** 2 + img["width"] ** 2))), 1)
        out = np.zeros((len(dt), len(gt)))
        for i, det in enumerate(dt):
            dm, db = self._b(det["segmentation"], d)
            for j, g in enumerate(gt):
                gm, gb = self._b(g["segmentation"], d)
                inter, union = int((dm & gm).sum()), int((dm | gm).sum())
                miou = inter / union if inter else 0.0
                bi, bu = int((db & gb).sum()), int((db | gb).sum())
                biou = bi / bu if bi else 0.0
                out[i, j] = miou if g.get("iscrowd", 0) else min(miou, biou)
        return out


def slow_boundary_ap(gt_path, results):
    gt = LVIS(gt_path)
    ev = SlowBoundaryEval(gt, LVISResults(gt, [dict(r) for r in results]), "segm")
    with lvis_numpy_compat():
        ev.run()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_ap_equals_slow_reference(tmp_path, seed):
    ds, res = boundary_dataset(seed)
    gt_path = str(tmp_path / "gt.json")
    with open(gt_path, "w") as f:
        json.dump(ds, f)
    ref = slow_boundary_ap(gt_path, res)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(res))
    for results in (res, str(res_path)):  # a list, and a file read by the scanner
        ours = evaluate_lvis(ds, results, "boundary")
        np.testing.assert_array_equal(ours.precision == -1, ref.eval["precision"] == -1)
        np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=TOL)
        np.testing.assert_allclose(ours.recall, ref.eval["recall"], rtol=0, atol=TOL)
        for k, v in ref.get_results().items():
            assert abs(float(ours.results[k]) - float(v)) <= TOL, k
    # boundary AP is stricter than mask AP on these shifted / fattened masks
    segm = evaluate_lvis(ds, res, "segm")
    assert float(ours.results["AP"]) < float(segm.results["AP"])
    # without the boxes (mask areas), as evaluate_tasks runs the boundary task
    nobox = [{k: v for k, v in r.items() if k != "bbox"} for r in res]
    ref = slow_boundary_ap(gt_path, nobox)
    ours = evaluate_lvis(ds, res, "boundary", ignore_boxes=True)
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=TOL)


def test_crowd_ground_truth_matches_with_mask_iou():
    """A detection 2 px off a 20 x 20 square: mask IoU 360 / 440, boundary IoU 36 / 116
    (d = 1). Boundary AP uses the min() only for non-crowd ground truth."""
    gt_mask, det_mask = square(40, 40, 10, 10, 20), square(40, 40, 10, 12, 20)
    assert core_boundary_ious([gt_mask, det_mask], 1)[0, 1] == pytest.approx(36 / 116)
    out = {}
    for crowd in (0, 1):
        ds = {
            "images": [
                {
                    "id": 1,
                    "height": 40,
                    "width": 40,
                    "neg_category_ids": [],
                    "not_exhaustive_category_ids": [],
                }
            ],
            "categories": [{"id": 1, "name": "a", "frequency": "f"}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "iscrowd": crowd,
                    "segmentation": mask_rle(gt_mask),
                    "area": 400.0,
                    "bbox": [10, 10, 20, 20],
                }
            ],
        }
        res = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": mask_rle(det_mask)}]
        out[crowd] = evaluate_lvis(ds, res, "boundary")
        segm = evaluate_lvis(ds, res, "segm")
        assert float(segm.results["AP50"]) == pytest.approx(1.0, abs=1e-12)
    assert float(out[0].results["AP50"]) == 0.0  # min(0.82, 0.31) < 0.5
    assert float(out[1].results["AP50"]) == pytest.approx(1.0, abs=1e-12)  # crowd: mask IoU 0.82
    # matched up to IoU 0.80 (thresholds .50:.05:.80 of ten): AP = 7 / 10
    assert float(out[1].results["AP"]) == pytest.approx(0.7, abs=1e-12)
