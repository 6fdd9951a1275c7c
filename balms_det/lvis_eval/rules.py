"""The engine's input rules, each defined once: a function here says why an input breaks it, and
one vectorised check finds the inputs that do (the compiled scanner and mask checks for
detections and segmentations, the column checks below for ground-truth fields).

pycocotools trusts its input: a compressed RLE string whose run lengths do not sum to h * w runs
for minutes or overflows, and polygon coordinates far outside the image allocate memory in
proportion to them (1e9: ~24 GB; Detectron2's training crashes there). So a segmentation is read
only when it keeps these rules (limits in ``csrc/core.h``):

* a compressed RLE string: characters '0'..'o' only, every count complete and of at most
  RLE_MAX_RUN_CHARS characters (pycocotools writes any count of an image of fewer than 2**32
  pixels in 7), every count in 0..h * w, the counts summing to h * w; an uncompressed one:
  non-negative integers summing to h * w; the RLE's size that of its image;
* polygons: lists of an even number (at least 6) of finite numbers, every x within
  [-POLYGON_MARGIN * w, (1 + POLYGON_MARGIN) * w] and every y likewise (the image extended by its
  own size on every side: detections near the border reach well beyond it), and their outline
  (closed, in the max norm) at most POLYGON_MAX_OUTLINE * (h + 1) * (w + 1) pixels long (no
  outline along the pixel grid that does not retrace an edge is longer than 2 (h + 1) (w + 1));
* an image of at most MAX_IMAGE_PIXELS pixels (pycocotools' 32-bit run lengths and areas: larger
  ones hang its mask IoU, or overflow into wrong areas).

:func:`check_ground_truth` applies every ground-truth rule: the evaluator's ground truth and the
training data (``balms_det.data.datasets``) are checked by it.
"""

import math

import numpy as np

from .jsonio import LVISInputError, load_core, where

__all__ = [
    "check_ground_truth",
    "detections_file",
    "ident",
    "explain_results",
    "segmentation_problem",
    "mask_problem",
    "annotation_boxes",
    "annotation_masks",
    "is_integral",
    "is_number",
]


_core = load_core


# ------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------
def _is_double(v):
    """A number a float64 holds, NaN and infinities included (not a bool)."""
    try:
        return type(v) is not bool and isinstance(v, (int, float, np.number)) and bool(float(v) + 1)
    except OverflowError:
        return False


def is_number(v):
    """A finite number that a float64 holds (not a bool, not an int too large for a double)."""
    return _is_double(v) and math.isfinite(v)


def is_integral(v):
    """An integer, or a float of integral value, of the int64 range (not a bool)."""
    return is_number(v) and v == int(v) and -(2**63) <= int(v) < 2**63


# ------------------------------------------------------------------------------------------
# Detections
# ------------------------------------------------------------------------------------------
def detections_file(source):
    return f"Detections file '{source}'" if source else "detections"


def ident(d):
    """'image_id 5, category_id 3' of a result (what of it is readable)."""
    if not isinstance(d, dict):
        return type(d).__name__
    return f"image_id {d.get('image_id')!r}, category_id {d.get('category_id')!r}"


def _listed(items, source, problem):
    """LVISInputError naming the results ``items`` [(index, value)] (the first few) and their
    problem."""
    shown = ", ".join(f"#{i} ({ident(d)})" for i, d in items[:5])
    if len(items) > 5:
        shown += f", ... ({len(items)} in all)"
    noun = "detection" if len(items) == 1 else f"{len(items)} detections"
    return LVISInputError(f"{detections_file(source)}: {noun} {shown}: {problem}")


def _box_ok(b):
    return isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_double(v) for v in b)


def _kinds(values):
    return " or ".join(sorted({"NaN" if math.isnan(float(v)) else "infinite" for v in values}))


# What a result needs, in the order the reader reports problems: (test, problem)
RESULT_RULES = (
    (lambda d, ig: is_integral(d["image_id"]), lambda b: "image_id is not an integer (of 64 bits)"),
    (lambda d, ig: is_integral(d["category_id"]), lambda b: "category_id is not an integer (of 64 bits)"),
    (lambda d, ig: _is_double(d["score"]), lambda b: "score is not a number (of 64 bits)"),
    (lambda d, ig: is_number(d["score"]), lambda b: f"score is {_kinds(d['score'] for _, d in b)}"),
    (lambda d, ig: not ig or "segmentation" in d, lambda b: "has no segmentation (masks are evaluated)"),
    (lambda d, ig: ig or d.get("bbox") is not None or "segmentation" in d,
     lambda b: "has neither bbox nor segmentation"),
    (lambda d, ig: ig or d.get("bbox") is None or _box_ok(d["bbox"]),
     lambda b: "bbox must be [x, y, w, h] (4 numbers of 64 bits)"),
    (lambda d, ig: ig or d.get("bbox") is None or all(map(is_number, d["bbox"])),
     lambda b: "bbox has a NaN or infinite coordinate"),
)  # fmt: skip


def explain_results(items, source, ignore_boxes):
    """Raise the LVISInputError of the results ``items`` [(index in the file, value)] that the
    scanner did not take: the first problem (in the order of RESULT_RULES, after the results that
    are not objects or lack a key) and every result of ``items`` that has it."""
    for i, d in items:
        if not isinstance(d, dict):
            raise LVISInputError(
                f"{detections_file(source)}: result #{i} is a {type(d).__name__}, not a dict"
            )
        missing = [k for k in ("image_id", "category_id", "score") if k not in d]
        if missing:
            raise LVISInputError(f"{detections_file(source)}: result #{i} lacks {missing}")
    for test, problem in RESULT_RULES:
        bad = [(i, d) for i, d in items if not test(d, ignore_boxes)]
        if bad:
            raise _listed(bad, source, problem(bad))
    raise AssertionError(f"the scanner refused results that keep every rule: {items[:3]}")


# ------------------------------------------------------------------------------------------
# Segmentations
# ------------------------------------------------------------------------------------------
def segmentation_problem(segm, h, w):
    """None if ``segm`` has a form the engine reads for an h x w image (polygons: lists of an
    even number >= 6 of finite numbers; an RLE {"size": [h, w], "counts": a string, or
    non-negative integers}), else why. The other rules are checked when its mask is made
    (:func:`mask_problem` says why)."""
    if isinstance(segm, list):
        if len(segm) == 0:
            return "empty polygon list"
        for poly in segm:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2:
                return "a polygon must be a list of x, y coordinates (an even number)"
            if len(poly) < 6:
                return f"a polygon needs at least 3 points, this one has {len(poly) // 2}"
            for v in poly:
                if not is_number(v):
                    return f"non-numeric or non-finite polygon coordinate {v!r}"
        return None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return "an RLE needs 'counts' and 'size'"
        size = segm["size"]
        try:
            sh, sw = size
        except (TypeError, ValueError):
            return f"bad RLE size {size!r}"
        if sh != h or sw != w:
            return f"RLE size {size!r} does not match the image size [{h}, {w}]"
        counts = segm["counts"]
        if isinstance(counts, str):
            return None
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            return None
        return f"RLE counts must be a string or a list, not {type(counts).__name__}"
    return f"segmentation must be a list of polygons or an RLE dict, not {type(segm).__name__}"


def mask_problem(segm, h, w, code, detail):
    """Why the segmentation ``segm`` (of an h x w image) broke the rule the compiled core reports
    by ``code`` and ``detail`` (3 integers; see csrc/core.h)."""
    c = _core()
    P = c.PROBLEMS
    a, b, total = (int(x) for x in detail)
    hw = int(h) * int(w)
    if code == P["RLE_CHAR"]:
        shown = chr(b) if b < 128 else f"byte 0x{b:02x}"
        return f"RLE counts hold {shown!r} (character {a}), not one of '0'..'o'"
    if code == P["RLE_LONG_RUN"]:
        return (
            f"RLE count #{a} runs over more than {c.RLE_MAX_RUN_CHARS} characters "
            f"(to character {b})"
        )
    if code == P["RLE_RANGE"]:
        return f"RLE count #{a} is {b}, outside 0..{hw} (h * w)"
    if code == P["RLE_TRUNCATED"]:
        return "RLE counts end inside a count (a truncated string?)"
    if code == P["RLE_SUM"]:
        return f"RLE counts sum to {total} instead of h * w = {hw}"
    if code == P["LIST_SUM"]:
        return f"uncompressed RLE counts sum to {sum(segm['counts'])} instead of {hw}"
    if code == P["SIZE"]:
        return f"RLE size {segm['size']!r} does not match the image size [{h}, {w}]"
    if code in (P["POLY_X"], P["POLY_Y"]):
        name = "x" if code == P["POLY_X"] else "y"
        return (
            f"polygon coordinate {name} = {segm[a][b]!r} lies outside the {w} x {h} (w x h) "
            f"image by more than {c.POLYGON_MARGIN:g} times its size"
        )
    if code == P["POLY_OUTLINE"]:
        cap = c.POLYGON_MAX_OUTLINE * (h + 1) * (w + 1)
        return (
            f"the polygons' outline is longer than {c.POLYGON_MAX_OUTLINE} (h + 1) (w + 1) = "
            f"{cap} pixels (or its coordinates cannot be read as numbers)"
        )
    return _image_problem(h, w)


def _image_problem(h, w):
    return (
        f"the image is {h} x {w} pixels: more than the {_core().MAX_IMAGE_PIXELS} (2**31 - 1) "
        "a mask can have (32-bit run lengths, as pycocotools'), or none"
    )


def segmentation_arrays(segs, h, w):
    """The arrays of the compiled core's ``masks`` (kind, seg, escaped, text, coords, poly_off,
    num, h, w) for segmentations ``segs`` (Python values of the forms segmentation_problem
    takes) of h x w images (per segmentation)."""
    c = _core()
    K = c.KINDS
    n = len(segs)
    kind = np.full(n, K["OTHER"], np.uint8)
    seg = np.full((n, 6), -1, np.int64)
    texts, coords, poly_off, num = [], [], [], []
    tpos = 0
    for i, s in enumerate(segs):
        if isinstance(s, list):
            kind[i] = K["POLYGONS"]
            seg[i, 4:6] = len(poly_off), len(s)
            for p in s:
                poly_off.append(len(coords))
                coords.extend(p)
            continue
        seg[i, 2:4] = s["size"]
        counts = s["counts"]
        if isinstance(counts, str):
            t = counts.encode("utf-8", "surrogatepass")
            kind[i] = K["STRING"]
            seg[i, 4:6] = tpos, tpos + len(t)
            texts.append(t)
            tpos += len(t)
        else:
            kind[i] = K["LIST"]
            seg[i, 4:6] = len(num), len(counts)
            num.extend(min(v, 2**62) for v in counts)
    poly_off.append(len(coords))
    return (
        kind,
        seg,
        np.zeros(n, np.uint8),
        b"".join(texts),
        np.array(coords, np.float64),
        np.array(poly_off, np.int64),
        np.array(num, np.int64),
        np.ascontiguousarray(h, np.int64),
        np.ascontiguousarray(w, np.int64),
    )


# ------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------
def _source(source):
    return f"Annotation file '{source}'" if source else "The annotations"


def _first_bad(values, test):
    """Index of the first value failing ``test``, or None."""
    return next((k for k, v in enumerate(values) if not test(v)), None)


def _all_of(values, types, least=None):
    """True when every value is of one of ``types`` (exactly: no bool for int) and, with
    ``least``, at least it: the fast path of a rule (the first offender is looked for else)."""
    if not set(map(type, values)) <= types:
        return False
    return least is None or not values or min(values) >= least


def _each(records, field, test, need, fail, fast=lambda values: False):
    """The ``field`` of every record, when ``test`` (``fast``: in bulk first) holds for each;
    else fail(index, why) of the first that breaks it (raised)."""
    values = [r.get(field) for r in records]
    k = None if fast(values) else _first_bad(values, test)
    if k is not None:
        got = "it is absent" if field not in records[k] else f"not {values[k]!r}"
        raise fail(k, f"'{field}' must be {need}, {got}")
    return values


def _records(dataset, key, source):
    records = dataset.get(key)
    if not isinstance(records, list):
        got = "it is absent" if key not in dataset else f"not {type(records).__name__}"
        raise LVISInputError(f"{_source(source)}: '{key}' must be a list of records, {got}")
    k = _first_bad(records, lambda r: isinstance(r, dict))
    if k is not None:
        raise LVISInputError(
            f"{_source(source)}: {key[:-1]} #{k} is a {type(records[k]).__name__}, not a dict"
        )
    return records


def _ids(records, key, field, source):
    """The integer ids ``field`` of ``records``: named error for a missing or non-integer one."""

    def fail(k, why):
        known = f" (id {records[k].get('id')!r})" if field != "id" else ""
        return LVISInputError(f"{_source(source)}: {key} #{k}{known}: {why}")

    def fast(v):
        return _all_of(v, {int}) and (not v or -(2**63) <= min(v) and max(v) < 2**63)

    return _each(records, field, is_integral, "an integer", fail, fast)


def _image_fields(images, ids, source, sizes, file_names):
    def fail(k, why):
        return LVISInputError(f"image id {ids[k]}{where(source)}: {why}")

    for field in ("height", "width") if sizes else ():
        _each(
            images, field, lambda v: is_integral(v) and v >= 1, "a positive integer", fail,
            lambda v: _all_of(v, {int}, 1),
        )  # fmt: skip
    big = _first_bad(
        images, lambda im: not sizes or im["height"] * im["width"] <= _core().MAX_IMAGE_PIXELS
    )
    if big is not None:
        raise fail(big, _image_problem(images[big]["height"], images[big]["width"]))
    for field in ("neg_category_ids", "not_exhaustive_category_ids"):
        _each(
            images, field, lambda v: v is None or isinstance(v, list) and all(map(is_integral, v)),
            "a list of category ids", fail,
            lambda v: _all_of(v, {list, type(None)}) and _all_of([c for i in v if i for c in i], {int}),
        )  # fmt: skip
    if file_names:
        k = _first_bad(
            images,
            lambda im: isinstance(im.get("file_name"), str)
            and im["file_name"]
            or isinstance(im.get("coco_url"), str)
            and im["coco_url"],
        )
        if k is not None:
            raise fail(k, "has no 'file_name' (nor an LVIS 'coco_url'): which image file is it?")


def _annotation_error(ids, img_of, source):
    def fail(k, problem):
        return LVISInputError(
            f"annotation id {ids[k]} (image {img_of[k]}){where(source)}: {problem}"
        )

    return fail


def annotation_boxes(anns, ids, img_of, source):
    """(n, 4) float64 boxes of the annotations ``anns`` (``ids``, images ``img_of``): every one
    a 'bbox' [x, y, w, h] of finite numbers, w, h >= 0, else a named LVISInputError."""

    def bulk(boxes):
        if not (_all_of(boxes, {list}) and all(len(b) == 4 for b in boxes)):
            return False
        flat = [v for b in boxes for v in b]
        arr = np.array(flat, np.float64).reshape(-1, 4) if _all_of(flat, {int, float}) else None
        return arr is not None and np.isfinite(arr).all() and (arr[:, 2:] >= 0).all()

    boxes = _each(
        anns, "bbox", lambda b: _box_ok(b) and all(map(is_number, b)) and min(b[2:]) >= 0,
        "[x, y, w, h] (4 finite numbers, w, h >= 0)", _annotation_error(ids, img_of, source), bulk,
    )  # fmt: skip
    return np.array(boxes, np.float64).reshape(-1, 4)


def annotation_masks(anns, ids, img_of, sizes, source, required=True, make=True):
    """The masks (counts uint32, offsets) of the annotations' segmentations under the rules
    (``sizes``: image id -> (h, w)): of every one (``required``), else of those that have the
    key (null included); a named LVISInputError for the first that breaks one. Without
    ``make`` only the rules are checked (None)."""
    fail = _annotation_error(ids, img_of, source)
    have = [k for k, a in enumerate(anns) if required or "segmentation" in a]
    known = np.array([img_of[k] in sizes for k in have], bool)
    h = np.array([sizes.get(img_of[k], (1, 1))[0] for k in have], np.int64)
    w = np.array([sizes.get(img_of[k], (1, 1))[1] for k in have], np.int64)
    segs = [anns[k].get("segmentation") for k in have]
    for j, s in enumerate(segs):  # (lists of lists: their numbers are checked in bulk below)
        if not (s.__class__ is list and s and all(p.__class__ is list for p in s)):
            reason = segmentation_problem(s, int(h[j]), int(w[j]))
            if reason is not None:
                raise fail(have[j], f"malformed segmentation: {reason}")
    _check_polygon_values(segs, have, fail, h, w)
    counts, off, code, detail = _core().masks(*segmentation_arrays(segs, h, w), make=make)
    bad = np.flatnonzero((code != 0) & known)
    if len(bad):
        j = int(bad[0])
        reason = mask_problem(segs[j], int(h[j]), int(w[j]), code[j], detail[j])
        raise fail(have[j], f"malformed segmentation: {reason}")
    return (counts, off) if make else None


def _check_polygon_values(segs, have, fail, h, w):
    """Polygons: lists of an even number >= 6 of finite numbers (in bulk, then the first
    offender one at a time)."""
    polys = [j for j, s in enumerate(segs) if s.__class__ is list]
    flat = [v for j in polys for p in segs[j] for v in p]
    lens = [len(p) for j in polys for p in segs[j]]
    if set(map(type, flat)) <= {int, float} and all(n >= 6 and n % 2 == 0 for n in lens):
        if np.isfinite(np.array(flat, np.float64)).all():
            return
    for j in polys:
        reason = segmentation_problem(segs[j], int(h[j]), int(w[j]))
        if reason is not None:
            raise fail(have[j], f"malformed segmentation: {reason}")


def check_ground_truth(
    gt, source=None, *, sizes=True, areas=False, boxes=False, masks=False, file_names=False
):
    """Raise LVISInputError, naming ``source`` and the image or annotation, where the
    ground-truth dict ``gt`` (COCO / LVIS format, loaded) breaks a rule: lists of dict records;
    integer ids; category id lists of images where given; annotations with an integer image and
    category id. ``sizes``: images of positive integer height and width, at most
    MAX_IMAGE_PIXELS pixels (what evaluation and training need; counting does not); ``areas``:
    every annotation has a numeric 'area' (evaluation); ``boxes``: a 'bbox' of 4 finite numbers,
    w and h >= 0; ``masks``: its segmentation keeps the segmentation rules
    (True: every annotation has one; "present": where it has one); ``file_names``: every image
    names its file ('file_name', or LVIS's 'coco_url'). Nothing is changed. Returns the
    annotations' ids and image ids."""
    if not isinstance(gt, dict):
        raise LVISInputError(f"{_source(source)} must hold a JSON object, not {type(gt).__name__}")
    images = _records(gt, "images", source)
    anns = _records(gt, "annotations", source)
    cats = _records(gt, "categories", source)
    img_ids = _ids(images, "image", "id", source)
    _ids(cats, "category", "id", source)
    _image_fields(images, img_ids, source, sizes, file_names)
    ann_ids = _ids(anns, "annotation", "id", source)
    img_of = _ids(anns, "annotation", "image_id", source)
    _ids(anns, "annotation", "category_id", source)
    if areas:
        fail = _annotation_error(ann_ids, img_of, source)
        _each(anns, "area", _is_double, "a number", fail, lambda v: _all_of(v, {int, float}))
    if boxes:
        annotation_boxes(anns, ann_ids, img_of, source)
    if masks:
        sizes = {  # (without ``sizes`` an image may have none: its masks get the size-free rules)
            i: (im["height"], im["width"])
            for i, im in zip(img_ids, images)
            if sizes or (is_integral(im.get("height")) and is_integral(im.get("width")))
        }
        annotation_masks(anns, ann_ids, img_of, sizes, source, masks is True, make=False)
    return ann_ids, img_of
