"""Boundary IoU and boundary AP (Cheng et al. 2021) of balms_det.evaluation: hand-computed
masks, and boundary AP against an independent slow implementation (full-image masks, d
erosions by a 3 x 3 square with numpy) plugged into lvis-api's own matching; the compiled
core's boundary IoUs (_ccore.boundary_min) bit-equal to the numpy ones, and boundary AP read
through the core equal to the Python reader's."""

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis import LVIS, LVISEval, LVISResults

from balms_det.evaluation import _native
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


# ------------------------------------------------------------------------------------------
# The compiled core's boundary IoUs
# ------------------------------------------------------------------------------------------
needs_core = pytest.mark.skipif(
    not _native.available(), reason="the compiled core is not built (pip install -e .)"
)


def _core_boundary_ious(dets, gts, d, escape=False, start=2.0):
    """(len(dets), len(gts)) min(start, boundary IoU) from _ccore.boundary_min: detections as
    counts strings in one text (JSON-escaped where ``escape``), ground truth decoded by
    decode_rles, every pair."""
    h, w = dets[0]["size"] if dets else gts[0]["size"]
    texts = [r["counts"] for r in dets]
    if escape:
        texts = [t.replace(b"\\", b"\\\\") for t in texts]
    st = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    m, G = len(dets), len(gts)
    gtext = b"".join(r["counts"] for r in gts)
    gst = np.cumsum([0] + [len(r["counts"]) for r in gts]).astype(np.int64)
    gh, gw = np.full(G, h, np.int64), np.full(G, w, np.int64)
    counts, off = np.empty(max(len(gtext), 1), np.uint32), np.empty(G + 1, np.int64)
    assert _native._ccore.decode_rles(gtext, gst, gh, gw, counts, off) == -1
    vals = np.full(m * G, start)
    bad = _native._ccore.boundary_min(
        b"".join(texts),
        np.ascontiguousarray(np.stack([st[:-1], st[1:]], 1)),
        np.full(m, int(escape), np.uint8),
        np.full(m, h, np.int64),
        np.full(m, w, np.int64),
        np.full(m, d, np.int64),
        np.repeat(np.arange(m), G),
        np.tile(np.arange(G), m),
        np.arange(m * G),
        counts[: off[-1]],
        off,
        gh,
        gw,
        vals,
    )
    assert bad == -1
    return vals.reshape(m, G)


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


def _compressed(mask):
    return mask_utils.encode(np.asfortranarray(mask))


@needs_core
def test_compiled_boundary_ious_equal_numpy_reference():
    """Every pair of random and adversarial masks (empty, full, one pixel, border lines and
    corners, thin lines, rings, speckle, d larger than the object), at the image's d and at
    d = 1, 2, 7, 60: the core's boundary IoU is bit-equal to boundary.boundary_iou, with plain
    and JSON-escaped counts strings; min() with the value already there."""
    rng = np.random.default_rng(5)
    sizes = [(1, 1), (1, 7), (9, 1), (2, 2), (5, 3)] + [
        (int(rng.integers(3, 70)), int(rng.integers(3, 70))) for _ in range(14)
    ]
    escaped_seen = False
    for h, w in sizes:
        rles = [_compressed(m) for m in _adversarial_masks(rng, h, w)]
        for d in sorted({dilation(h, w), 1, 2, 7, 60}):
            crops = boundary_crops(rles, d)
            ref = np.array([[boundary_iou(a, b) for b in crops] for a in crops])
            escape = any(b"\\" in r["counts"] for r in rles)
            escaped_seen |= escape
            got = _core_boundary_ious(rles, rles, d, escape=escape)
            assert got.tobytes() == ref.tobytes(), (h, w, d)
    assert escaped_seen  # some counts strings hold a backslash: the escaped path was run
    # min() with what is there: a value below the boundary IoU stays
    sq = [_compressed(_square(40, 40, 5, 5, 10)), _compressed(_square(40, 40, 5, 6, 10))]
    got = _core_boundary_ious(sq, sq, 1, start=0.3)
    np.testing.assert_array_equal(got, [[0.3, 0.3], [0.3, 0.3]])  # 1.0 and 1/3 above 0.3
    got = _core_boundary_ious(sq, sq, 1, start=0.5)
    assert got[0, 1] == got[1, 0] == 18 / 54 and got[0, 0] == 0.5


@needs_core
def test_compiled_boundaries_of_non_canonical_rles():
    """Counts with zero-length runs (touching runs of ones, leading zeros) as pycocotools
    accepts them: the same boundary IoUs as the numpy reference, and the numpy reference the
    slow one's."""
    rng = np.random.default_rng(1)
    h, w = 6, 5
    lists = [[2, 3, 0, 2, 23], [0, 0, 5, 3, 22], [0, 30], [5, 0, 0, 4, 21], [3, 2, 0, 0, 0, 4, 21]]
    for _ in range(20):  # random runs, some of length 0
        c = rng.integers(0, 4, int(rng.integers(2, 12))).tolist()
        if sum(c) < h * w:
            lists.append(c + [h * w - sum(c)])
    rles = [mask_utils.frPyObjects({"size": [h, w], "counts": c}, h, w) for c in lists]
    for d in (1, 2):
        crops = boundary_crops(rles, d)
        for r, b in zip(rles, crops):
            assert b.count == int(slow_boundary(mask_utils.decode(r), d).sum())
        ref = np.array([[boundary_iou(a, b) for b in crops] for a in crops])
        assert _core_boundary_ious(rles, rles, d).tobytes() == ref.tobytes()


@needs_core
@pytest.mark.parametrize("seed", [0, 1])
def test_boundary_ap_through_the_core_equals_python_reader(tmp_path, monkeypatch, seed):
    """A results file evaluated for boundary AP with the compiled reader (which computes the
    boundary IoUs in the core) and with BALMS_NO_CCORE=1: the same precision and recall,
    bit for bit, and the slow reference's; the core did compute boundary IoUs."""
    ds, res = boundary_dataset(seed)
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    pairs = []
    core_min = _native._ccore.boundary_min

    def counted(*args):
        pairs.append(len(args[6]))
        return core_min(*args)

    monkeypatch.setattr(_native._ccore, "boundary_min", counted)
    out = {}
    for off in ("1", "0"):
        monkeypatch.setenv("BALMS_NO_CCORE", off)
        for ignore in (False, True):
            out[off, ignore] = evaluate_lvis(ds, str(path), "boundary", ignore_boxes=ignore)
    assert sum(pairs) > 10  # the core's path was taken (twice), with pairs to compute
    for ignore in (False, True):
        a, b = out["0", ignore], out["1", ignore]
        assert a.precision.tobytes() == b.precision.tobytes()
        assert a.recall.tobytes() == b.recall.tobytes()
        assert a.results == b.results
    gt_path = str(tmp_path / "gt.json")
    with open(gt_path, "w") as f:
        json.dump(ds, f)
    ref = slow_boundary_ap(gt_path, res)
    np.testing.assert_allclose(out["0", False].precision, ref.eval["precision"], rtol=0, atol=TOL)
