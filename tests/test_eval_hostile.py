"""Hostile input files: malformed RLE strings, polygons far outside the image, invalid UTF-8,
deep nesting, huge numbers. Each is an LVISInputError naming the file (and the detection or
annotation), the same through the compiled reader and the Python reader, before any pycocotools
call (which would otherwise run for minutes or allocate gigabytes); and a seeded fuzz of
mutated results files runs through both readers with a time limit on every case."""

import copy
import json
import multiprocessing
import os
import re
import time

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from balms_det.evaluation import _native
from balms_det.evaluation.detections_io import (
    POLYGON_MARGIN,
    POLYGON_MAX_OUTLINE,
    RLE_MAX_RUN_CHARS,
    LVISInputError,
    bad_outlines,
    bad_rle_strings,
    outline_problem,
    rle_string_problem,
)
from balms_det.evaluation.fast_lvis import LVISGroundTruth, evaluate_lvis

# values of BALMS_NO_CCORE: the Python reader, and the compiled one where it is built
PATHS = ("1", "0") if _native.available() else ("1",)
SIZES = [(12, 17), (20, 9), (15, 15), (9, 22)]  # small images: a missed check shows as a hang


def _encode(xs):
    """pycocotools' rleToString of already delta-coded values ``xs`` (any integers)."""
    out = []
    for x in xs:
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def _dataset(seed=0):
    """A tiny LVIS dataset (polygon and RLE ground truth, one uncompressed RLE) and detections
    near it: RLE strings, a polygon, an uncompressed RLE, a box without a mask."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": c, "name": f"c{c}", "frequency": f, "image_count": 1, "instance_count": 1}
        for c, f in ((1, "r"), (2, "c"), (3, "f"))
    ]
    images, anns, dets = [], [], []
    for i, (h, w) in enumerate(SIZES):
        iid = i + 1
        images.append(
            {
                "id": iid,
                "height": h,
                "width": w,
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [],
            }
        )
        for k in range(2):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            x1, y1 = x0 + rng.uniform(2, w / 2), y0 + rng.uniform(2, h / 2)
            poly = [[round(v, 2) for v in (x0, y0, x1, y0 + 1, x1, y1, x0 + 1, y1)]]
            rle = mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
            seg = poly
            if k == 1 and i % 2:
                seg = {"size": [h, w], "counts": rle["counts"].decode()}
            if k == 1 and i == 2:  # uncompressed RLE (column-major runs, 0s first)
                flat = mask_utils.decode(rle).ravel(order="F")
                runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
                seg = {"size": [h, w], "counts": ([0] if flat[0] else []) + runs}
            ann = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": 1 + (k + i) % 2,
                "segmentation": seg,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
            }
            anns.append(ann)
            for j in range(3):  # detections near this ground truth
                m = mask_utils.decode(rle)
                m = np.roll(m, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), (0, 1))
                m &= (rng.random((h, w)) < 0.95).astype(np.uint8)
                r = mask_utils.encode(np.asfortranarray(m))
                d = {
                    "image_id": iid,
                    "category_id": ann["category_id"] if j < 2 else 3,
                    "score": round(float(rng.random()), 3),
                    "bbox": [round(v, 2) for v in mask_utils.toBbox(r).tolist()],
                    "segmentation": {"size": [h, w], "counts": r["counts"].decode()},
                }
                dets.append(d)
        dets[-1]["segmentation"] = [[1.0, 1.0, w - 2.0, 1.5, w / 2.0, h - 2.0]]
        if i == 1:
            del dets[-2]["segmentation"]  # scored with its box as polygon
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _outcome(gt, path, iou_type):
    try:
        r = evaluate_lvis(gt, path, iou_type, workers=1)
        return ("ok", r.precision.tobytes(), r.recall.tobytes())
    except LVISInputError as e:
        return ("error", str(e))
    except Exception as e:  # noqa: BLE001 (what the test reports)
        return ("crash", type(e).__name__, str(e)[:300])


def _both(gt, path, iou_type="segm"):
    """Outcomes of the Python reader and, where built, of the compiled reader."""
    out = []
    for off in PATHS:
        os.environ["BALMS_NO_CCORE"] = off
        out.append(_outcome(gt, path, iou_type))
    return out


@pytest.fixture(autouse=True)
def _restore_switch(monkeypatch):
    monkeypatch.setenv("BALMS_NO_CCORE", "0")  # _both sets it; monkeypatch restores it


def _assert_error(outcomes, *parts):
    for o in outcomes:
        assert o[0] == "error", o
        for p in parts:
            assert p in o[1], (p, o[1])
    assert len({o for o in outcomes}) == 1, outcomes  # the same message through both readers


# ------------------------------------------------------------------------------------------
# RLE strings
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "counts,hw,problem",
    [
        ("04", 4, None),  # [0, 4]
        ("1110", 4, None),  # [1, 1, 1, 1]: the 4th is a delta of 0 to the 2nd
        ("1111", 4, "sum to 5"),
        ("03", 4, "sum to 3"),
        ("", 4, "sum to 0"),
        ("0P", 4, "end inside a count"),  # 'P' continues the count
        ("0" + "o" * 40 + "4", 4, "more than 7 characters"),  # the 40-character run
        ("0\x7f", 4, "not one of '0'..'o'"),
        ("0\u00e9", 4, "byte 0xc3"),
        ("0O5", 4, "count #1 is -1"),  # 'O': -1 (sign bit, no continuation)
        (_encode([0, 5, 0, -20, 9]), 2**32 - 1, "count #3 is -15"),  # pycocotools: wraps
        (_encode([3, 2**31, 2**32 - 3 - 2**31]), 2**32, None),  # 7 characters per count
    ],
)
def test_rle_string_rules(counts, hw, problem):
    got = rle_string_problem(counts, hw)
    assert (got is None) if problem is None else (problem in got), got
    for off in PATHS:  # in numpy, and with the compiled core's help
        os.environ["BALMS_NO_CCORE"] = off
        flags = bad_rle_strings(["04", counts, counts.encode("utf-8"), "03"], [4, hw, hw, 4])
        assert flags.tolist() == [False] + [problem is not None] * 2 + [True]


def _mutations(rng, s):
    """Strings near ``s``: characters inserted, removed, replaced, the end cut."""
    out = []
    for _ in range(6):
        i = int(rng.integers(0, len(s) + 1))
        kind = rng.integers(0, 4)
        if kind == 0:
            ins = "".join(chr(int(c)) for c in rng.integers(40, 120, int(rng.integers(1, 12))))
            out.append(s[:i] + ins + s[i:])
        elif kind == 1:
            out.append(s[:i] + s[i + 1 :])
        elif kind == 2 and s:
            i = min(i, len(s) - 1)
            out.append(s[:i] + chr(int(rng.integers(46, 114))) + s[i + 1 :])
        else:
            out.append(s[:i])
    return out


def test_rle_rules_vectorised_as_one_at_a_time_and_in_the_core():
    """bad_rle_strings (all at once, in numpy or helped by the core) flags exactly the strings
    rle_string_problem rejects; pycocotools' own strings all pass; and the compiled decoder
    takes none that they reject."""
    rng = np.random.default_rng(4)
    strings, sizes = [], []
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        s = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        assert rle_string_problem(s, h * w) is None
        for t in [s] + _mutations(rng, s):
            strings.append(t)
            sizes.append((h, w))
    hws = [h * w for h, w in sizes]
    expected = [rle_string_problem(s, hw) is not None for s, hw in zip(strings, hws)]
    for off in PATHS:  # in numpy, and with the compiled core's help
        os.environ["BALMS_NO_CCORE"] = off
        assert bad_rle_strings(strings, hws).tolist() == expected
    assert 0.2 < np.mean(expected) < 0.95  # both kinds well represented
    if not _native.available():
        return
    for s, (h, w), bad in zip(strings, sizes, expected):
        built = _native.GroundTruthMasks.build([{"size": [h, w], "counts": s}])
        if bad:
            assert built is None, s  # left to the Python reader, which raises
        else:  # what the core decodes is pycocotools' mask
            ref = mask_utils.decode({"size": [h, w], "counts": s.encode()})
            assert built is not None and int(built.counts[1::2].sum()) == int(ref.sum())


@pytest.mark.skipif(not _native.available(), reason="the compiled core is not built")
def test_core_decoder_rejects_a_count_that_would_wrap_around():
    """A count below 0 after its delta, which pycocotools' uint32 counts wrap into a string
    whose counts sum to h * w: the compiled decoder refuses it, as the rules do."""
    s = _encode([0, 5, 0, -20, 9])
    rle = {"size": [65535, 65537], "counts": s}  # 2**32 - 1 pixels
    assert _native.GroundTruthMasks.build([rle]) is None
    assert "count #3 is -15" in rle_string_problem(s, 65535 * 65537)


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("cut", ["truncated", "long run"])
def test_malformed_rle_of_a_detection_is_named_by_both_readers(tmp_path, cut):
    """The cases that made pycocotools run for minutes (a truncated string) or overflow (a
    40-character run): an error naming the detection, at once, through both readers."""
    ds, dets = _dataset()
    i = next(k for k, d in enumerate(dets) if d["category_id"] != 3 and "counts" in str(d))
    c = dets[i]["segmentation"]["counts"]
    dets[i]["segmentation"]["counts"] = c[:-2] if cut == "truncated" else c[:2] + "9" * 40 + c[2:]
    path = _write(tmp_path / "res.json", dets)
    t0 = time.perf_counter()
    out = _both(LVISGroundTruth(_write(tmp_path / "gt.json", ds)), path)
    assert time.perf_counter() - t0 < 10
    d = dets[i]
    _assert_error(
        out,
        f"'{path}'",
        f"#{i} (image_id {d['image_id']}, category_id {d['category_id']})",
        "RLE count",
    )


def test_malformed_ground_truth_rle_is_named_by_both_readers(tmp_path):
    ds, dets = _dataset()
    a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], dict))
    a["segmentation"]["counts"] = a["segmentation"]["counts"][:-1]
    gt_path = _write(tmp_path / "gt.json", ds)
    res = _write(tmp_path / "res.json", dets)
    out = _both(gt_path, res)
    _assert_error(out, gt_path, f"annotation id {a['id']} (image {a['image_id']})", "RLE")
    # uncompressed ground truth RLE counts that do not sum to h * w
    ds, _ = _dataset()
    a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], dict))
    a["segmentation"] = {"size": a["segmentation"]["size"], "counts": [3, 4]}
    gt_path = _write(tmp_path / "gt2.json", ds)
    _assert_error(_both(gt_path, res), f"annotation id {a['id']}", "counts sum to 7")


# ------------------------------------------------------------------------------------------
# Polygons
# ------------------------------------------------------------------------------------------
def test_polygon_rules():
    """The margin (the image's own size beyond each side), its edges, and the outline cap."""
    h, w = 10, 20
    m = POLYGON_MARGIN
    ok = [0, 0, (1 + m) * w, 0, (1 + m) * w, (1 + m) * h, -m * w, -m * h]  # on the edges
    cases = [
        (ok, None),
        (ok[:2] + [(1 + m) * w + 0.01] + ok[3:], "x = 40.01 lies outside"),
        (ok[:3] + [-m * h - 0.5] + ok[4:], "y = -10.5 lies outside"),
        ([0, 0, 1e9, 0, 5, 5], "outside"),
        ([0, 0, 2**31, 0, 5, 5], "outside"),
        ([0, 0, 3, float("nan"), 5, 5], "non-finite"),
        ([0, 0, 3, 10**400, 5, 5], "non-finite"),
        ([0, 0, "3", 1, 5, 5], "non-numeric"),
    ]
    # a zigzag across the extended image: each step 3 w long in the max norm
    cap = POLYGON_MAX_OUTLINE * (h + 1) * (w + 1)
    steps = cap // (3 * w) + 1
    zig = [v for k in range(steps) for v in ((-w, -h) if k % 2 else (2 * w, 2 * h))]
    cases.append((zig, "outline is longer"))
    cases.append((zig[: 2 * (steps - 4)], None))  # a closed outline of (steps - 4) steps
    for poly, problem in cases:
        got = outline_problem([poly], h, w)
        assert (got is None) if problem is None else (problem in got), (poly[:6], got)
    flags = bad_outlines([[p] for p, _ in cases], [h] * len(cases), [w] * len(cases))
    assert flags.tolist() == [p is not None for _, p in cases]


@pytest.mark.parametrize("value", [1e9, 2**31, -(2**31)])
def test_huge_polygon_coordinates_are_named_for_detections_and_ground_truth(tmp_path, value):
    """pycocotools' rleFrPoly would allocate memory in proportion to them (1e9: ~24 GB)."""
    ds, dets = _dataset()
    i = next(k for k, d in enumerate(dets) if isinstance(d.get("segmentation"), list))
    dets[i]["segmentation"][0][2] = value
    gt = LVISGroundTruth(_write(tmp_path / "gt.json", ds))
    path = _write(tmp_path / "res.json", dets)
    d = dets[i]
    who = f"#{i} (image_id {d['image_id']}, category_id {d['category_id']})"
    _assert_error(_both(gt, path), f"'{path}'", who, f"x = {value!r} lies outside")
    ds, dets = _dataset()
    a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], list))
    a["segmentation"][0][3] = value
    gt_path = _write(tmp_path / "gt2.json", ds)
    out = _both(gt_path, _write(tmp_path / "res2.json", dets))
    _assert_error(out, gt_path, f"annotation id {a['id']}", f"y = {value!r} lies outside")


def test_box_without_a_mask_is_clipped_to_the_same_mask():
    """A detection without a segmentation is scored with its box as a polygon (lvis-api):
    clipped to one pixel outside the image, pycocotools gives the same mask."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        x1, y1 = rng.uniform(-3 * w, 2 * w), rng.uniform(-3 * h, 2 * h)
        x2, y2 = x1 + rng.uniform(-w, 3 * w), y1 + rng.uniform(-h, 3 * h)
        if rng.random() < 0.3:
            x1, y1 = float(np.round(x1)), float(np.round(y1))
        full = [[x1, y1, x1, y2, x2, y2, x2, y1]]
        cx1, cx2 = np.clip([x1, x2], -1.0, w + 1.0).tolist()
        cy1, cy2 = np.clip([y1, y2], -1.0, h + 1.0).tolist()
        clipped = [[cx1, cy1, cx1, cy2, cx2, cy2, cx2, cy1]]
        a = mask_utils.decode(mask_utils.frPyObjects(full, h, w)[0])
        b = mask_utils.decode(mask_utils.frPyObjects(clipped, h, w)[0])
        assert np.array_equal(a, b), (h, w, full)


def test_box_far_outside_without_a_mask_evaluates_at_once(tmp_path):
    """Its mask is the whole image: the same evaluation as with a whole-image RLE."""
    ds, dets = _dataset()
    i = next(k for k, d in enumerate(dets) if "segmentation" not in d)
    dets[i]["bbox"] = [-1e12, -1e12, 3e12, 3e12]
    gt = LVISGroundTruth(_write(tmp_path / "gt.json", ds))
    t0 = time.perf_counter()
    far = _both(gt, _write(tmp_path / "far.json", dets))
    assert time.perf_counter() - t0 < 10
    h, w = SIZES[dets[i]["image_id"] - 1]
    whole = mask_utils.encode(np.ones((h, w), np.uint8, order="F"))
    dets[i]["segmentation"] = {"size": [h, w], "counts": whole["counts"].decode()}
    mask = _both(gt, _write(tmp_path / "mask.json", dets))
    assert far[0][0] == "ok" and len(set(far + mask)) == 1


# ------------------------------------------------------------------------------------------
# JSON and numbers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80"])
def test_invalid_utf8_is_the_same_outcome_through_both_readers(tmp_path, iou_type, bad):
    """In a counts string too, which the Python reader used to skip unparsed for box AP. An
    encoded surrogate (ED A0 80) is what Python's json reads (surrogatepass): a string, not an
    RLE."""
    ds, dets = _dataset()
    text = json.dumps(dets).encode()
    k = text.index(b'"counts": "') + len(b'"counts": "') + 2
    path = tmp_path / "res.json"
    path.write_bytes(text[:k] + bad + text[k:])
    out = _both(LVISGroundTruth(ds), str(path), iou_type)
    if bad != b"\xed\xa0\x80":
        _assert_error(out, f"'{path}'", "not valid JSON")
    elif iou_type == "segm":
        _assert_error(out, f"'{path}'", "#0 (image_id 1, category_id", "RLE counts hold")
    else:  # the segmentations are not read
        assert out[0][0] == "ok" and len(set(out)) == 1


@pytest.mark.parametrize("depth", [2000, 100000])
def test_deep_nesting_is_an_input_error(tmp_path, depth):
    ds, dets = _dataset()
    dets[3]["extra"] = "NEST"
    text = json.dumps(dets).replace('"NEST"', "[" * depth + "]" * depth)
    path = tmp_path / "res.json"
    path.write_text(text)
    _assert_error(_both(LVISGroundTruth(ds), str(path)), f"'{path}'", "not valid JSON")
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(ds)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(LVISInputError, match="gt.json.*nested too deeply"):
        LVISGroundTruth(str(gt_path))


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("image_id", 10**30, "image_id is not an integer"),
        ("image_id", 2**63, "image_id is not an integer"),
        ("category_id", -(10**25), "category_id is not an integer"),
        ("score", 10**400, "score is not a number"),
        ("bbox", [0, 0, 10**400, 1], "bbox must be"),
        ("size", [10**30, 5], "does not match the image size"),
    ],
)
def test_huge_numbers_are_named(tmp_path, field, value, problem):
    ds, dets = _dataset()
    d = dets[4]
    if field == "size":
        d["segmentation"]["size"] = value
    else:
        d[field] = value
    path = _write(tmp_path / "res.json", dets)
    out = _both(LVISGroundTruth(ds), path)
    _assert_error(out, f"'{path}'", "#4 (", problem)


# ------------------------------------------------------------------------------------------
# Fuzz: mutated results files through both readers, every case timed
# ------------------------------------------------------------------------------------------
CASE_SECONDS = 20  # a case (both readers) running longer is a hang: a check is missing
EVAL_SECONDS = 3  # an evaluation of these tiny files takes milliseconds

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_COUNTS = re.compile(rb'"counts": "((?:[^"\\]|\\.)*)"')
_VALUE = re.compile(rb'(?<=: )(?:-?\d[\d.eE+-]*|"[^"]*"|true|false|null)')
HUGE = [b"1e400", b"-1e400", b"1" + b"0" * 30, b"9223372036854775808", b"2147483648", b"1e9"]
HUGE += [b"-0", b"1e-400", b"0.0", b"-2147483649"]
SWAP = [None, True, "x", [], {}, -1, 1.5, [1, 2], {"size": [1, 1], "counts": "1"}, [[0, 0]]]


def _pick(rng, matches):
    return matches[int(rng.integers(len(matches)))] if matches else None


def _mutate(rng, text, dets, text_only=False):
    """The name of a mutation and the results file (bytes) made from ``text`` by it (by one of
    the first 7, which change the text, with ``text_only``; the others change ``dets``)."""
    kind = int(rng.integers(0, 7 if text_only else 11))
    n = len(text)
    pattern = {2: _COUNTS, 3: _COUNTS, 4: _NUMBER, 5: _VALUE, 6: re.compile(b'"')}.get(kind)
    if n == 0 or (pattern is not None and not pattern.search(text)):
        kind = 1 if n else 6  # (an empty text gets a byte)
    if n == 0:
        return "byte", bytes([int(rng.integers(256))])
    if kind == 0:  # a byte replaced
        i = int(rng.integers(n))
        b = bytes([int(rng.choice([rng.integers(256), 0x22, 0x7B, 0x5D, 0xFF, 0x39, 0x00]))])
        return "byte", text[:i] + b + text[i + 1 :]
    if kind == 1:  # cut
        i = int(rng.integers(n))
        return "cut", text[:i] + (b"]" if rng.random() < 0.5 else b"")
    if kind in (2, 3):  # characters into, or out of, an RLE string
        m = _pick(rng, list(_COUNTS.finditer(text)))
        s, e = m.span(1)
        if kind == 3:
            return "rle-cut", text[: e - int(rng.integers(1, 4))] + text[e:]
        i = int(rng.integers(s, e + 1))
        run = rng.choice([b"9" * 40, b"o" * 10, b"123", bytes(rng.integers(48, 112, 3).tolist())])
        return "rle-insert", text[:i] + run + text[i:]
    if kind == 4:  # a number replaced with a huge / odd one
        m = _pick(rng, list(_NUMBER.finditer(text)))
        return "number", text[: m.start()] + HUGE[int(rng.integers(len(HUGE)))] + text[m.end() :]
    if kind == 5:  # a value nested deeply
        m = _pick(rng, list(_VALUE.finditer(text)))
        d = int(rng.choice([3, 600, 1100, 5000]))
        return "nest", text[: m.start()] + b"[" * d + m.group() + b"]" * d + text[m.end() :]
    if kind == 6:  # invalid UTF-8 in a string
        q = _pick(rng, [m.start() for m in re.finditer(rb'"', text)])
        bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf4\x90\x80\x80"])
        return "utf8", text[: q + 1] + bad + text[q + 1 :]
    dets = copy.deepcopy(dets)
    d = dets[int(rng.integers(len(dets)))]
    if kind == 7:  # a value of another type
        key = _pick(rng, sorted(d))
        d[key] = copy.deepcopy(SWAP[int(rng.integers(len(SWAP)))])
        name = "swap"
    elif kind == 8:  # a key removed
        d.pop(_pick(rng, sorted(d)))
        name = "drop"
    elif kind == 9:  # a polygon coordinate far outside, or a polygon made long
        polys = [x for x in dets if isinstance(x.get("segmentation"), list)]
        seg = _pick(rng, polys)["segmentation"][0]
        if rng.random() < 0.5:
            seg[int(rng.integers(len(seg)))] = float(rng.choice([1e9, 2.0**31, -(2.0**31), 1e308]))
        else:
            seg.extend([-5, -5, 18, 18] * int(rng.integers(10, 200)))  # inside every margin
        name = "polygon"
    else:  # an RLE dict changed: size, or counts as a list
        rles = [x for x in dets if isinstance(x.get("segmentation"), dict)]
        seg = _pick(rng, rles)["segmentation"]
        if rng.random() < 0.5:
            seg["size"] = [int(v) for v in rng.integers(0, 30, 2)]
        else:
            seg["counts"] = [int(v) for v in rng.integers(-2, 200, int(rng.integers(1, 6)))]
        name = "rle-dict"
    return name, json.dumps(dets).encode()


def _fuzz_cases(seed, count):
    ds, dets = _dataset(seed)
    text = json.dumps(dets).encode()
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(count):
        name, t = _mutate(rng, text, dets)
        if rng.random() < 0.25:  # two mutations
            name2, t = _mutate(rng, t, dets, text_only=True)
            name = f"{name}+{name2}"
        cases.append((name, t, "segm" if k % 3 else "bbox"))
    return ds, cases


def _fuzz_worker(conn, gt_path, cases, folder):
    from balms_det.evaluation import _json

    gt = LVISGroundTruth(gt_path)
    chunks = (_json.CHUNK_BYTES, _json.SCAN_CHUNK_BYTES)
    for k, (_, text, iou_type) in enumerate(cases):
        path = os.path.join(folder, f"case{k}.json")
        with open(path, "wb") as f:
            f.write(text)
        # odd cases: pieces of a few results (the Python reader's cut unlike the scanner's)
        _json.CHUNK_BYTES, _json.SCAN_CHUNK_BYTES = (700, 900) if k % 2 else chunks
        conn.send(("start", k))
        secs, outs = [], []
        for off in PATHS:
            os.environ["BALMS_NO_CCORE"] = off
            t0 = time.perf_counter()
            outs.append(_outcome(gt, path, iou_type))
            secs.append(time.perf_counter() - t0)
        conn.send(("done", k, outs, secs, path))
    conn.send(("end",))
    conn.close()


def test_fuzz_both_readers_agree_and_never_hang(tmp_path):
    """Seeded mutations of a results file (bytes replaced, cuts, characters into RLE strings,
    huge numbers, deep nesting, invalid UTF-8, values of other types, missing keys, polygons far
    outside or very long, RLE sizes and list counts): through the compiled and the Python
    reader, the same result or the same LVISInputError naming the file (the same message, but
    where the file is read in pieces of a few results: which error comes first depends on the
    pieces), never another exception. The cases run in a child process: one over CASE_SECONDS (a hang in pycocotools,
    which no signal interrupts) fails the test naming the case."""
    ds, cases = _fuzz_cases(11, 600)
    gt_path = _write(tmp_path / "gt.json", ds)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fuzz_worker, args=(send, gt_path, cases, str(tmp_path)))
    proc.start()
    send.close()
    done, kinds, current = [], {}, None
    try:
        while True:
            if not recv.poll(CASE_SECONDS):
                name = cases[current][0] if current is not None else "setup"
                pytest.fail(f"fuzz case {current} ({name}) ran over {CASE_SECONDS} s")
            try:
                msg = recv.recv()
            except EOFError:  # the child died (a crash in compiled code, a sanitizer's report)
                proc.join()
                pytest.fail(f"fuzz worker died (exit code {proc.exitcode}) in case {current}")
            if msg[0] == "end":
                break
            if msg[0] == "start":
                current = msg[1]
                continue
            _, k, outs, secs, path = msg
            name = cases[k][0]
            assert all(o[0] != "crash" for o in outs), (k, name, outs)
            if k % 2 == 0 or outs[0][0] == "ok":
                assert len(set(outs)) == 1, (k, name, [o[:2] for o in outs])
            else:  # the first error found depends on the pieces: its kind does not
                assert {o[0] for o in outs} == {"error"}, (k, name, [o[:2] for o in outs])
            for o in outs:
                if o[0] == "error":
                    assert f"'{path}'" in o[1], (k, name, o[1])
            assert max(secs) < EVAL_SECONDS, (k, name, secs)
            done.append(k)
            kinds.setdefault(outs[0][0], set()).add(name.split("+")[0])
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    assert done == list(range(len(cases)))
    # the mutations reach both outcomes: many are errors, some still evaluate
    assert {"rle-insert", "rle-cut", "polygon", "utf8", "nest", "number"} <= kinds["error"]
    assert len(kinds.get("ok", ())) >= 3, kinds
