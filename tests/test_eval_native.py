"""The compiled reading path (balms_det/evaluation/_ccore.c via _native.py) must give exactly what
the Python reader gives: the same numbers from the same text, the same mask IoUs as pycocotools,
the same evaluation, and the same errors (it hands anything unusual to the Python reader)."""

import json
import struct

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from test_fast_lvis import make_dataset, make_results

from balms_det.evaluation import _json, _native
from balms_det.evaluation.fast_lvis import LVISInputError, evaluate_protocols

needs_core = pytest.mark.skipif(
    not _native.available(), reason="the compiled core is not built (pip install -e .)"
)


def test_compiled_core_is_built():
    """`pip install -e .` (scripts/ensure_venv.sh) builds the core, from this checkout's source:
    CI must not silently test only the Python reader (the other tests here skip without it)."""
    from balms_det.evaluation import _ccore

    assert _ccore.VERSION == _native.CCORE_VERSION
    assert _native.available()


def _bits(x):
    return struct.pack("<d", x)


def _number_texts(rng):
    """Number spellings as files hold them, and the hard cases of decimal -> binary."""
    f32 = rng.random(3000).astype(np.float32).astype(np.float64) * 10.0 ** rng.integers(-3, 4, 3000)
    wide = rng.standard_normal(3000) * 10.0 ** rng.integers(-30, 30, 3000)
    texts = [repr(float(v)) for v in np.concatenate([f32, wide])]
    texts += ["%.2f" % v for v in rng.uniform(0, 2000, 1000)]
    texts += ["%.19e" % v for v in rng.uniform(0, 1, 500)]  # 20 significant digits
    texts += [str(int(v)) for v in rng.integers(-(2**62), 2**62, 300)]
    texts += [
        "0", "-0", "0.0", "-0.0", "1", "-1", "0e5", "1E2", "1e+2", "1e-2", "123.456e-3",
        "9007199254740993",  # 2**53 + 1: halfway between two doubles
        "9007199254740993.0", "18446744073709551615", "18446744073709551616",
        "123456789012345678901234567890", "0.1", "0.3", "2.5e-8", "5e-324", "2e-324",
        "2.2250738585072011e-308", "2.2250738585072014e-308", "1.7976931348623157e308",
        "1e23", "8.98846567431158e307", "4.35679856e-5", "0.000000000000000000000000001",
        "1e400", "-1e400", "1" + "0" * 400,
    ]  # fmt: skip
    return texts


@needs_core
def test_scanned_numbers_equal_python_float():
    """Every score, box coordinate and id is the double (int) that Python's json reads: the
    fast conversions, the halfway cases, subnormals, overflow (to the Python reader)."""
    texts = _number_texts(np.random.default_rng(0))
    for t in texts:
        piece = '{"image_id": 1, "category_id": 2, "score": %s, "bbox": [%s, 0, %s, 1]}' % (t, t, t)
        expected = json.loads(piece)
        s = _native.scan(piece.encode())
        v = expected["score"]
        if (isinstance(v, int) and abs(v) >= 2**1024) or abs(float(v)) == float("inf"):
            # not finite, or too large for a double: the Python reader decides (and raises)
            assert s is None or not np.isfinite(s.score[0])
            continue
        assert s is not None and s.n == 1, t
        want = float(expected["score"])
        assert _bits(float(s.score[0])) == _bits(want), t
        assert _bits(float(s.box[0, 0])) == _bits(float(expected["bbox"][0])), t
    ids = '{"image_id": -123456789012345678, "category_id": 0, "score": 1}'
    s = _native.scan(ids.encode())
    assert s.img.tolist() == [-123456789012345678] and s.cat.tolist() == [0]


GOOD = (
    b'{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5, '
    b'"segmentation": {"size": [4, 5], "counts": "a\\\\b"}, "x": [{"y": null}, true, "\\u00e9"]}'
)


@needs_core
@pytest.mark.parametrize(
    "text,ok",
    [
        (GOOD, True),
        (GOOD + b", " + GOOD, True),
        (b' \n{"score": 1, "category_id": 3, "image_id": 2}\t', True),  # any key order
        (b'{"image_id": 1, "category_id": 2, "score": 1, "image_id": 7}', True),  # last wins
        (GOOD + b",", False),  # trailing comma
        (GOOD + b" " + GOOD, False),  # no comma
        (b'{"image_id": 1, "category_id": 2, "score": 01}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1.}', False),
        (b'{"image_id": 1, "category_id": 2, "score": -}', False),
        (b'{"image_id": 1, "category_id": 2, "score": .5}', False),
        (b'{"image_id": 1, "category_id": 2 "score": 1}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\\x"}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\x01"}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "open}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": [1, 2,]}', False),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": tru}', False),
        (b'{"image_id": 1, "category_id": 2, "score": NaN}', None),  # Python's json takes it
        (b'{"image_id": 1, "category_id": 2, "score": -Infinity}', None),
        (b'{"image_id": 1.0, "category_id": 2, "score": 1}', None),  # integral float id
        (b'{"image_id": 1, "category_id": 2}', None),  # no score: the Python reader says so
        (b'{"image_id": 1, "category_id": 2, "score": 1, "n\\u0061me": 1}', None),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\xc3\xa9"}', None),  # UTF-8
        (b"[1, 2]", None),  # not an object
    ],
)
def test_scanner_takes_only_valid_json(text, ok):
    """The scanner returns columns only for valid JSON (chunk boundaries are proved by it), and
    the Python reader's values; anything else (None) goes to the Python reader."""
    s = _native.scan(text)
    try:
        parsed = json.loads(b"[" + text + b"]")
    except ValueError:
        parsed = None
    if ok is False:
        assert s is None and parsed is None
        return
    if ok is None:
        assert s is None
        return
    assert s is not None and s.n == len(parsed)
    for k, d in enumerate(parsed):
        assert (s.img[k], s.cat[k], s.score[k]) == (d["image_id"], d["category_id"], d["score"])
        if "segmentation" in d:
            a, b = s.seg[k, 0:2]
            assert json.loads(s.text[a:b]) == d["segmentation"]
            cs, ce = s.seg[k, 4:6]
            assert json.loads(b'"' + s.text[cs:ce] + b'"') == d["segmentation"]["counts"]
            assert s.seg[k, 2:4].tolist() == d["segmentation"]["size"]


def _random_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        kind = k % 5
        if kind == 0:
            continue  # empty
        if kind == 1:
            masks[k] = 1  # full
            continue
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = rng.integers(x0, w + 1), rng.integers(y0, h + 1)
        masks[k, y0:y1, x0:x1] = 1
        masks[k] &= (rng.random((h, w)) < (0.97 if kind == 2 else 0.6)).astype(np.uint8)
    return masks


@needs_core
def test_mask_ious_and_areas_equal_pycocotools():
    """IoUs bit-equal to pycocotools' (iscrowd 0) and areas equal to mask_utils.area, for
    empty, full, sparse and overlapping masks, counts strings with JSON escapes included."""
    rng = np.random.default_rng(1)
    h, w = 23, 31
    dets = [mask_utils.encode(np.asfortranarray(m)) for m in _random_masks(rng, 40, h, w)]
    gts = [mask_utils.encode(np.asfortranarray(m)) for m in _random_masks(rng, 12, h, w)]
    text = json.dumps([{"counts": d["counts"].decode()} for d in dets]).encode()
    assert b"\\\\" in text  # a backslash in some counts string, escaped in JSON
    spans, escaped = [], []
    pos = 0
    for d in dets:
        raw = json.dumps(d["counts"].decode())[1:-1].encode()
        pos = text.index(raw, pos)
        spans.append((pos, pos + len(raw)))
        escaped.append(b"\\" in raw)
        pos += len(raw)
    masks = _native.GroundTruthMasks.build(gts)
    m = len(dets)
    g_first = rng.integers(0, 6, m)
    g_num = rng.integers(0, 7, m)
    out_off = np.r_[0, np.cumsum(g_num)[:-1]].astype(np.int64)
    vals = np.full(int(g_num.sum()), np.nan)
    area = np.empty(m)
    bad = _native._ccore.mask_ious(
        text,
        np.array(spans, np.int64),
        np.array(escaped, np.uint8),
        np.full(m, h, np.int64),
        np.full(m, w, np.int64),
        g_first.astype(np.int64),
        g_num.astype(np.int64),
        out_off,
        masks.counts,
        masks.off,
        masks.h,
        masks.w,
        vals,
        area,
    )
    assert bad == -1
    assert area.tolist() == mask_utils.area(dets).astype(float).tolist()
    for j in range(m):
        if g_num[j] == 0:
            continue
        ref = mask_utils.iou([dets[j]], gts[g_first[j] : g_first[j] + g_num[j]], [0] * g_num[j])
        got = vals[out_off[j] : out_off[j] + g_num[j]]
        assert got.tobytes() == np.asarray(ref, np.float64).ravel().tobytes()
    # a counts string pycocotools' decoder handles differently is left to it
    assert _native.GroundTruthMasks.build([{"size": [2, 2], "counts": "\x7f"}]) is None
    assert _native.GroundTruthMasks.build([{"size": [2, 2], "counts": "04"}]) is not None
    assert _native.GroundTruthMasks.build([{"size": [2, 2], "counts": "03"}]) is None  # sum 3


def _evaluate_both(monkeypatch, gt, path, iou_type, **kw):
    out = []
    for off in ("1", "0"):
        monkeypatch.setenv("BALMS_NO_CCORE", off)
        try:
            out.append(evaluate_protocols(gt, path, iou_type, ("standard", "fixed", "pool"), **kw))
        except LVISInputError as e:
            out.append(str(e))
    return out


@needs_core
@pytest.mark.parametrize("iou_type", ["bbox", "segm", "boundary"])
@pytest.mark.parametrize("adversarial", [False, True])
def test_compiled_and_python_readers_evaluate_the_same(
    tmp_path, monkeypatch, iou_type, adversarial
):
    """Whole evaluations, every protocol, through the compiled reader and the Python reader, in
    small chunks and two processes: equal precision, recall and counts."""
    import balms_det.evaluation.fast_lvis as fl

    ds = make_dataset(7, n_img=14, adversarial=adversarial)
    res = make_results(ds, 8, adversarial=adversarial)
    for i in range(0, len(res), 9):  # text that looks like element boundaries
        res[i]["note"] = '}, {"a": 1}, {'
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    monkeypatch.setattr(_json, "SCAN_CHUNK_BYTES", 3000)
    monkeypatch.setattr(fl, "PARALLEL_MIN_BYTES", 0)
    taken = []
    columns = _native.native_columns

    def counted(s, how):
        got = columns(s, how)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(_native, "native_columns", counted)
    for kw in (dict(workers=2), dict(workers=1, ignore_boxes=True)):
        python, native = _evaluate_both(monkeypatch, ds, str(path), iou_type, **kw)
        # the compiled reader read chunks itself where it can: not for boxes made from masks
        # (bbox, boxes ignored); chunks with polygons (adversarial) only where no mask is read
        masks_read = iou_type != "bbox" or kw.get("ignore_boxes")
        if not (adversarial and masks_read):
            expected = not (iou_type == "bbox" and masks_read)
            assert any(taken) == expected, taken
        taken.clear()
        for p in ("standard", "fixed", "pool"):
            assert np.array_equal(python[p].precision, native[p].precision), (p, kw)
            assert np.array_equal(python[p].recall, native[p].recall), (p, kw)
            assert np.array_equal(python[p].num_dets, native[p].num_dets), (p, kw)


@needs_core
@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(score=float("nan")),
        lambda d: d.update(bbox=[1, 2, float("inf"), 3]),
        lambda d: d.update(segmentation=[[1, 2, 3, 4]]),  # a 2-point polygon
        lambda d: d["segmentation"].update(size=[1, 1]),  # not the image's size
        lambda d: d.update(image_id=999999),  # unknown image
        lambda d: d.pop("score"),
    ],
)
def test_compiled_reader_raises_the_python_readers_errors(tmp_path, monkeypatch, change):
    ds = make_dataset(9, n_img=6)
    res = make_results(ds, 10, dets_per_img=(5, 10))
    change(res[len(res) // 2])
    path = tmp_path / "res.json"
    path.write_text(json.dumps(res))
    python, native = _evaluate_both(monkeypatch, ds, str(path), "segm")
    assert isinstance(python, str) and python == native
    assert str(path) in native and ("#%d" % (len(res) // 2) in native or "999999" in native)


@needs_core
def test_polygons_rasterised_as_pycocotools():
    """Ground-truth polygons (one or several per annotation, inside, across and outside the
    image border, integer, half-integer and arbitrary coordinates, small and large images) give
    exactly pycocotools' masks (frPyObjects then merge)."""
    rng = np.random.default_rng(3)
    for trial in range(400):
        small = trial % 2
        h, w = (rng.integers(1, 40, 2) if small else rng.integers(60, 300, 2)).tolist()
        polys = []
        for _ in range(int(rng.integers(1, 4))):
            pts = rng.uniform(-5, max(h, w) + 5, 2 * int(rng.integers(3, 12)))
            if trial % 3 == 1:
                pts = np.round(pts * 2) / 2
            polys.append(pts.tolist())
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
        off = np.empty(2, np.int64)
        counts = _native._ccore.polygons_to_rles(
            np.array([v for p in polys for v in p]),
            np.cumsum([0] + [len(p) for p in polys]).astype(np.int64),
            np.array([0, len(polys)], np.int64),
            np.array([h], np.int64),
            np.array([w], np.int64),
            off,
        )
        counts = np.frombuffer(counts, np.uint32).astype(np.int64)
        assert off.tolist() == [0, len(counts)] and counts.sum() == h * w
        ours = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
        assert np.array_equal(ours.reshape(w, h).T, ref), trial
