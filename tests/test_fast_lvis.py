"""balms_det.evaluation.fast_lvis must equal lvis-api 0.5.3 (run under the numpy shim)."""

import copy
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from balms_det.evaluation.fast_lvis import LVISGroundTruth, LVISInputError, evaluate_lvis
from balms_det.evaluation.lvis_compat import lvis_numpy_compat, run_lvis_api

TOL = 1e-9


# ---------------------------------------------------------------------------------------
# synthetic LVIS-format data
# ---------------------------------------------------------------------------------------
def _polygon(rng, x, y, w, h, n=None):
    """A star-ish polygon inside the box (x, y, w, h)."""
    n = n or int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.55, 1.0, n)
    cx, cy = x + w / 2, y + h / 2
    px = cx + np.cos(ang) * rad * w / 2
    py = cy + np.sin(ang) * rad * h / 2
    return [round(float(v), 2) for xy in zip(px, py) for v in xy]


def _rle_str(rle):
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def make_dataset(seed, n_img=30, n_cat=8, adversarial=False):
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 40), n_cat, replace=False).tolist())
    freqs = ["r", "c", "f"]
    cats = []
    for i, cid in enumerate(cat_ids):
        f = freqs[i % 3]
        img_count = {"r": 5, "c": 50, "f": 500}[f]
        cats.append(
            {
                "id": cid,
                "name": "cat%d" % cid,
                "synonyms": [],
                "def": "",
                "frequency": f,
                "image_count": img_count,
                "instance_count": img_count * 2,
            }
        )
    images, anns = [], []
    aid = 1
    img_ids = sorted(rng.choice(np.arange(1, 10 * n_img), n_img, replace=False).tolist())
    for j, iid in enumerate(img_ids):
        w, h = int(rng.integers(120, 330)), int(rng.integers(100, 300))
        n_pos = 0 if j % 7 == 3 else int(rng.integers(1, 4))  # some images without gt
        pos = rng.choice(cat_ids, n_pos, replace=False).tolist() if n_pos else []
        others = [c for c in cat_ids if c not in pos]
        neg = rng.choice(
            others, int(rng.integers(0, min(4, len(others)) + 1)), replace=False
        ).tolist()
        nel = [c for c in pos if rng.random() < 0.3]
        images.append(
            {
                "id": iid,
                "width": w,
                "height": h,
                "file_name": "%d.jpg" % iid,
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": nel,
            }
        )
        for c in pos:
            for _ in range(int(rng.integers(1, 5))):
                # sizes spanning small / medium / large
                s = float(np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.95))))
                bw = min(w - 1.0, s * rng.uniform(0.6, 1.5))
                bh = min(h - 1.0, s * rng.uniform(0.6, 1.5))
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                polys = [_polygon(rng, x, y, bw, bh)]
                if rng.random() < 0.2:  # two-part mask
                    polys.append(_polygon(rng, x, y, bw / 2, bh / 2))
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                area = float(mask_utils.area(rle))
                ann = {
                    "id": aid,
                    "image_id": iid,
                    "category_id": c,
                    "segmentation": polys,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": area,
                }
                if adversarial:
                    u = rng.random()
                    if u < 0.05:
                        ann["area"] = 0.0  # dropped by lvis-api
                    elif u < 0.1:
                        ann["ignore"] = 1
                    elif u < 0.15 and anns and anns[-1]["image_id"] == iid:
                        # duplicate of the previous ground truth: ties in IoU
                        prev = anns[-1]
                        ann.update(
                            category_id=prev["category_id"],
                            bbox=list(prev["bbox"]),
                            segmentation=copy.deepcopy(prev["segmentation"]),
                            area=prev["area"],
                        )
                anns.append(ann)
                aid += 1
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


def make_results(dataset, seed, dets_per_img=(0, 40), adversarial=False, big_image=None):
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in dataset["categories"]]
    by_img = {}
    for a in dataset["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    results = []
    for im in dataset["images"]:
        iid, w, h = im["id"], im["width"], im["height"]
        gts = by_img.get(iid, [])
        n = int(rng.integers(*dets_per_img))
        if big_image is not None and iid == dataset["images"][0]["id"]:
            n = big_image
        for _ in range(n):
            u = rng.random()
            poly = None
            if gts and u < 0.55:  # near a ground truth: its polygons moved and scaled
                g = gts[int(rng.integers(len(gts)))]
                gx, gy, gw, gh = g["bbox"]
                j = rng.uniform(0, 0.25)
                x = gx + rng.normal(0, j * gw)
                y = gy + rng.normal(0, j * gh)
                sx, sy = np.exp(rng.normal(0, j, 2))
                bw, bh = max(1.0, gw * sx), max(1.0, gh * sy)
                poly = [
                    [
                        round(float(v), 2)
                        for v in np.stack(
                            [x + (np.array(p[0::2]) - gx) * sx, y + (np.array(p[1::2]) - gy) * sy],
                            1,
                        ).ravel()
                    ]
                    for p in g["segmentation"]
                ]
                c = g["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            else:
                bw, bh = rng.uniform(3, w * 0.7), rng.uniform(3, h * 0.7)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                if u < 0.75 and im["neg_category_ids"]:
                    c = int(rng.choice(im["neg_category_ids"]))
                else:
                    c = int(rng.choice(cat_ids))
            x, y = float(np.clip(x, 0, w - 2)), float(np.clip(y, 0, h - 2))
            bw, bh = float(min(bw, w - x)), float(min(bh, h - y))
            score = float(np.float32(rng.random()))
            if adversarial and rng.random() < 0.3:
                score = round(score, 1)  # ties
            if poly is None:
                poly = [_polygon(rng, x, y, bw, bh)]
            det = {
                "image_id": iid,
                "category_id": c,
                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                "score": score,
            }
            r = rng.random()
            if adversarial and r < 0.05:
                det["bbox"][2] = 0.0  # zero-area box: dropped (area = w * h)
            elif adversarial and r < 0.1:  # empty mask, non-empty box
                det["segmentation"] = _rle_str(
                    mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
                )
            if "segmentation" not in det:
                if adversarial and r > 0.8:
                    det["segmentation"] = poly  # polygons instead of RLE
                else:
                    det["segmentation"] = _rle_str(
                        mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
                    )
            results.append(det)
            if adversarial and rng.random() < 0.05:
                results.append(copy.deepcopy(det))  # exact duplicate: ties everywhere
    order = rng.permutation(len(results))
    return [results[i] for i in order]


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


def test_file_streaming_in_small_chunks(tmp_path, monkeypatch):
    """Chunked reading of a results file cut at many places (also inside strings), in byte
    ranges read by two processes."""
    import balms_det.evaluation.fast_lvis as fl
    from balms_det.evaluation import _json

    ds = make_dataset(5, n_img=12)
    res = make_results(ds, 6)
    for i in range(0, len(res), 7):  # strings that look like element boundaries
        res[i]["note"] = '}, {"a": 1}, {'
    res_path = _write(tmp_path, "res.json", res)
    expected = json.loads(open(res_path).read())
    ((first, stop, last),) = _json.array_ranges(res_path, 1)
    chunks = [c for c, _ in _json.iter_array(res_path, first, stop, last, chunk_bytes=997)]
    assert len(chunks) > 3
    assert [d for c in chunks for d in c] == expected
    monkeypatch.setattr(_json, "CHUNK_BYTES", 1500)
    ranges = _json.array_ranges(res_path, 3)
    assert len(ranges) == 3 and ranges[-1][2] and not ranges[0][2]
    got = [d for r in ranges for c, _ in _json.iter_array(res_path, *r) for d in c]
    assert got == expected
    ref = run_lvis_api(_write(tmp_path, "gt.json", ds), copy.deepcopy(res), "bbox")
    monkeypatch.setattr(fl, "PARALLEL_MIN_BYTES", 0)
    assert_same(fl.evaluate_lvis(ds, res_path, "bbox", workers=2), ref)
    assert_same(fl.evaluate_lvis(ds, res_path, "bbox", workers=1), ref)


def test_strip_segmentations_is_exact():
    """Parsing without the segmentations (the bbox path) gives every other value, and gives up
    where the text is not what it looks like."""
    from balms_det.evaluation import _json
    from balms_det.evaluation.detections_io import strip_segmentations

    ds = make_dataset(25, n_img=6)
    res = make_results(ds, 26)
    res = [r for r in res if isinstance(r["segmentation"], dict)]
    for r in res[::5]:
        r["segmentation"]["counts"] += "\\"  # a counts string ending with a backslash
    text = json.dumps(res)[1:-1].encode()
    stripped = strip_segmentations(text)
    assert stripped is not None and len(stripped) < len(text) / 2
    got = _json.loads(b"[" + stripped + b"]")
    assert got == [{k: v for k, v in r.items() if k != "segmentation"} for r in res]
    # an escaped quote in some string: every quote is no longer a delimiter
    odd = json.dumps([dict(res[0], note='say "hi"')] + res[1:])[1:-1].encode()
    assert strip_segmentations(odd) is None
    # the pattern inside a string (after an odd number of quotes) is left alone
    inside = b'{"image_id": 1, "note": "x, "segmentation": {"size": [1, 1], "counts": "P"}"}'
    assert strip_segmentations(inside) is None
    # not the last member of an object, or after no value
    assert (
        strip_segmentations(b'{"a": 1, "segmentation": {"size": [1, 1], "counts": "P"}, "b": 2}')
        is None
    )
    assert strip_segmentations(b'[1, "segmentation": {"size": [1, 1], "counts": "P"}]') is None


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


def _rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_handcrafted_ties_ignore_and_id_zero(tmp_path):
    """IoU ties between ground truth (the last one wins), ignored ground truth taken only
    when no regular one matches, ground truth with id 0, ties in score across images."""
    cats = [
        {
            "id": 1,
            "name": "a",
            "frequency": "f",
            "image_count": 200,
            "instance_count": 400,
            "synonyms": [],
            "def": "",
        },
        {
            "id": 2,
            "name": "b",
            "frequency": "r",
            "image_count": 2,
            "instance_count": 2,
            "synonyms": [],
            "def": "",
        },
    ]
    images = [
        {
            "id": i,
            "width": 64,
            "height": 48,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for i in (1, 2, 3)
    ]
    images[2]["neg_category_ids"] = [2]

    def gt(aid, img, cat, box, **kw):
        return dict(
            {
                "id": aid,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": float(box[2] * box[3]),
                "segmentation": _rect(*box),
            },
            **kw,
        )

    anns = [
        gt(5, 1, 1, [0, 0, 10, 10]),
        gt(6, 1, 1, [2, 0, 10, 10]),  # tie for [1, 0, 10, 10]
        gt(7, 2, 1, [0, 0, 10, 10]),
        gt(8, 2, 1, [1, 0, 10, 10], ignore=1),
        gt(0, 3, 1, [20, 20, 12, 12]),
        gt(9, 2, 2, [30, 10, 20, 20]),
    ]

    def det(img, cat, box, score):
        return {
            "image_id": img,
            "category_id": cat,
            "bbox": box,
            "score": score,
            "segmentation": _rect(*box),
        }

    res = [
        det(1, 1, [1, 0, 10, 10], 0.9),
        det(1, 1, [40, 30, 10, 10], 0.85),
        det(1, 1, [0, 0, 10, 10], 0.8),
        det(2, 1, [1, 0, 10, 10], 0.9),
        det(2, 1, [40, 30, 10, 10], 0.85),
        det(2, 1, [0, 0, 10, 10], 0.8),
        det(3, 1, [20, 20, 12, 12], 0.9),
        det(3, 2, [30, 10, 20, 20], 0.85),
        det(2, 2, [30, 10, 20, 20], 0.85),
        det(1, 2, [0, 0, 5, 5], 0.95),
    ]
    ds = {"images": images, "annotations": anns, "categories": cats}
    gt_path = _write(tmp_path, "gt.json", ds)
    for iou_type in ("bbox", "segm"):
        ref = run_lvis_api(gt_path, copy.deepcopy(res), iou_type)
        assert_same(evaluate_lvis(ds, res, iou_type), ref)
