"""The engine's compiled core (balms_det/lvis_eval/csrc, bound by _core.pyx) against its oracles:
Python's json and float() for the scanner, pycocotools for masks (decoding, rasterising
polygons, merging, areas, boxes, IoUs)."""

import json
import struct

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from balms_det.lvis_eval import rules
from balms_det.lvis_eval.jsonio import load_core

pytestmark = pytest.mark.torch_free
core = load_core()
F, K = core.FLAGS, core.KINDS


def test_core_is_built_and_its_absence_names_the_reference_engine(monkeypatch):
    """`pip install -e .` builds the core; where it is not built, the error says so and names
    the reference engine."""
    import importlib

    assert core.__file__.endswith(".so") and core.RLE_MAX_RUN_CHARS == 7
    real = importlib.import_module

    def missing(name, *a):
        if name.endswith("._core"):
            raise ImportError("No module named '_core'")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ImportError, match=r"not built.*pip install -e \..*lvis-api"):
        load_core()


def _scan(text):
    s = core.Scanner()
    status, pos, why = s.scan(text, True)
    return status, why, s.take()


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
        "0." + "3" * 200, "1" + "0" * 400, "1e400", "-1e400",
    ]  # fmt: skip
    return texts


def test_scanned_numbers_equal_python_float():
    """Every score and box coordinate is the double Python's json reads (float() of an
    integer): fast paths, halfway cases, subnormals; an integer beyond a double, or infinity,
    is not taken (the reader names it)."""
    texts = _number_texts(np.random.default_rng(0))
    body = ", ".join(
        '{"image_id": 1, "category_id": 2, "score": %s, "bbox": [%s, 0, %s, 1]}' % (t, t, t)
        for t in texts
    )
    status, why, cols = _scan(("[" + body + "]").encode())
    assert status == core.SCAN_DONE_, why
    for t, score, box, flags in zip(texts, cols["score"], cols["box"], cols["flags"]):
        v = json.loads(t)
        try:
            want = float(v)
        except OverflowError:
            want = None
        if want is None or abs(want) == float("inf"):
            assert flags & F["BAD"] and not flags & F["SCORE"], t
            continue
        assert struct.pack("<d", score) == struct.pack("<d", want), t
        assert struct.pack("<d", box[0]) == struct.pack("<d", want), t


GOOD = (
    b'{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5, '
    b'"segmentation": {"size": [4, 5], "counts": "a\\\\b"}, "x": [{"y": null}, true, "\\u00e9"]}'
)


@pytest.mark.parametrize(
    "text,taken",
    [
        (GOOD, True),
        (GOOD + b", " + GOOD, True),
        (b' \n{"score": 1, "category_id": 3, "image_id": 2}\t', True),  # any key order
        (b'{"image_id": 1, "category_id": 2, "score": 1, "image_id": 7}', True),  # last wins
        (b'{"image_id": 1.0, "category_id": 2e0, "score": 1}', True),  # integral floats
        (b'{"image_id": 1, "category_id": 2, "score": 1, "\\u0062box": [1, 2, 3, 4]}', True),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\xc3\xa9", "b": 1e400}', True),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "n": ' + b"7" * 5001 + b"}", True),
        (b'{"image_id": 1, "category_id": 2, "score": NaN}', "bad"),  # JSON; the reader names it
        (b'{"image_id": 1, "category_id": 2, "score": -Infinity}', "bad"),
        (b'{"image_id": 1, "category_id": 2}', "bad"),  # no score
        (b'{"image_id": true, "category_id": 2, "score": 1}', "bad"),
        (b'{"image_id": 1, "category_id": 2, "score": "0.9"}', "bad"),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "bbox": [1, 2, true, 4]}', "bad"),
        (b'{"image_id": 1, "category_id": 2, "score": 1, "bbox": [1, 2, 3]}', "bad"),
        (b"1, {}, []", "bad"),  # not objects, or lacking keys
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
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\xed\xa0\x80"}', False),  # surrogate
        (b'{"image_id": 1, "category_id": 2, "score": 1, "a": "\xc3("}', False),
        (
            b'{"image_id": 1, "category_id": 2, "score": 1, "a": ' + b"[" * 900 + b"]" * 900 + b"}",
            True,
        ),
        (
            b'{"image_id": 1, "category_id": 2, "score": 1, "a": '
            + b"[" * 1100
            + b"]" * 1100
            + b"}",
            False,
        ),
    ],
)
def test_scanner_reads_valid_json_as_python_does(text, taken):
    """The scanner accepts exactly the valid JSON (strict UTF-8, nesting within its depth),
    reads the values Python's json reads, and flags the results it does not take as they are
    (the reader says why)."""
    status, why, cols = _scan(b"[" + text + b"]")
    if taken is False:
        assert status == core.SCAN_BAD_ and why
        with pytest.raises((ValueError, RecursionError)):
            json.loads((b"[" + text + b"]").decode("utf-8"))
        return
    assert status == core.SCAN_DONE_, why
    parsed = json.loads(b"[" + text + b"]", parse_int=lambda s: int(s) if len(s) < 4000 else 0)
    assert len(cols["flags"]) == len(parsed)
    if taken == "bad":
        assert (cols["flags"] & F["BAD"]).any()
        return
    assert not (cols["flags"] & F["BAD"]).any()
    for k, d in enumerate(parsed):
        assert (cols["img"][k], cols["cat"][k], cols["score"][k]) == (
            d["image_id"], d["category_id"], d["score"]
        )  # fmt: skip
        assert bool(cols["flags"][k] & F["HAS_BOX"]) == ("bbox" in d)
        if "segmentation" in d:
            a, b = cols["seg"][k, :2]
            assert json.loads(text[a - 1 : b - 1]) == d["segmentation"]


def _masks(segs, h, w):
    """Masks made by the core of Python segmentations (as the ground truth's are made)."""
    n = len(segs)
    arrays = rules.segmentation_arrays(segs, np.full(n, h), np.full(n, w))
    counts, off, code, detail = core.masks(*arrays)
    return counts, off, code


def _decoded(counts, off, k, h, w):
    c = counts[off[k] : off[k + 1]].astype(np.int64)
    return np.repeat(np.arange(len(c)) % 2, c).astype(np.uint8).reshape(w, h).T


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


def test_masks_areas_boxes_and_ious_equal_pycocotools():
    """Compressed strings (some with JSON escapes: read through the scanner), uncompressed
    counts (zero-length runs included) and polygons give pycocotools' masks; areas, boxes
    (toBbox, with its zero-length-run quirks) and IoUs (iscrowd 0) are bit-equal to its."""
    rng = np.random.default_rng(1)
    h, w = 23, 31
    masks = _random_masks(rng, 40, h, w)
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    odd = [[0, 5, 0, 3, h * w - 8], [3, 0, 0, 4, h * w - 7], [h * w]]  # non-canonical runs
    odd_rles = [mask_utils.frPyObjects({"size": [h, w], "counts": c}, h, w) for c in odd]
    results = [
        {"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [h, w],
         "counts": r["counts"].decode()}} for r in rles
    ] + [{"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [h, w],
          "counts": c}} for c in odd]  # fmt: skip
    text = json.dumps(results).encode()
    assert b"\\\\" in text  # a backslash in some counts string, escaped in JSON
    status, why, cols = _scan(text)
    assert status == core.SCAN_DONE_
    n = len(results)
    counts, off, code, _ = core.masks(
        cols["kind"], cols["seg"], ((cols["flags"] & F["ESCAPED"]) != 0).astype(np.uint8),
        text, cols["coords"], np.r_[cols["poly_off"], 0], cols["num"], np.full(n, h), np.full(n, w),
    )  # fmt: skip
    assert not code.any()
    ref = rles + odd_rles
    for k, r in enumerate(ref):
        assert np.array_equal(_decoded(counts, off, k, h, w), mask_utils.decode(r)), k
    area, box = core.mask_stats(counts, off, np.full(n, h), np.full(n, w))
    assert area.tolist() == mask_utils.area(ref).astype(float).tolist()
    assert box.tolist() == mask_utils.toBbox(ref).tolist()
    g = np.arange(12)
    vals = np.empty(n * 12)
    core.ious(
        counts, off, counts, off, np.zeros(n, np.int64), np.full(n, 12), 12 * np.arange(n), vals
    )
    want = np.asarray(mask_utils.iou(ref, [ref[i] for i in g], [0] * 12), np.float64)
    assert vals.reshape(n, 12).tobytes() == want.tobytes()


def test_polygons_rasterised_as_pycocotools():
    """Polygons (one or several per segmentation, inside, across and outside the image border,
    integer, half-integer and arbitrary coordinates, small and large images) give exactly
    pycocotools' masks (frPyObjects then merge), and its boxes."""
    rng = np.random.default_rng(3)
    compared = 0
    for trial in range(300):
        small = trial % 2
        h, w = (rng.integers(1, 40, 2) if small else rng.integers(60, 300, 2)).tolist()
        polys = []
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(3, 12))  # points within the rules' margin of the image
            pts = np.stack([rng.uniform(-min(5, w), w + min(5, w), k),
                            rng.uniform(-min(5, h), h + min(5, h), k)], 1).ravel()  # fmt: skip
            if trial % 3 == 1:
                pts = np.round(pts * 2) / 2
            polys.append(pts.tolist())
        ref = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        counts, off, code = _masks([polys], h, w)
        if code[0] == core.PROBLEMS["POLY_OUTLINE"]:  # (random zigzags in a thin image)
            length = sum(np.abs(np.diff(np.reshape(p + p[:2], (-1, 2)), axis=0)).max(1).sum()
                         for p in polys)  # fmt: skip
            assert length > core.POLYGON_MAX_OUTLINE * (h + 1) * (w + 1)
            continue
        assert code[0] == 0 and counts[off[0] : off[1]].sum() == h * w
        compared += 1
        assert np.array_equal(_decoded(counts, off, 0, h, w), mask_utils.decode(ref)), trial
        box = core.mask_stats(counts, off, np.array([h]), np.array([w]))[1]
        assert box[0].tolist() == mask_utils.toBbox(ref).tolist(), trial
    assert compared > 280
