"""Hostile inputs through the engine's one path: the input rules (RLE strings, polygons, image
sizes) against an independent statement of them, and every finding of the independent fuzz of
2026-12-04 refused with an error naming the file and the entry, in time and memory linear in
the input, before anything runs on it. Each case is generated here (no stored input); the
outcomes of the named cases and of 600 fuzzed files are also frozen (test_eval_golden.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from eval_cases import encode_counts, hostile_case, hostile_dataset, make_dataset, make_results

from balms_det.evaluation.offline import evaluate_detections_file
from balms_det.lvis_eval import LVISInputError, check_ground_truth, evaluate_lvis, reader, rules
from balms_det.lvis_eval.jsonio import load_core

pytestmark = pytest.mark.torch_free
core = load_core()


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _case_files(tmp_path, name):
    case = hostile_case(name)
    gt = _write(tmp_path / "gt.json", case["gt"]) if isinstance(case["gt"], dict) else None
    if gt is None:
        (tmp_path / "gt.json").write_bytes(case["gt"])
        gt = str(tmp_path / "gt.json")
    (tmp_path / "res.json").write_bytes(case["results"])
    return gt, str(tmp_path / "res.json"), case


# ------------------------------------------------------------------------------------------
# The rules, stated independently (the oracle of the compiled checks)
# ------------------------------------------------------------------------------------------
def rle_rule(counts, hw):
    """None if a compressed RLE string keeps the rules for an image of hw pixels, else the
    first problem, one character at a time."""
    data = counts.encode("utf-8", "surrogatepass") if isinstance(counts, str) else counts
    cnts, x, k = [], 0, 0
    for i, ch in enumerate(data):
        v = ch - 48
        if not 0 <= v <= 63:
            return (
                f"RLE counts hold {(chr(ch) if ch < 128 else f'byte 0x{ch:02x}')!r} (character {i})"
            )
        if k == 7:
            return f"RLE count #{len(cnts)} runs over more than 7 characters (to character {i})"
        x |= (v & 0x1F) << (5 * k)
        k += 1
        if not v & 0x20:
            if v & 0x10:
                x |= -1 << (5 * k)
            x += cnts[-2] if len(cnts) > 2 else 0
            if not 0 <= x <= hw:
                return f"RLE count #{len(cnts)} is {x}, outside 0..{hw} (h * w)"
            cnts.append(x)
            x, k = 0, 0
    if k:
        return "RLE counts end inside a count (a truncated string?)"
    return None if sum(cnts) == hw else f"RLE counts sum to {sum(cnts)} instead of h * w = {hw}"


def _verdicts(segs, h, w):
    """The core's problem (a message, or None) of each segmentation of an h x w image."""
    n = len(segs)
    arrays = rules.segmentation_arrays(segs, np.full(n, h), np.full(n, w))
    _, _, code, detail = core.masks(*arrays, make=False)
    return [rules.mask_problem(s, h, w, c, d) if c else None for s, c, d in zip(segs, code, detail)]


@pytest.mark.parametrize(
    "counts,problem",
    [
        ("04", None),  # [0, 4]
        ("1110", None),  # [1, 1, 1, 1]: the 4th is a delta of 0 to the 2nd
        ("1111", "sum to 5"),
        ("03", "sum to 3"),
        ("", "sum to 0"),
        ("0P", "end inside a count"),  # 'P' continues the count
        ("0" + "o" * 40 + "4", "more than 7 characters"),  # the 40-character run
        ("0\x7f", "not one of '0'..'o'"),
        ("0\u00e9", "byte 0xc3"),
        ("0O5", "count #1 is -1"),  # 'O': -1 (sign bit, no continuation)
        (encode_counts([0, 2, 0, -5, 2]), "count #3 is -3"),  # pycocotools would wrap it
    ],
)
def test_rle_string_rules(counts, problem):
    got = _verdicts([{"size": [1, 4], "counts": counts}], 1, 4)[0]
    assert (got is None) if problem is None else (problem in got), got
    assert (rle_rule(counts, 4) is None) == (problem is None)


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


def test_rle_rules_of_the_core_are_the_stated_ones():
    """The core refuses exactly the strings the rules refuse, with the same first problem;
    pycocotools' own strings all pass, and decode to pycocotools' masks."""
    rng = np.random.default_rng(4)
    refused = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        s = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        strings = [s] + _mutations(rng, s)
        got = _verdicts([{"size": [h, w], "counts": t} for t in strings], h, w)
        for t, g in zip(strings, got):
            want = rle_rule(t, h * w)
            assert (g is None) == (want is None) and (g is None or g.startswith(want)), (t, g)
            refused += g is not None
        assert got[0] is None
    assert 100 < refused < 400  # both kinds well represented


@pytest.mark.parametrize(
    "poly,problem",
    [
        ([0, 0, 40, 0, 40, 20, -20, -10], None),  # on the edges of the margin (20 x 10 image)
        ([0, 0, 40.01, 0, 40, 20], "x = 40.01 lies outside"),
        ([0, 0, 40, -10.5, 40, 20], "y = -10.5 lies outside"),
        ([0, 0, 1e9, 0, 5, 5], "x = 1000000000.0 lies outside"),
        ([0, 0, 2**31, 0, 5, 5], "x = 2147483648 lies outside"),
        ([v for k in range(16) for v in ((-20, -10) if k % 2 else (40, 20))], "outline is longer"),
        ([v for k in range(14) for v in ((-20, -10) if k % 2 else (40, 20))], None),
    ],
)
def test_polygon_rules(poly, problem):
    """The margin (the image's own size beyond each side) and the outline cap: 4 (h + 1)
    (w + 1) = 924 pixels for 20 x 10; each zigzag step is 60 long in the max norm."""
    got = _verdicts([[poly]], 10, 20)[0]
    assert (got is None) if problem is None else (problem in got), got


def test_shape_rules_of_ground_truth_and_detections_are_one():
    """A 2-point polygon, a bool coordinate, a string: refused alike in ground truth (by
    check_ground_truth) and in detections (by the scanner and the reader)."""
    for bad, reason in (
        ([[10, 10, 20, 20]], "at least 3 points, this one has 2"),
        ([[10, 10, 20, True, 5, 5]], "non-numeric or non-finite polygon coordinate True"),
        ("x", "not str"),
    ):
        assert reason in rules.segmentation_problem(bad, 30, 30)
        ds, res = hostile_dataset()
        ds["annotations"][0]["segmentation"] = bad
        with pytest.raises(LVISInputError, match=f"annotation id 1 .*{reason}"):
            check_ground_truth(ds, "gt.json", masks=True)
        ds, res = hostile_dataset()
        res[0]["segmentation"] = bad
        with pytest.raises(LVISInputError, match=f"detection #0 .*{reason}"):
            evaluate_lvis(ds, res, "segm")


# ------------------------------------------------------------------------------------------
# The fuzz of 2026-12-04 (issue 27)
# ------------------------------------------------------------------------------------------
class _CountingScanner:
    """The core's scanner, counting the bytes it is given."""

    given = 0

    def __init__(self, *a):
        self.s = core.Scanner(*a)

    def scan(self, text, final):
        _CountingScanner.given += len(text)
        return self.s.scan(text, final)

    def __getattr__(self, name):
        return getattr(self.s, name)


class _Core:
    def __getattr__(self, name):
        return _CountingScanner if name == "Scanner" else getattr(core, name)


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setattr(reader, "load_core", lambda: _Core())
    _CountingScanner.given = 0
    return _CountingScanner


def test_a_bad_byte_early_is_refused_reading_one_piece(tmp_path, counting):
    """A malformed file is refused where it is malformed: a bad byte near the start of a
    12 MB file is found in the first piece, naming its offset, the rest never read."""
    gt, res, _ = _case_files(tmp_path, "bad_byte_early")
    text = (tmp_path / "res.json").read_bytes()
    big = text[:-1] + b", " + b", ".join([text[101:-1]] * 4) + b"]"
    (tmp_path / "res.json").write_bytes(big)
    with pytest.raises(LVISInputError, match=r"res.json' is not valid JSON \(near byte 100\)"):
        evaluate_lvis(gt, res, "bbox", workers=1)
    assert len(big) > 12 << 20 and counting.given <= reader.PIECE_BYTES


def test_long_elements_are_scanned_in_linear_time(tmp_path, counting, monkeypatch):
    """An element longer than a piece (a 3 MB string) is scanned again with pieces twice as
    large each time: the bytes scanned are a few times the file, not its square."""
    monkeypatch.setattr(reader, "PIECE_BYTES", 4096)
    ds, res = hostile_dataset()
    res[2]["note"] = "x" * (3 << 20)
    path = _write(tmp_path / "res.json", res)
    evaluate_lvis(ds, path, "bbox", workers=1)
    assert counting.given < 4 * os.path.getsize(path)


@pytest.mark.parametrize("name,side", [("image_70000", 70000), ("image_65536", 65536)])
def test_images_beyond_32_bit_masks_are_refused(tmp_path, name, side):
    """70000 x 70000 hung mask IoU (pycocotools, lvis-api too); at 65536 x 65536 a 32-bit area
    wrapped around and AP 10 became 0: refused, naming the image, for every iou type."""
    gt, res, _ = _case_files(tmp_path, name)
    for iou_type in ("bbox", "segm"):
        with pytest.raises(LVISInputError, match=rf"image id 1 in '.*gt.json': .*{side} x {side}"):
            evaluate_lvis(gt, res, iou_type)


def test_a_long_malformed_rle_string_costs_memory_in_proportion_once(tmp_path):
    """A 20 MB malformed counts string (3 GB of memory for a 25 MB one before): refused,
    naming the detection, with a peak of a few times the string (a count per character)."""
    ds, res = hostile_dataset()
    res[0]["segmentation"] = {"size": res[0]["segmentation"]["size"], "counts": "1" * (20 << 20)}
    path = _write(tmp_path / "res.json", res)
    gt = _write(tmp_path / "gt.json", ds)
    code = (
        "import resource, sys; from balms_det.lvis_eval import evaluate_lvis, LVISInputError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    evaluate_lvis({gt!r}, {path!r}, 'segm', workers=1)\n"
        "except LVISInputError as e:\n    print(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    message, peak = p.stdout.strip().rsplit("\n", 1)
    assert "detection #0 (image_id 1, category_id 1): RLE count #" in message
    assert int(peak) < 6 * (20 << 20)


@pytest.mark.parametrize(
    "name,problem",
    [
        (
            "category_id_true",
            r"#0 \(image_id 30, category_id True\): category_id is not an integer",
        ),
        ("score_true", "score is not a number"),
        ("score_string", "score is not a number"),
        ("bbox_string", r"bbox must be \[x, y, w, h\]"),
        ("bbox_bool", r"bbox must be \[x, y, w, h\]"),
        ("results_ints", "result #0 is a int, not a dict"),
        ("results_empty_dict", r"result #0 lacks \['image_id', 'category_id', 'score'\]"),
        ("results_empty_list", "result #0 is a list, not a dict"),
        ("surrogate_in_skipped_key", r"not valid JSON \(near byte 85\): not valid UTF-8"),
    ],
)
def test_values_of_another_kind_are_refused(tmp_path, name, problem):
    """Wrong types became numbers and changed metrics; nonsense results evaluated nothing;
    an encoded surrogate was accepted: each is an error naming the file and the result."""
    gt, res, case = _case_files(tmp_path, name)
    with pytest.raises(LVISInputError, match=rf"res.json'.*{problem}"):
        evaluate_lvis(gt, res, case["iou_type"])
    with pytest.raises(LVISInputError, match=rf"res.json'.*{problem}"):
        evaluate_detections_file(gt, res)  # (the iou types are read from the file: checked)


def test_escaped_keys_and_long_integers_are_read_as_json_says(tmp_path):
    """A key spelled with a unicode escape is that key (its task is evaluated, with the same
    numbers); a 5,001-digit integer in a key the engine skips changes nothing, in one it reads
    it is named."""
    ds, res = make_dataset(60, n_img=8), None
    res = make_results(ds, 61, dets_per_img=(5, 9))
    gt = _write(tmp_path / "gt.json", ds)
    plain = evaluate_detections_file(gt, _write(tmp_path / "plain.json", res))[0]
    for name in ("escaped_key_bbox", "big_int_in_skipped_key"):
        (tmp_path / f"{name}.json").write_bytes(hostile_case(name)["results"])
        got = evaluate_detections_file(gt, str(tmp_path / f"{name}.json"))[0]
        assert json.dumps(got) == json.dumps(plain), name
    text = json.dumps(res).replace('"image_id": ', '"image_id": ' + "7" * 5001 + ', "x": ', 1)
    (tmp_path / "long.json").write_text(text)
    with pytest.raises(
        LVISInputError, match=r"#0 \(image_id 7777.*\(5001 digits\).*not an integer"
    ):
        evaluate_lvis(gt, str(tmp_path / "long.json"), "bbox")


@pytest.mark.parametrize(
    "name,problem",
    [
        ("gt_image_id_string", "image #1: 'id' must be an integer, not 'x'"),
        ("gt_image_id_float", "image #1: 'id' must be an integer, not 1.5"),
        ("gt_image_id_missing", "image #0: 'id' must be an integer, it is absent"),
        ("gt_height_null", "image id 25 .*'height' must be a positive integer, not None"),
        ("gt_height_string", "'height' must be a positive integer, not 'x'"),
        ("gt_height_infinity", "'height' must be a positive integer, not inf"),
        ("gt_neg_ids_number", "'neg_category_ids' must be a list of category ids, not 5"),
        ("gt_annotation_string", "annotation #0 is a str, not a dict"),
        ("gt_images_null", "'images' must be a list of records, not NoneType"),
        ("gt_bbox_strings_bbox", r"annotation id 1 .*'bbox' must be \[x, y, w, h\]"),
        ("gt_bbox_negative_bbox", r"'bbox' must be .*w, h >= 0\), not \[1.0, 2.0, -3.0, 4.0\]"),
        ("gt_polygon_two_points", "annotation id 1 .*at least 3 points, this one has 2"),
        ("gt_ann_id_missing", "annotation #0: 'id' must be an integer, it is absent"),
        ("gt_category_id_bool", "category #0: 'id' must be an integer, not True"),
    ],
)
def test_ground_truth_fields_are_checked(tmp_path, name, problem):
    """Bare KeyError / TypeError / OverflowError naming no file before: named errors."""
    gt, res, case = _case_files(tmp_path, name)
    with pytest.raises(LVISInputError, match=problem) as e:
        evaluate_lvis(gt, res, case["iou_type"])
    assert f"'{gt}'" in str(e.value)
    with pytest.raises(LVISInputError, match=problem) as e:  # the offline driver alike
        evaluate_detections_file(gt, res, iou_types=[case["iou_type"]])
    assert f"'{gt}'" in str(e.value)


def test_train_json_is_checked_like_ground_truth(tmp_path):
    ds, res = make_dataset(60, n_img=8), None
    res = make_results(ds, 61, dets_per_img=(5, 9))
    train = dict(ds, annotations=[dict(ds["annotations"][0], image_id="7")])
    with pytest.raises(LVISInputError, match=r"train.json.*'image_id' must be an integer, not '7'"):
        evaluate_detections_file(
            _write(tmp_path / "gt.json", ds), _write(tmp_path / "res.json", res),
            train_json=_write(tmp_path / "train.json", train),
        )  # fmt: skip
