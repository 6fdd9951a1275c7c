"""Detections in and out of the evaluation: the one validator of LVIS results, reading results
files (JSON in parallel chunks, or Detectron2's ``instances_predictions.pth``) and evaluating a
saved file against an annotation file without the model (:func:`evaluate_detections_file`,
``tools/evaluate_detections.py``).

Every check of a detection exists once, here (:func:`extract_columns`,
:func:`check_segmentation`), and every failure is an :class:`LVISInputError` naming the file and
the detection (its index in the results, image_id and category_id). The engine
(:mod:`balms_det.evaluation.fast_lvis`) and the lvis-api path both go through it. Segmentations
(of detections and of ground truth) are checked before any pycocotools call, which trusts its
input (see "Segmentations" below): a hostile file is an error, not minutes of CPU or gigabytes.

This module imports neither torch nor Detectron2 (torch only to read a ``.pth`` file).
"""

import itertools
import logging
import math
import os
import re

import numpy as np

from ..utils import format_examples
from . import _json, _native

__all__ = [
    "LVISInputError",
    "extract_columns",
    "check_segmentation",
    "iter_result_chunks",
    "strip_segmentations",
    "load_gt_dataset",
    "load_lvis_detections",
    "is_empty_results",
    "evaluate_detections_file",
]

logger = logging.getLogger(__name__)


class LVISInputError(ValueError):
    """Ground truth or detections that cannot be evaluated: malformed JSON, missing or malformed
    fields, NaN or infinite numbers, ids absent from the annotation file. The message names the
    file and the offending entries."""


def _in(source):
    return f" in '{source}'" if source else ""


def _file(source, what="Detections"):
    return f"{what} file '{source}'" if source else what.lower()


def _ident(d):
    """'image_id 5, category_id 3' of a result dict (what of it is readable)."""
    if not isinstance(d, dict):
        return type(d).__name__
    return f"image_id {d.get('image_id')!r}, category_id {d.get('category_id')!r}"


def _name(batch, base, i):
    return f"#{base + i} ({_ident(batch[i])})"


def _raise_for(batch, base, idx, source, problem):
    """LVISInputError for the detections at batch positions ``idx`` (index, image_id and
    category_id of the first ones) and their problem."""
    idx = list(idx)
    shown = ", ".join(_name(batch, base, i) for i in idx[:5])
    if len(idx) > 5:
        shown += f", ... ({len(idx)} in all)"
    noun = "detection" if len(idx) == 1 else f"{len(idx)} detections"
    raise LVISInputError(f"{_file(source)}: {noun} {shown}: {problem}")


# ------------------------------------------------------------------------------------------
# Columns of a chunk of results: the validator
# ------------------------------------------------------------------------------------------
class Columns:
    """Detections of one chunk as numpy columns.

    For every detection: ``img`` / ``cat`` (indices into the sorted image / category ids of the
    ground truth), ``score``, ``has_box``, ``rel`` (its category is positive or negative in
    its image, i.e. lvis-api evaluates it). For the relevant ones, in order: ``box`` (x, y, w, h;
    NaN where absent) and, when asked for, ``segs`` (the segmentation objects, None where
    absent)."""

    __slots__ = ("n", "img", "cat", "score", "has_box", "rel", "box", "segs")


def _as_int_ids(values, batch, base, field, source):
    """Integer array of ids; floats only when integral; anything else names the detections."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError):  # lists of unequal lengths among them
        arr = np.empty(0, object)
    if arr.ndim != 1 or len(arr) != len(values):
        arr = np.empty(0, object)  # one value at a time (below)
    if arr.dtype.kind == "i" or (arr.dtype.kind == "u" and (arr.size == 0 or arr.max() < 2**63)):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(arr) & (arr == np.round(arr)) & (arr >= -(2.0**63)) & (arr < 2.0**63)
        if ok.all():
            return arr.astype(np.int64)
        bad = np.flatnonzero(~ok).tolist()
    else:
        bad = [i for i, v in enumerate(values) if not _is_integral(v)]
        if not bad:  # a mix of ints and integral floats
            return np.array([int(v) for v in values], dtype=np.int64)
    _raise_for(batch, base, bad, source, f"{field} is not an integer (of 64 bits)")


def _is_integral(v):
    """An integer, or an integral float, of the int64 range (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(v) and v == int(v) and -(2**63) <= int(v) < 2**63
    except OverflowError:  # an int too large for a float
        return False


def _scores(values, batch, base, source):
    try:
        score = np.array(values, dtype=np.float64)
        if score.shape != (len(values),):
            raise ValueError("not one number per result")
    except (TypeError, ValueError, OverflowError):
        bad = [i for i, s in enumerate(values) if isinstance(s, bool) or not _is_float(s)]
        _raise_for(batch, base, bad, source, "score is not a number (of 64 bits)")
    if not np.isfinite(score).all():
        bad = np.flatnonzero(~np.isfinite(score)).tolist()
        what = {"nan": "NaN", "inf": "infinite"}
        kinds = sorted({what["nan" if math.isnan(score[i]) else "inf"] for i in bad})
        _raise_for(batch, base, bad, source, f"score is {' or '.join(kinds)}")
    return score


def _boxes(boxes, batch, pos, base, source):
    """(m, 4) float64 array of the boxes ``boxes`` of the detections at batch positions
    ``pos``; malformed or non-finite boxes name their detections."""
    arr = None
    try:
        if not boxes or set(map(len, boxes)) == {4}:
            flat = itertools.chain.from_iterable(boxes)
            arr = np.fromiter(flat, np.float64, 4 * len(boxes)).reshape(-1, 4)
    except (TypeError, ValueError, OverflowError):
        pass
    if arr is None:
        bad = [
            p
            for p, b in zip(pos, boxes)
            if not isinstance(b, (list, tuple))
            or len(b) != 4
            or not all(isinstance(v, (int, float)) and _is_float(v) for v in b)
        ]
        _raise_for(batch, base, bad, source, "bbox must be [x, y, w, h] (4 numbers of 64 bits)")
    finite = np.isfinite(arr).all(1)
    if not finite.all():
        bad = [pos[i] for i in np.flatnonzero(~finite).tolist()]
        _raise_for(batch, base, bad, source, "bbox has a NaN or infinite coordinate")
    return arr


def _structure(batch, base, source):
    """Raise for the first result that is not a dict or lacks a required key."""
    for i, d in enumerate(batch):
        if not isinstance(d, dict):
            raise LVISInputError(
                f"{_file(source)}: result #{base + i} is a {type(d).__name__}, not a dict"
            )
        missing = [k for k in ("image_id", "category_id", "score") if k not in d]
        if missing:
            raise LVISInputError(f"{_file(source)}: result #{base + i} lacks {missing}")
    raise AssertionError("unreachable: every result is well formed")


def _box_column(batch, base, source, ignore_boxes):
    """(has_box (n,), box (n, 4), NaN where absent) of a chunk; a result needs a bbox or a
    segmentation (a segmentation when boxes are ignored)."""
    n = len(batch)
    if ignore_boxes:
        lacking = [i for i, d in enumerate(batch) if "segmentation" not in d]
        if lacking:
            _raise_for(batch, base, lacking, source, "has no segmentation (masks are evaluated)")
        return np.zeros(n, bool), np.full((n, 4), np.nan)
    box_any = [d.get("bbox") for d in batch]
    nobox = box_any.count(None)
    if nobox == 0:
        return np.ones(n, bool), _boxes(box_any, batch, range(n), base, source)
    has_box = np.array([b is not None for b in box_any])
    lacking = [i for i in np.flatnonzero(~has_box).tolist() if "segmentation" not in batch[i]]
    if lacking:
        _raise_for(batch, base, lacking, source, "has neither bbox nor segmentation")
    pos = np.flatnonzero(has_box).tolist()
    box = np.full((n, 4), np.nan)
    if pos:
        box[pos] = _boxes([box_any[i] for i in pos], batch, pos, base, source)
    return has_box, box


def extract_columns(batch, base, gt, source, need_segs, ignore_boxes=False):
    """Validate a chunk of LVIS results and return its :class:`Columns`.

    Args:
        batch: list of result dicts; ``base`` is the index of ``batch[0]`` in the results.
        gt: the indexed ground truth (its ``locate``, see ``fast_lvis.LVISGroundTruth``).
        source: the results file (named in errors), or None.
        need_segs: keep the segmentations of the relevant detections.
        ignore_boxes: treat the results as having no "bbox" (mask AP with mask areas).

    Raises LVISInputError for a result that is not a dict, lacks image_id / category_id /
    score (or both bbox and segmentation), has a non-integer id, a non-numeric, NaN or infinite
    score, or a malformed or non-finite bbox. Unknown ids are left to :func:`check_ids` (they
    are reported over the whole file at once): ``img`` / ``cat`` are -1 there.
    """
    n = len(batch)
    if n == 0:
        return _no_columns(need_segs)
    try:
        img = [d["image_id"] for d in batch]
        cat = [d["category_id"] for d in batch]
        score = [d["score"] for d in batch]
    except (KeyError, TypeError):
        _structure(batch, base, source)
    img = _as_int_ids(img, batch, base, "image_id", source)
    cat = _as_int_ids(cat, batch, base, "category_id", source)
    score = _scores(score, batch, base, source)
    has_box, box = _box_column(batch, base, source, ignore_boxes)
    iidx, ifound, cidx, cfound, rel = gt.locate(img, cat)
    c = Columns()
    c.n = n
    c.img = np.where(ifound, iidx, -1).astype(np.int32)
    c.cat = np.where(cfound, cidx, -1).astype(np.int32)
    c.score = score
    c.has_box = has_box
    c.rel = rel
    rel_idx = np.flatnonzero(rel)
    c.box = box[rel_idx]
    c.segs = None
    if need_segs or not has_box[rel_idx].all():
        c.segs = [batch[i].get("segmentation") for i in rel_idx.tolist()]
    return c


def _no_columns(need_segs):
    c = Columns()
    c.n = 0
    c.img = c.cat = np.zeros(0, np.int32)
    c.score = np.zeros(0)
    c.has_box = c.rel = np.zeros(0, bool)
    c.box = np.zeros((0, 4))
    c.segs = [] if need_segs else None
    return c


def check_ids(unknown_img, unknown_cat, source, gt_source):
    """Raise one LVISInputError for the detections of the whole file whose ids the annotation
    file lacks: ``unknown_*`` are (count, set of ids)."""
    problems = []
    where = f"the annotation file '{gt_source}'" if gt_source else "the annotations"
    for (count, ids), what in ((unknown_cat, "category"), (unknown_img, "image")):
        if count:
            problems.append(
                f"{count} detections have {what} ids {format_examples(ids)} that are not in "
                f"{where}"
            )
    if problems:
        raise LVISInputError(f"{_file(source)}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------
# Segmentations
# ------------------------------------------------------------------------------------------
# pycocotools trusts its input. A compressed RLE string whose run lengths do not sum to h * w
# (a truncated string, a digit inserted) makes mask_utils.iou run for minutes or overflow, and
# polygon coordinates far outside the image make its rleFrPoly allocate memory in proportion to
# them (1e9: ~24 GB). The readers check every segmentation they read before any pycocotools call
# (the compiled reader's decoder applies the same rules to the strings it decodes itself):
#
# * a compressed RLE string: characters '0'..'o' only, every run length complete and of at most
#   RLE_MAX_RUN_CHARS characters (pycocotools' encoder writes any count of an image of fewer
#   than 2**32 pixels in 7), every decoded count in 0..h * w (no overflow of pycocotools' 32-bit
#   counts), the counts summing to h * w;
# * polygons: finite numbers, every x within [-POLYGON_MARGIN * w, (1 + POLYGON_MARGIN) * w] and
#   every y within [-POLYGON_MARGIN * h, (1 + POLYGON_MARGIN) * h] (the image extended by its
#   own size on every side: detections near the border reach well beyond it), and the outline
#   (every polygon of the segmentation, closed, in the max norm) at most
#   POLYGON_MAX_OUTLINE * (h + 1) * (w + 1) pixels long (pycocotools traces the outline at 5
#   times the resolution; no outline along the pixel grid that does not retrace an edge is
#   longer than 2 (h + 1) (w + 1), and the border of the extended image is shorter).
RLE_MAX_RUN_CHARS = 7
POLYGON_MARGIN = 1.0
POLYGON_MAX_OUTLINE = 4


def _is_float(v):
    """A number that a float64 holds (not an int too large for one; NaN and inf are floats)."""
    if not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _is_number(v):
    return not isinstance(v, bool) and _is_float(v) and math.isfinite(v)


def _rle_texts(counts):
    """(bytes, lengths): compressed RLE counts strings (str or bytes) joined, and their lengths
    in bytes (a non-ASCII character takes several, none of them a valid RLE character)."""
    lengths = np.fromiter(map(len, counts), np.int64, len(counts))
    if all(c.__class__ is str for c in counts):
        joined = "".join(counts)
        if joined.isascii():
            return joined.encode("ascii"), lengths
    parts = [c.encode("utf-8", "surrogatepass") if isinstance(c, str) else bytes(c) for c in counts]
    return b"".join(parts), np.fromiter(map(len, parts), np.int64, len(parts))


def bad_rle_strings(counts, hw):
    """Boolean array: which of the compressed RLE counts strings ``counts`` (str or bytes) break
    the rules above for images of ``hw`` (per string) pixels, vectorised over all of them
    (:func:`rle_string_problem` says why, one string at a time). The compiled core, where it is
    available, finds the few strings to look at (:func:`_native.undecodable_rles`)."""
    n = len(counts)
    hw = np.asarray(hw, np.int64).reshape(n)
    data, lengths = _rle_texts(counts)
    if n and _native.available():
        bad = np.zeros(n, bool)
        look = _native.undecodable_rles(data, lengths, hw)
        if len(look):
            texts = [counts[i] for i in look.tolist()]
            bad[look] = _bad_rle_texts(*_rle_texts(texts), hw[look])
        return bad
    return _bad_rle_texts(data, lengths, hw)


def _bad_rle_texts(data, lengths, hw):
    """:func:`bad_rle_strings` of the strings ``data`` (joined, ``lengths`` bytes each), in
    numpy."""
    n = len(lengths)
    bad = np.zeros(n, bool)
    if n == 0:
        return bad
    v = np.frombuffer(data, np.uint8) - np.uint8(48)  # an invalid character: 64 or more
    start = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=start[1:])
    invalid = v > 63
    if invalid.any():
        bad[np.searchsorted(start, np.flatnonzero(invalid), "right") - 1] = True
        v = np.where(invalid, np.uint8(0), v)
    is_end = (v & 0x20) == 0  # the last character of a count
    nonempty = np.flatnonzero(lengths > 0)
    last = start[1:][nonempty] - 1
    bad[nonempty[~is_end[last]]] = True  # ends inside a count
    is_end[last] = True  # (no count runs on into the next string)
    ends = np.flatnonzero(is_end)
    m = len(ends)
    cb = np.searchsorted(ends, start)  # string s: counts cb[s]..cb[s + 1] - 1
    per = np.diff(cb)
    total = np.zeros(m + 1, np.int64)
    if m:
        cs = np.r_[0, ends[:-1] + 1]
        nchar = ends - cs + 1
        long = nchar > RLE_MAX_RUN_CHARS
        if long.any():
            bad[np.searchsorted(cb, np.flatnonzero(long), "right") - 1] = True
        # 5 bits a character, least significant first (the first 7 of a count)
        v5 = (v & 0x1F).astype(np.int64)
        x = v5[cs]
        sel = np.flatnonzero(nchar > 1)
        for i in range(1, RLE_MAX_RUN_CHARS):
            if not len(sel):
                break
            x[sel] += v5[cs[sel] + i] << (5 * i)
            sel = sel[nchar[sel] > i + 1]
        neg = np.flatnonzero(v[ends] & 0x10)  # sign bit of the last character
        x[neg] |= np.int64(-1) << (5 * np.minimum(nchar[neg], RLE_MAX_RUN_CHARS))
        # count j > 2 of a string is a delta to count j - 2: running sums over every other
        # count (global index g), less what came before the string in the same chain
        first = cb[:-1]
        pos = np.arange(m) - np.repeat(first, per)
        head = pos == 0
        run = np.where(head, 0, x)
        run[0::2] = np.cumsum(run[0::2])  # int64 wraps around, exactly: differences stay exact
        run[1::2] = np.cumsum(run[1::2])
        padded = np.r_[0, 0, run]  # padded[g + 2] = run[g]
        before_odd = np.repeat(padded[first + 1], per)  # run[first - 1]: the chain of first + 1
        before_even = np.repeat(
            padded[np.minimum(first + 2, m + 1)], per
        )  # run[first]: 0 added at the head
        cnt = np.where(head, x, run - np.where(pos & 1, before_odd, before_even))
        in_range = (cnt >= 0) & (cnt <= np.repeat(hw, per))
        if not in_range.all():
            bad[np.searchsorted(cb, np.flatnonzero(~in_range), "right") - 1] = True
        np.cumsum(np.where(in_range, cnt, 0), out=total[1:])
    bad |= (total[cb[1:]] - total[cb[:-1]]) != hw
    return bad


def rle_string_problem(counts, hw):
    """None if the compressed RLE counts string ``counts`` (str or bytes) of an image of ``hw``
    pixels keeps the rules above (as :func:`bad_rle_strings`), else the first problem."""
    if isinstance(counts, str):
        data = counts.encode("utf-8", "surrogatepass")
    else:
        data = bytes(counts)
    cnts, x, k = [], 0, 0
    for i, ch in enumerate(data):
        v = ch - 48
        if not 0 <= v <= 63:
            shown = chr(ch) if ch < 128 else f"byte 0x{ch:02x}"
            return f"RLE counts hold {shown!r} (character {i}), not one of '0'..'o'"
        if k == RLE_MAX_RUN_CHARS:
            return (
                f"RLE count #{len(cnts)} runs over more than {RLE_MAX_RUN_CHARS} characters "
                f"(to character {i})"
            )
        x |= (v & 0x1F) << (5 * k)
        k += 1
        if not v & 0x20:
            if v & 0x10:
                x |= -1 << (5 * k)
            if len(cnts) > 2:
                x += cnts[-2]
            if not 0 <= x <= hw:
                return f"RLE count #{len(cnts)} is {x}, outside 0..{hw} (h * w)"
            cnts.append(x)
            x, k = 0, 0
    if k:
        return "RLE counts end inside a count (a truncated string?)"
    if sum(cnts) != hw:
        return f"RLE counts sum to {sum(cnts)} instead of h * w = {hw}"
    return None


def flatten_polygons(segms):
    """(xy, points, polygons) of polygon segmentations ``segms`` (lists of lists of
    coordinates): every polygon's coordinates (an odd last one left out, as pycocotools does)
    concatenated as float64, or None where some coordinate is not a number; the points of every
    polygon and the polygons of every segmentation (int64)."""
    coords, npts, npoly = [], [], []
    for segm in segms:
        for p in segm:
            k = len(p) // 2
            coords.extend(p if len(p) == 2 * k else p[: 2 * k])
            npts.append(k)
        npoly.append(len(segm))
    xy = None
    try:
        arr = np.array(coords)
        if arr.ndim == 1 and arr.dtype.kind in "biuf":
            xy = arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        pass
    return xy, np.array(npts, np.int64), np.array(npoly, np.int64)


def bad_outlines(segms, h, w, flat=None):
    """Boolean array: which of the polygon segmentations ``segms`` (lists of lists of
    coordinates) of h x w images (per segmentation) break the rules above: a coordinate that is
    not a finite number, outside the image by more than the margin, an outline too long.
    Vectorised over all of them (:func:`outline_problem` says why, one at a time). ``flat``:
    :func:`flatten_polygons` of ``segms``, where the caller has it."""
    n = len(segms)
    h = np.asarray(h, np.float64).reshape(n)
    w = np.asarray(w, np.float64).reshape(n)
    xy, npts, npoly = flatten_polygons(segms) if flat is None else flat
    if xy is None:  # one at a time: which ones
        if n == 1:
            return np.ones(1, bool)
        return np.array(
            [bad_outlines([s], h[i : i + 1], w[i : i + 1])[0] for i, s in enumerate(segms)]
        )
    x, y = xy[0::2], xy[1::2]
    pt_seg = np.repeat(np.repeat(np.arange(n), npoly), npts)
    hp, wp = h[pt_seg], w[pt_seg]
    m = POLYGON_MARGIN
    with np.errstate(invalid="ignore"):
        ok = (x >= -m * wp) & (x <= (1 + m) * wp) & (y >= -m * hp) & (y <= (1 + m) * hp)
    bad = np.zeros(n, bool)
    bad[pt_seg[~ok]] = True
    # the outline: every point to the next of its polygon, the last one back to the first
    nxt = np.arange(1, len(x) + 1)
    first = np.cumsum(npts) - npts
    has = npts > 0
    nxt[(first + npts - 1)[has]] = first[has]
    x, y = np.where(ok, x, 0), np.where(ok, y, 0)
    step = np.maximum(np.abs(x[nxt] - x), np.abs(y[nxt] - y))
    length = np.bincount(pt_seg, weights=step, minlength=n)
    bad |= length > POLYGON_MAX_OUTLINE * (h + 1) * (w + 1)
    return bad


def outline_problem(segm, h, w):
    """None if the polygons ``segm`` (a list of lists of coordinates) of an h x w image keep
    the rules above (as :func:`bad_outlines`), else the first problem."""
    m = POLYGON_MARGIN
    for poly in segm:
        for i, v in enumerate(poly[: len(poly) // 2 * 2]):
            if not _is_float(v) or not math.isfinite(v):
                return f"non-numeric or non-finite polygon coordinate {v!r}"
            size, name = (w, "x") if i % 2 == 0 else (h, "y")
            if not -m * size <= v <= (1 + m) * size:
                return (
                    f"polygon coordinate {name} = {v!r} lies outside the {w} x {h} (w x h) image "
                    f"by more than {m:g} times its size"
                )
    if not all(isinstance(p, (list, tuple)) for p in segm):
        return "a polygon must be a list of coordinates"
    if bad_outlines([segm], [h], [w])[0]:
        cap = POLYGON_MAX_OUTLINE * (h + 1) * (w + 1)
        return (
            f"the polygons' outline is longer than {POLYGON_MAX_OUTLINE} (h + 1) (w + 1) = {cap} "
            "pixels (or its coordinates cannot be read as numbers)"
        )
    return None


def check_segmentation(segm, h, w, strict=True, deep=True):
    """None if ``segm`` is a usable segmentation for an h x w image, else the reason.

    A result (``strict``) needs polygons of at least 3 points (an even number >= 6 of finite
    coordinates), an uncompressed RLE whose counts sum to h * w, or a compressed RLE of the
    image's size. Ground truth (``strict=False``) may have polygons of 2 points, and numbers
    that are bools, as pycocotools and lvis-api read it. ``deep``: the polygons' coordinates
    and outline and the RLE string are checked too (see the rules above); callers that check
    many at once do it with :func:`bad_outlines` and :func:`bad_rle_strings`."""
    if isinstance(segm, list):
        if len(segm) == 0:
            return "empty polygon list"
        if not strict:
            if not all(isinstance(p, list) and len(p) >= 4 for p in segm):
                return "a polygon must be a list of at least 4 coordinates"
            return outline_problem(segm, h, w) if deep else None
        for poly in segm:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2:
                return "a polygon must be a list of x, y coordinates (an even number)"
            if len(poly) < 6:
                return f"a polygon needs at least 3 points, this one has {len(poly) // 2}"
            for v in poly:
                if not _is_number(v):
                    return f"non-numeric or non-finite polygon coordinate {v!r}"
        return outline_problem(segm, h, w) if deep else None
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
        if isinstance(counts, (str, bytes)):
            return rle_string_problem(counts, int(h) * int(w)) if deep else None
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != h * w:
                return f"uncompressed RLE counts sum to {sum(counts)} instead of {h * w}"
            return None
        return f"RLE counts must be a string or a list, not {type(counts).__name__}"
    return f"segmentation must be a list of polygons or an RLE dict, not {type(segm).__name__}"


def check_segmentations(segs, h, w, index, ident, source):
    """Positions of the segmentations that are not compressed RLEs of their image's size
    (polygons, uncompressed RLE, None); raises LVISInputError naming the malformed ones.

    ``h``, ``w``: per-segmentation image size; ``index(j)`` / ``ident(j)``: the detection's
    index in the results and its 'image_id .., category_id ..'. RLE strings and polygons are
    checked all at once (:func:`bad_rle_strings`, :func:`bad_outlines`)."""
    h = np.asarray(h, np.int64).reshape(len(segs))
    w = np.asarray(w, np.int64).reshape(len(segs))
    strings = None
    try:  # fast path: compressed RLEs (str counts) of the image's size
        sizes = np.array([s["size"] for s in segs], dtype=np.int64)
        if (
            sizes.shape == (len(segs), 2)
            and (sizes[:, 0] == h).all()
            and (sizes[:, 1] == w).all()
            and all(s["counts"].__class__ is str for s in segs)
        ):
            strings, polys, other = list(range(len(segs))), [], []
    except (TypeError, KeyError, ValueError, IndexError, OverflowError):
        pass
    bad = []
    if strings is None:
        strings, polys, other = [], [], []
        for j, (s, hh, ww) in enumerate(zip(segs, h.tolist(), w.tolist())):
            if s is None:
                other.append(j)
                continue
            reason = check_segmentation(s, hh, ww, deep=False)
            if reason is not None:
                bad.append((j, reason))
            elif isinstance(s, list):
                polys.append(j)
            elif isinstance(s["counts"], (str, bytes)):
                strings.append(j)
            else:
                other.append(j)
        other = sorted(other + polys)
    if polys:
        flagged = np.asarray(polys)[bad_outlines([segs[j] for j in polys], h[polys], w[polys])]
        bad += [(j, outline_problem(segs[j], int(h[j]), int(w[j]))) for j in flagged.tolist()]
    if strings:
        hw = h[strings] * w[strings]
        flagged = np.asarray(strings)[bad_rle_strings([segs[j]["counts"] for j in strings], hw)]
        bad += [
            (j, rle_string_problem(segs[j]["counts"], int(h[j]) * int(w[j])))
            for j in flagged.tolist()
        ]
    if bad:
        bad.sort(key=lambda b: b[0])
        shown = "; ".join(f"#{index(j)} ({ident(j)}): {r}" for j, r in bad[:5])
        if len(bad) > 5:
            shown += f" ... ({len(bad)} in all)"
        raise LVISInputError(f"{_file(source)}: malformed segmentation of detection {shown}")
    return other


# ------------------------------------------------------------------------------------------
# Reading results in chunks
# ------------------------------------------------------------------------------------------
# A segmentation as Python's json writes Detectron2's results, the last member of a result.
# Removed from the text before parsing when no mask is needed: parsing is then faster.
# Only JSON that the parser takes (integers without leading zeros, a string of ASCII characters
# and valid escapes): removing a member must not hide text that would not parse.
_SEG_PAIR = re.compile(
    rb', "segmentation": \{"size": \[(?:0|[1-9][0-9]*), (?:0|[1-9][0-9]*)\], '
    rb'"counts": "(?:[^"\\\x00-\x1f\x80-\xff]|\\[\\/bfnrt]|\\u[0-9a-fA-F]{4})*"\}'
)
_VALUE_END = frozenset(b'"}]0123456789el')


def _no_escaped_quote(text):
    """True when no string of ``text`` holds an escaped quote (a quote after an odd number of
    backslashes): every quote is then a string delimiter."""
    i = text.find(b'\\"')
    while i >= 0:
        j = i
        while j >= 0 and text[j] == 0x5C:
            j -= 1
        if (i - j) % 2 == 1:
            return False
        i = text.find(b'\\"', i + 2)
    return True


def strip_segmentations(text):
    """``text`` (results, comma-separated) without their Detectron2-style segmentations, or
    None when that cannot be done exactly.

    Exact: with no escaped quote every quote delimits a string, so a match of
    :data:`_SEG_PAIR` starting after an even number of quotes lies outside strings and is one
    whole ``"segmentation": {...}`` member; preceded by the end of a value and followed by the
    object's closing brace, it is the last member of an object. Removing it keeps the text
    valid exactly when it was, and every other value as it was."""
    if b'"segmentation"' not in text or not _no_escaped_quote(text):
        return None
    spans = [m.span() for m in _SEG_PAIR.finditer(text)]
    if not spans:
        return None
    quotes = np.flatnonzero(np.frombuffer(text, np.uint8) == 0x22)
    if (np.searchsorted(quotes, [s for s, _ in spans]) % 2).any():
        return None
    out, prev = [], 0
    for s, e in spans:
        if s == 0 or text[s - 1] not in _VALUE_END or text[e : e + 1] != b"}":
            return None
        out.append(text[prev:s])
        prev = e
    out.append(text[prev:])
    return b"".join(out)


def iter_result_chunks(results, ranges=None, strip=False, step=1 << 12, scan=None):
    """Yield ``(base, batch, original)`` chunks of results: a list (sliced, ``ranges`` a
    (start, stop) slice), or a JSON file read in the byte ranges ``ranges`` (from
    :func:`balms_det.evaluation._json.array_ranges`; default: the whole array). For a file,
    ``base`` counts from the first range's start. With ``strip``, a file's chunks are parsed
    without their segmentations where :func:`strip_segmentations` can; ``original`` is then
    the chunk's text (parse it when a segmentation is needed after all), else None. With
    ``scan`` (see :func:`balms_det.evaluation._json.iter_array`), a file's chunk is what it
    returns where it returns something (with ``original`` None), in larger chunks."""
    if isinstance(results, (list, tuple)):
        lo, hi = ranges if ranges is not None else (0, len(results))
        for s in range(lo, hi, step):
            yield s, results[s : min(s + step, hi)], None
        return
    path = results
    if ranges is None:
        ranges = array_ranges_or_raise(path, 1)
    transform = strip_segmentations if strip and scan is None else None
    chunk_bytes = _json.SCAN_CHUNK_BYTES if scan is not None else None
    base = 0
    for start, stop, last in ranges:
        try:
            chunks = _json.iter_array(path, start, stop, last, transform, chunk_bytes, scan)
            for items, original in chunks:
                yield base, items, original
                base += len(items)
        except _json.BadJSON as e:
            near = f" (near byte {e.offset})" if e.offset is not None else ""
            raise LVISInputError(f"{_file(path)} is not valid JSON{near}: {e}") from None


def array_ranges_or_raise(path, parts):
    """Byte ranges of the results array of ``path``; LVISInputError naming the file when it
    does not hold a list."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Detections file '{path}' does not exist")
    ranges = _json.array_ranges(path, parts)
    if ranges is not None:
        return ranges
    try:
        data = _json.read_file(path)
    except _json.BadJSON as e:
        raise LVISInputError(f"{_file(path)} is not valid JSON: {e}") from None
    _not_a_list(data, path)


def _not_a_list(data, path):
    if isinstance(data, dict) and "annotations" in data:
        raise LVISInputError(
            f"{_file(path)} looks like an annotation file (it has 'annotations'); pass LVIS "
            "results (a list) or instances_predictions.pth"
        )
    raise LVISInputError(f"{_file(path)} must hold a list of results, not a {type(data).__name__}")


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def load_gt_dataset(path):
    """An LVIS/COCO-format annotation file as a dict (checked for the keys evaluation needs)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Annotation file '{path}' does not exist")
    try:
        data = _json.read_file(path)
    except _json.BadJSON as e:
        raise LVISInputError(f"Annotation file '{path}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise LVISInputError(f"Annotation file '{path}' must hold a JSON object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise LVISInputError(f"Annotation file '{path}' has no {missing}")
    return data


def _category_map(mapping, cat_ids, source):
    """contiguous (0-based) id -> dataset id, or None for "plus1" (id + 1)."""
    if mapping in ("auto", "sorted"):
        # Detectron2's loaders map the sorted dataset ids to 0..K-1 (for LVIS: id - 1)
        return dict(enumerate(sorted(cat_ids)))
    if mapping == "plus1":
        return None
    if not os.path.exists(mapping):
        raise FileNotFoundError(f"Category mapping file '{mapping}' does not exist")
    try:
        data = _json.read_file(mapping)
    except _json.BadJSON as e:
        raise LVISInputError(f"Category mapping file '{mapping}' is not valid JSON: {e}") from None
    if isinstance(data, list):
        return dict(enumerate(data))
    if isinstance(data, dict):
        try:
            return {int(k): v for k, v in data.items()}
        except ValueError:
            pass
    raise LVISInputError(
        f"Category mapping file '{mapping}' must hold a list (contiguous id -> dataset id) or "
        f"an object {{contiguous id: dataset id}} (for '{source}')"
    )


def _load_pth(path, cat_ids, category_mapping):
    """LVIS results (dataset category ids) from Detectron2's saved predictions."""
    import torch

    try:
        preds = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (any unpickling failure: say which file)
        raise LVISInputError(f"Detections file '{path}' cannot be read by torch.load: {e}")
    if not isinstance(preds, list) or not all(isinstance(p, dict) for p in preds):
        raise LVISInputError(
            f"Detections file '{path}' must hold Detectron2's saved predictions: a list of "
            "{'image_id', 'instances'} dicts"
        )
    if preds and not any("instances" in p for p in preds):
        raise LVISInputError(
            f"Detections file '{path}' holds no 'instances' (proposals only?): nothing to "
            "evaluate"
        )
    results = list(itertools.chain(*[p.get("instances", []) for p in preds]))
    cmap = _category_map(category_mapping, cat_ids, path)
    bad = set()
    for i, r in enumerate(results):
        if not isinstance(r, dict) or "category_id" not in r:
            raise LVISInputError(f"Detections file '{path}': instance #{i} is not a result dict")
        k = r["category_id"]
        if cmap is None:
            r["category_id"] = k + 1
        elif k in cmap:
            r["category_id"] = cmap[k]
        else:
            bad.add(k)
    if bad:
        raise LVISInputError(
            f"Detections file '{path}' has contiguous category ids {format_examples(bad)} beyond "
            f"the {len(cmap)} categories of the annotation file (mapping '{category_mapping}')"
        )
    return results


def is_pth(path):
    return os.fspath(path).endswith((".pth", ".pt", ".pkl"))


def load_lvis_detections(path, gt_dataset, category_mapping="auto"):
    """LVIS results (1-based dataset category ids) of a results JSON or of Detectron2's
    ``instances_predictions.pth`` as a list (not validated: the evaluation does it).

    For a ``.pth`` file the 0-based contiguous category ids are mapped with
    ``category_mapping``: "auto"/"sorted" (index into the sorted category ids of the annotation
    file, as Detectron2's loaders do; id + 1 for LVIS), "plus1", or a JSON file (list or
    object, contiguous id -> dataset id).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Detections file '{path}' does not exist")
    if is_pth(path):
        return _load_pth(path, [c["id"] for c in gt_dataset["categories"]], category_mapping)
    try:
        results = _json.read_file(path)
    except _json.BadJSON as e:
        raise LVISInputError(f"{_file(path)} is not valid JSON: {e}") from None
    if not isinstance(results, list):
        _not_a_list(results, path)
    return results


def evaluate_detections_file(
    gt_json,
    detections,
    output_dir=None,
    iou_types=None,
    engine="fast",
    train_json=None,
    compare_dirs=(),
    compare_labels=None,
    max_dets=300,
    category_mapping="auto",
    log=None,
    protocols=("standard",),
    dets_per_category=10000,
    workers=None,
):
    """Evaluate a saved detections file against an annotation file, without the model.

    Args:
        gt_json: LVIS or COCO-format annotation file.
        detections: LVIS results JSON or Detectron2's ``instances_predictions.pth``.
        output_dir: where the per-class table, metrics and plots go (nothing written if None).
        iou_types: "bbox" and / or "segm"; default: those the detections support (both for an
            empty file when the annotations have masks).
        train_json: training annotation file whose counts give the groups (and the table's
            counts) of categories; needed when ``gt_json`` has neither ``frequency`` nor
            ``image_count`` fields.
        compare_dirs: earlier result folders to compare with in ``comparison_<task>.png``.
        protocols: any of "standard" (300 per image), "fixed" (AP-fixed), "pool" (AP-pool),
            "boundary" (boundary AP); see :mod:`balms_det.evaluation.protocols`.
        dets_per_category: the per-category budget of AP-fixed and AP-pool.
        workers: processes of the engine (default: up to 2).

    Returns:
        (results, per_class, outputs): task -> metrics (%), task -> {category id: AP}, and
        :func:`balms_det.evaluation.report.write_report`'s dict (empty without output_dir).
    """
    from .protocols import evaluate_tasks, plan_tasks, prepare_gt_dataset

    log = log or logger
    gt_json = os.fspath(gt_json)
    detections = os.fspath(detections)
    gt = load_gt_dataset(gt_json)
    train_counts = _train_counts(train_json)
    prepare_gt_dataset(
        gt, train_counts, gt_json, hint="pass --train-json (the training annotation file)"
    )
    if not os.path.exists(detections):
        raise FileNotFoundError(f"Detections file '{detections}' does not exist")
    # a JSON file is streamed by the engine; lvis-api and a .pth need the list
    results = detections
    if is_pth(detections) or engine != "fast":
        results = load_lvis_detections(detections, gt, category_mapping)
    iou_types = _iou_types(iou_types, results, gt)
    tasks = plan_tasks(iou_types, protocols)
    log.info(
        "Evaluating '%s' against '%s' (%s)", detections, gt_json, ", ".join(t.name for t in tasks)
    )
    res, per_class, num_dets = evaluate_tasks(
        gt,
        results,
        tasks,
        max_dets=max_dets,
        engine=engine,
        log=log,
        dets_per_category=dets_per_category,
        source=detections,
        gt_source=gt_json,
        workers=workers,
    )
    outputs = {}
    if output_dir:
        from .report import write_report

        outputs = write_report(
            output_dir,
            gt,
            res,
            per_class,
            train_counts,
            compare_dirs,
            compare_labels,
            log,
            num_dets_by_task=num_dets,
        )
    return res, per_class, outputs


def _train_counts(train_json):
    """{category id: counts} of a training annotation file, or None."""
    if not train_json:
        return None
    from ..class_counts import counts_from_annotation_file

    info, _ = counts_from_annotation_file(os.fspath(train_json))
    return {c["id"]: c for c in info}


def _iou_types(iou_types, results, gt):
    """The iou types asked for, else those the detections support (bbox and, when the
    annotations have masks, segm for no detection at all)."""
    from .protocols import tasks_of_results

    if iou_types:
        return tuple(iou_types)
    if is_empty_results(results):
        return (
            ("bbox", "segm") if any("segmentation" in a for a in gt["annotations"]) else ("bbox",)
        )
    return tasks_of_results(results)


def is_empty_results(results):
    """True for an empty list of results or a results file holding an empty array."""
    if isinstance(results, (list, tuple)):
        return len(results) == 0
    ranges = array_ranges_or_raise(os.fspath(results), 1)
    start, stop, _ = ranges[0]
    with open(results, "rb") as f:
        f.seek(start)
        return not f.read(stop - start).strip()
