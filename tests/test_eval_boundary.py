"""Boundary IoU and boundary AP (Cheng et al. 2021) of balms_det.evaluation: hand-computed
masks, and boundary AP against an independent slow implementation (full-image masks, d
erosions by a 3 x 3 square with numpy) plugged into lvis-api's own matching."""

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis import LVIS, LVISEval, LVISResults

from balms_det.evaluation.boundary import _crop, boundary_crops, boundary_iou, dilation
from balms_det.evaluation.fast_lvis import evaluate_lvis
from balms_det.evaluation.lvis_compat import lvis_numpy_compat

TOL = 1e-9


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _square(h, w, y0, x0, side_y, side_x=None):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + side_y, x0 : x0 + (side_x or side_y)] = 1
    return m


def _boundary(mask):
    h, w = mask.shape
    return boundary_crops([_rle(mask)], dilation(h, w))[0]


def slow_boundary(mask, d):
    """mask minus its erosion by d 3 x 3 steps, the image border counting as background."""
    cur = np.pad(mask.astype(bool), 1)
    for _ in range(d):
        nxt = cur.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nxt &= np.roll(np.roll(cur, dy, 0), dx, 1)
        cur = nxt
    return mask.astype(bool) & ~cur[1:-1, 1:-1]


# ------------------------------------------------------------------------------------------
# Hand-computed
# ------------------------------------------------------------------------------------------
def test_dilation_width():
    assert dilation(40, 40) == 1  # 0.02 * 56.57 = 1.13
    assert dilation(10, 10) == 1  # 0.28 rounds to 0: at least 1
    assert dilation(100, 100) == 3  # 2.83
    assert dilation(480, 640) == 16  # 0.02 * 800
    assert dilation(75, 100) == 2  # 0.02 * 125 = 2.5: half to even, as boundary-iou-api


def test_hand_computed_boundaries():
    sq = _square(40, 40, 5, 5, 10)  # d = 1: the 10 x 10 square minus its 8 x 8 inside
    b = _boundary(sq)
    assert b.count == 100 - 64 == 36
    assert boundary_iou(b, b) == 1.0
    # shifted right by one pixel: the top and bottom rows share 9 pixels each, the left and
    # right columns none: 18 / (36 + 36 - 18)
    shifted = _boundary(_square(40, 40, 5, 6, 10))
    assert boundary_iou(b, shifted) == pytest.approx(1 / 3, abs=1e-15)
    assert boundary_iou(shifted, b) == boundary_iou(b, shifted)
    # the image border counts as boundary: a square in the corner keeps its 36 pixels (19
    # if the outside of the image were foreground)
    assert _boundary(_square(40, 40, 0, 0, 10)).count == 36
    assert _boundary(np.ones((40, 40), np.uint8)).count == 40 * 4 - 4
    # d = 3 at 100 x 100: a 20 x 20 square minus its 14 x 14 inside
    assert _boundary(_square(100, 100, 40, 40, 20)).count == 400 - 196
    # a square thinner than 2d + 1 is all boundary
    assert _boundary(_square(100, 100, 40, 40, 6, 30)).count == 180
    # empty masks: empty boundaries, IoU 0
    empty = _boundary(np.zeros((40, 40), np.uint8))
    assert empty.count == 0 and boundary_iou(empty, b) == 0.0 and boundary_iou(empty, empty) == 0.0
    # disjoint squares
    assert boundary_iou(b, _boundary(_square(40, 40, 25, 25, 10))) == 0.0


def test_crop_decoding_and_boundaries_match_full_masks():
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 4))):  # rectangles, some on the border
            y0, x0 = int(rng.integers(-5, h)), int(rng.integers(-5, w))
            mask[
                max(y0, 0) : y0 + int(rng.integers(1, h)), max(x0, 0) : x0 + int(rng.integers(1, w))
            ] = 1
        if trial % 5 == 0:
            mask = (rng.random((h, w)) < 0.3).astype(np.uint8)  # speckle
        rle = _rle(mask)
        box = mask_utils.toBbox(rle)
        y0, x0, crop = _crop(rle, box)
        full = np.zeros((h, w), np.uint8)
        if crop.size:
            full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        np.testing.assert_array_equal(full, mask)
        d = dilation(h, w)
        b = boundary_crops([rle], d)[0]
        fb = np.zeros((h, w), bool)
        if b.pixels.size:
            fb[b.y0 : b.y0 + b.pixels.shape[0], b.x0 : b.x0 + b.pixels.shape[1]] = b.pixels
        np.testing.assert_array_equal(fb, slow_boundary(mask, d))
        assert b.count == int(slow_boundary(mask, d).sum())


# ------------------------------------------------------------------------------------------
# Boundary AP against a slow reference
# ------------------------------------------------------------------------------------------
def _ellipse(rng, h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1).astype(np.uint8)


def boundary_dataset(seed):
    """Small images (d = 1..2), elliptic masks (some cut by the image border, one crowd),
    detections near the ground truth, random ones and an empty one."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": 1, "name": "a", "frequency": "f", "image_count": 300},
        {"id": 2, "name": "b", "frequency": "c", "image_count": 30},
        {"id": 3, "name": "c", "frequency": "r", "image_count": 3},
    ]
    images, anns, results = [], [], []
    for iid in range(1, 9):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        images.append(
            {
                "id": iid,
                "height": h,
                "width": w,
                "neg_category_ids": [3] if iid % 3 == 0 else [],
                "not_exhaustive_category_ids": [],
            }
        )
        gts = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(1, 3)) if iid % 3 == 0 else int(rng.integers(1, 4))
            cy, cx = rng.uniform(-3, h + 3), rng.uniform(-3, w + 3)
            m = _ellipse(rng, h, w, cy, cx, rng.uniform(4, h / 2), rng.uniform(4, w / 2))
            if m.sum() == 0:
                continue
            ann = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": c,
                "segmentation": _rle(m),
                "area": float(m.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(_rle(m))],
            }
            if len(anns) == 3:
                ann["iscrowd"] = 1  # min() is for non-crowd ground truth only
            anns.append(ann)
            gts.append((c, m))
        for _ in range(int(rng.integers(4, 12))):
            if gts and rng.random() < 0.7:
                c, m = gts[int(rng.integers(len(gts)))]
                dy, dx = rng.integers(-3, 4, size=2)
                dm = np.roll(np.roll(m, int(dy), 0), int(dx), 1)
                if rng.random() < 0.5:  # thinner or fatter by a pixel
                    dm = slow_boundary(dm, 1).astype(np.uint8) ^ dm if rng.random() < 0.5 else dm
                if rng.random() < 0.2:
                    c = int(rng.integers(1, 4))
            else:
                c = int(rng.integers(1, 4))
                dm = _ellipse(
                    rng,
                    h,
                    w,
                    rng.uniform(0, h),
                    rng.uniform(0, w),
                    rng.uniform(3, 20),
                    rng.uniform(3, 20),
                )
            results.append(
                {
                    "image_id": iid,
                    "category_id": c,
                    "score": round(float(rng.random()), 2),
                    "segmentation": _rle(dm),
                    "bbox": [float(v) for v in mask_utils.toBbox(_rle(dm))],
                }
            )
    results.append(
        {
            "image_id": 1,
            "category_id": anns[0]["category_id"],
            "score": 0.99,
            "segmentation": _rle(np.zeros((images[0]["height"], images[0]["width"]))),
            "bbox": [1.0, 1.0, 5.0, 5.0],
        }
    )
    return {"images": images, "annotations": anns, "categories": cats}, results


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
    ours = evaluate_lvis(ds, res, "boundary")
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
    gt_mask, det_mask = _square(40, 40, 10, 10, 20), _square(40, 40, 10, 12, 20)
    assert boundary_iou(_boundary(gt_mask), _boundary(det_mask)) == pytest.approx(36 / 116)
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
                    "segmentation": _rle(gt_mask),
                    "area": 400.0,
                    "bbox": [10, 10, 20, 20],
                }
            ],
        }
        res = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rle(det_mask)}]
        out[crowd] = evaluate_lvis(ds, res, "boundary")
        segm = evaluate_lvis(ds, res, "segm")
        assert float(segm.results["AP50"]) == pytest.approx(1.0, abs=1e-12)
    assert float(out[0].results["AP50"]) == 0.0  # min(0.82, 0.31) < 0.5
    assert float(out[1].results["AP50"]) == pytest.approx(1.0, abs=1e-12)  # crowd: mask IoU 0.82
    # matched up to IoU 0.80 (thresholds .50:.05:.80 of ten): AP = 7 / 10
    assert float(out[1].results["AP"]) == pytest.approx(0.7, abs=1e-12)
