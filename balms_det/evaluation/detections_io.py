"""Detections in and out of the evaluation: the one validator of LVIS results, reading results
files (JSON in parallel chunks, or Detectron2's ``instances_predictions.pth``) and evaluating a
saved file against an annotation file without the model (:func:`evaluate_detections_file`,
``tools/evaluate_detections.py``).

Every check of a detection exists once, here (:func:`extract_columns`,
:func:`check_segmentation`), and every failure is an :class:`LVISInputError` naming the file and
the detection (its index in the results, image_id and category_id). The engine
(:mod:`balms_det.evaluation.fast_lvis`) and the lvis-api path both go through it.

This module imports neither torch nor Detectron2 (torch only to read a ``.pth`` file).
"""

import itertools
import logging
import math
import os
import re

import numpy as np

from ..utils import format_examples
from . import _json

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
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr) & (arr == np.round(arr))
        if ok.all():
            return arr.astype(np.int64)
        bad = np.flatnonzero(~ok).tolist()
    else:
        bad = [
            i
            for i, v in enumerate(values)
            if isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(v)
            or v != int(v)
        ]
        if not bad:  # a mix of ints and integral floats
            return np.array([int(v) for v in values], dtype=np.int64)
    _raise_for(batch, base, bad, source, f"{field} is not an integer")


def _scores(values, batch, base, source):
    try:
        score = np.array(values, dtype=np.float64).reshape(len(values))
    except (TypeError, ValueError):
        bad = [
            i
            for i, s in enumerate(values)
            if isinstance(s, bool) or not isinstance(s, (int, float))
        ]
        _raise_for(batch, base, bad, source, "score is not a number")
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
    except (TypeError, ValueError):
        pass
    if arr is None:
        bad = [
            p
            for p, b in zip(pos, boxes)
            if not isinstance(b, (list, tuple))
            or len(b) != 4
            or not all(isinstance(v, (int, float)) for v in b)
        ]
        _raise_for(batch, base, bad, source, "bbox must be [x, y, w, h] (4 numbers)")
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
def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_segmentation(segm, h, w, strict=True):
    """None if ``segm`` is a usable segmentation for an h x w image, else the reason.

    A result (``strict``) needs polygons of at least 3 points (an even number >= 6 of finite
    coordinates), an uncompressed RLE whose counts sum to h * w, or a compressed RLE of the
    image's size. Ground truth (``strict=False``) is checked for structure only, the contents
    left to pycocotools as lvis-api does."""
    if isinstance(segm, list):
        if len(segm) == 0:
            return "empty polygon list"
        if not strict:
            if not all(isinstance(p, list) and len(p) >= 4 for p in segm):
                return "a polygon must be a list of at least 4 coordinates"
            return None
        for poly in segm:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2:
                return "a polygon must be a list of x, y coordinates (an even number)"
            if len(poly) < 6:
                return f"a polygon needs at least 3 points, this one has {len(poly) // 2}"
            for v in poly:
                if not _is_number(v):
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
        if isinstance(counts, (str, bytes)):
            return None
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
    index in the results and its 'image_id .., category_id ..'."""
    try:  # fast path: compressed RLEs (str counts) of the image's size
        sizes = np.array([s["size"] for s in segs], dtype=np.int64)
        if (
            sizes.shape == (len(segs), 2)
            and (sizes[:, 0] == h).all()
            and (sizes[:, 1] == w).all()
            and all(s["counts"].__class__ is str for s in segs)
        ):
            return []
    except (TypeError, KeyError, ValueError, IndexError):
        pass
    bad, other = [], []
    for j, (s, hh, ww) in enumerate(zip(segs, np.asarray(h).tolist(), np.asarray(w).tolist())):
        if s is None:
            other.append(j)
            continue
        reason = check_segmentation(s, hh, ww)
        if reason is not None:
            bad.append((j, reason))
        elif not (isinstance(s, dict) and isinstance(s["counts"], (str, bytes))):
            other.append(j)
    if bad:
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
_SEG_PAIR = re.compile(rb', "segmentation": \{"size": \[\d+, \d+\], "counts": "[^"]*"\}')
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
