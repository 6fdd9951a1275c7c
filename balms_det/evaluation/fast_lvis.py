"""Fast LVIS evaluation that reproduces lvis-api 0.5.3 (``lvis.LVISEval``) to 1e-9.

lvis-api loops in Python over every image x category cell and matches detections with a
Python triple loop; this module only touches the cells that hold ground truth or kept
detections, computes IoUs with pycocotools' C routines, runs the greedy matching for all
IoU thresholds x area ranges (and many cells) at once with numpy, and streams a results
file in chunks instead of holding it (and copies of it) as Python dicts.

Protocol details of lvis-api 0.5.3 reproduced here (see lvis/eval.py, lvis/results.py):

* at most ``max_dets`` detections per image over all categories, the top scores (a stable
  sort: ties keep the input order), applied before any other filtering;
* detection area: ``w * h`` of the box when the first kept result has a "bbox", else the
  mask area; ground-truth area: the annotation's "area" field; both are dropped when the
  area is not in (0, inf);
* a detection is evaluated only if its category has (kept) ground truth in the image or is
  in the image's ``neg_category_ids``; unmatched detections of a category in the image's
  ``not_exhaustive_category_ids`` are ignored, as are unmatched ones outside an area range;
* ground truth with a true "ignore" field is ignored; iscrowd is not used;
* greedy matching in score order (stable), best IoU among non-ignored ground truth first
  (the last one wins a tie), ignored ground truth only when no regular one matches;
* accumulation per category over all images (ties in score ordered by image id), the
  precision envelope, 101 recall thresholds with ``searchsorted(side="left")``, and
  lvis-api's summary (AP over values > -1, APr/APc/APf by the category "frequency").

Main entry point: :func:`evaluate_lvis`. :class:`LVISGroundTruth` can be built once and
reused for several evaluations (e.g. bbox and segm of the same results).
"""

import contextlib
import gc
import itertools
import json
import math
import os
import re
import time
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_utils

__all__ = [
    "LVISInputError",
    "LVISGroundTruth",
    "LVISEvalResult",
    "FastLVISEval",
    "evaluate_lvis",
    "IOU_THRS",
    "REC_THRS",
    "AREA_RNG",
    "AREA_RNG_LBL",
]

# Exactly lvis.eval.Params.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]]
AREA_RNG_LBL = ["all", "small", "medium", "large"]
FREQ_LBL = ["r", "c", "f"]

_THR_EFF = np.minimum(IOU_THRS, 1 - 1e-10)  # lvis-api: iou = min([iou_thr, 1 - 1e-10])
_NT = len(IOU_THRS)
_NA = len(AREA_RNG)
_AREA_LO = np.array([a[0] for a in AREA_RNG], dtype=np.float64)
_AREA_HI = np.array([a[1] for a in AREA_RNG], dtype=np.float64)
_EXAMPLES = 10  # how many offending ids / indices an error message names


class LVISInputError(ValueError):
    """Bad ground truth or detections (unknown ids, malformed fields or segmentations)."""


def _where(source):
    return " in {}".format(source) if source else ""


def _fmt_examples(values):
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:_EXAMPLES])
    if len(values) > _EXAMPLES:
        shown += ", ... ({} in all)".format(len(values))
    return "[" + shown + "]"


def _as_int_ids(values, what, source):
    """Integer array of ids; floats are accepted only when integral."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    bad = []
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr) & (arr == np.round(arr))
        if ok.all():
            return arr.astype(np.int64)
        bad = np.flatnonzero(~ok)
    else:
        for i, v in enumerate(values):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or (isinstance(v, float) and not float(v).is_integer())
            ):
                bad.append(i)
    raise LVISInputError(
        "{}: non-integer values{} at positions {}: {}".format(
            what, _where(source), _fmt_examples(bad), _fmt_examples([values[i] for i in bad])
        )
    )


def _lookup(sorted_ids, values):
    """Index of each value in ``sorted_ids`` and a mask of values found there."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    idx = np.searchsorted(sorted_ids, values)
    idx_c = np.minimum(idx, len(sorted_ids) - 1)
    found = sorted_ids[idx_c] == values
    return idx_c, found


def _in_sorted(sorted_vals, values):
    if len(sorted_vals) == 0:
        return np.zeros(len(values), bool)
    idx = np.minimum(np.searchsorted(sorted_vals, values), len(sorted_vals) - 1)
    return sorted_vals[idx] == values


def _poly_or_rle_to_rle(segm, h, w):
    """lvis.LVIS.ann_to_rle: polygons -> merged RLE; uncompressed RLE -> RLE; RLE as is."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, h, w)
        return mask_utils.merge(rles)
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _check_segm(segm, h, w, strict=True):
    """Return None if ``segm`` is a usable segmentation for an h x w image, else a reason.

    ``strict=False`` (ground truth) only checks the structure of polygons and leaves
    their contents to pycocotools, as lvis-api does."""
    if isinstance(segm, list):
        if len(segm) == 0:
            return "empty polygon list"
        if not strict:
            if not all(isinstance(p, list) and len(p) >= 4 for p in segm):
                return "a polygon must be a list of at least 4 coordinates"
            return None
        for poly in segm:
            if not isinstance(poly, (list, tuple)) or len(poly) < 4 or len(poly) % 2:
                return "a polygon must be a list of an even number (>= 4) of coordinates"
            for v in poly:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    return "non-numeric or non-finite polygon coordinate {!r}".format(v)
        return None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return "an RLE needs 'counts' and 'size'"
        size = segm["size"]
        try:
            sh, sw = size
        except (TypeError, ValueError):
            return "bad RLE size {!r}".format(size)
        if sh != h or sw != w:
            return "RLE size {!r} does not match the image size [{}, {}]".format(size, h, w)
        counts = segm["counts"]
        if isinstance(counts, (str, bytes)):
            return None
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != h * w:
                return "uncompressed RLE counts sum to {} instead of {}".format(sum(counts), h * w)
            return None
        return "RLE counts must be a string or a list, not {}".format(type(counts).__name__)
    return "segmentation must be a list of polygons or an RLE dict, not {}".format(
        type(segm).__name__
    )


# ----------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------
class LVISGroundTruth:
    """An LVIS dataset (path, dict or ``lvis.LVIS``) indexed for :func:`evaluate_lvis`.

    The dataset dict is read, never modified. Build it once to evaluate several result
    sets or both iou types against the same annotations.
    """

    def __init__(self, gt):
        with _gc_paused():
            self._init(gt)

    def _init(self, gt):
        self.source = None
        if isinstance(gt, LVISGroundTruth):
            raise TypeError("already an LVISGroundTruth")
        if isinstance(gt, (str, os.PathLike)):
            self.source = os.fspath(gt)
            try:
                with open(self.source, "r") as f:
                    dataset = json.load(f)
            except json.JSONDecodeError as e:
                raise LVISInputError("malformed JSON in {}: {}".format(self.source, e)) from None
        elif isinstance(gt, dict):
            dataset = gt
        elif hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # lvis.LVIS
            dataset = gt.dataset
        else:
            raise TypeError("Unsupported ground truth type {}".format(type(gt)))
        for key in ("images", "annotations", "categories"):
            if key not in dataset:
                raise LVISInputError(
                    "the LVIS dataset{} has no {!r}".format(_where(self.source), key)
                )
        self.dataset = dataset
        self._rle_cache = {}
        self._boxes = None
        self._index()

    # -- indexing -----------------------------------------------------------------------
    def _index(self):
        src = self.source
        images = self.dataset["images"]
        cats = self.dataset["categories"]
        anns = self.dataset["annotations"]

        # lvis.LVIS keeps the last entry of a duplicated id; params sort the ids.
        img_by_id = {}
        for im in images:
            img_by_id[im["id"]] = im
        cat_by_id = {}
        for c in cats:
            cat_by_id[c["id"]] = c
        self.img_ids = np.array(sorted(img_by_id), dtype=np.int64)
        self.cat_ids = np.array(sorted(cat_by_id), dtype=np.int64)
        self.images = [img_by_id[i] for i in self.img_ids.tolist()]
        self.cats = [cat_by_id[i] for i in self.cat_ids.tolist()]
        nimg, ncat = len(self.img_ids), len(self.cat_ids)
        self.num_cats = ncat
        try:
            self.img_h = np.array([im["height"] for im in self.images], dtype=np.int64)
            self.img_w = np.array([im["width"] for im in self.images], dtype=np.int64)
        except KeyError as e:
            raise LVISInputError("an image{} lacks {}".format(_where(src), e)) from None

        self.freq_groups = [[] for _ in FREQ_LBL]
        for k, c in enumerate(self.cats):
            freq = c.get("frequency")
            if freq not in FREQ_LBL:
                raise LVISInputError(
                    "category {}{} has frequency {!r}, not one of r/c/f".format(
                        c["id"], _where(src), freq
                    )
                )
            self.freq_groups[FREQ_LBL.index(freq)].append(k)

        # Per-image category lists -> sorted cell keys (img_idx * ncat + cat_idx).
        def cell_keys(field):
            ii, cc = [], []
            for i, im in enumerate(self.images):
                ids = im.get(field) or []
                ii.extend([i] * len(ids))
                cc.extend(ids)
            if not cc:
                return np.zeros(0, np.int64)
            cidx, found = _lookup(self.cat_ids, _as_int_ids(cc, field, src))
            keys = np.asarray(ii, np.int64)[found] * ncat + cidx[found]
            return np.unique(keys)

        self.neg_keys = cell_keys("neg_category_ids")
        self.nel_keys = cell_keys("not_exhaustive_category_ids")

        # Ground truth kept by lvis-api: image and category known, 0 < area < inf, ordered
        # by image id then file order; LVIS.load_anns maps a duplicated id to its last ann.
        n = len(anns)
        try:
            a_img = _as_int_ids([a["image_id"] for a in anns], "annotation image_id", src)
            a_cat = _as_int_ids([a["category_id"] for a in anns], "annotation category_id", src)
            a_area = np.array([a["area"] for a in anns], dtype=np.float64).reshape(n)
            a_id = [a["id"] for a in anns]
        except (KeyError, TypeError, ValueError) as e:
            raise LVISInputError("malformed annotation{}: {!r}".format(_where(src), e)) from None
        a_iidx, a_ifound = _lookup(self.img_ids, a_img)
        a_cidx, a_cfound = _lookup(self.cat_ids, a_cat)
        with np.errstate(invalid="ignore"):
            keep = a_ifound & a_cfound & (a_area > 0) & (a_area < float("inf"))
        sel = np.flatnonzero(keep)
        sel = sel[np.argsort(a_iidx[sel], kind="mergesort")]
        if len(set(a_id)) != n:
            last = {}
            for i, aid in enumerate(a_id):
                last[aid] = i
            sel = np.array([last[a_id[i]] for i in sel.tolist()], dtype=np.int64)
            # the substituted ann may be of another image / category / area
            sel = sel[a_ifound[sel] & a_cfound[sel]]
        self.g_ann = sel  # indices into dataset["annotations"], lvis-api's order
        self.g_img = a_iidx[sel]
        self.g_cat = a_cidx[sel]
        self.g_key = self.g_img * ncat + self.g_cat
        self.g_area = a_area[sel]
        self.g_ignore = np.array([bool(anns[i].get("ignore", 0)) for i in sel.tolist()], bool)
        gid = np.array([a_id[i] for i in sel.tolist()], dtype=object)
        self.g_id_nonzero = np.array([g != 0 for g in gid], dtype=bool)
        self.pos_keys = np.unique(self.g_key)
        self.rel_keys = np.union1d(self.pos_keys, self.neg_keys)

        # ground truth sorted by cell (stable: keeps lvis-api's order inside a cell)
        order = np.argsort(self.g_key, kind="mergesort")
        for name in ("g_ann", "g_img", "g_cat", "g_key", "g_area", "g_ignore", "g_id_nonzero"):
            setattr(self, name, getattr(self, name)[order])
        self.cell_keys, self.cell_start, self.cell_count = np.unique(
            self.g_key, return_index=True, return_counts=True
        )

        # per (category, area range): ground truth not ignored
        g_ig = self.gt_ignore_by_area()
        self.g_ig_area = g_ig
        self.num_gt = np.zeros((ncat, _NA), np.int64)
        for a in range(_NA):
            self.num_gt[:, a] = np.bincount(self.g_cat[~g_ig[:, a]], minlength=ncat)

    def gt_ignore_by_area(self, sl=slice(None)):
        area = self.g_area[sl][:, None]
        return self.g_ignore[sl][:, None] | (area < _AREA_LO) | (area > _AREA_HI)

    # -- iou inputs ----------------------------------------------------------------------
    def boxes(self, sl):
        if self._boxes is None:
            self._boxes = self._all_boxes()
        return self._boxes[sl]

    def _all_boxes(self):
        anns = self.dataset["annotations"]
        out = []
        for i in self.g_ann.tolist():
            b = anns[i].get("bbox")
            if not isinstance(b, (list, tuple)) or len(b) != 4:
                raise LVISInputError(
                    "annotation id {}{}: bbox must be [x, y, w, h], not {!r}".format(
                        anns[i].get("id"), _where(self.source), b
                    )
                )
            out.append(b)
        return np.array(out, dtype=np.float64).reshape(-1, 4)

    def rles(self, sl):
        """RLEs (as lvis.LVIS.ann_to_rle) of the ground truth in slice ``sl`` (cached)."""
        idx = self.g_ann[sl].tolist()
        missing = [i for i in idx if i not in self._rle_cache]
        if missing:
            self._convert(missing)
        return [self._rle_cache[i] for i in idx]

    def _convert(self, ann_idx):
        anns = self.dataset["annotations"]
        img_pos = {}
        for i in ann_idx:
            img_pos.setdefault(anns[i]["image_id"], []).append(i)
        for img_id, idxs in img_pos.items():
            k = int(np.searchsorted(self.img_ids, img_id))
            h, w = int(self.img_h[k]), int(self.img_w[k])
            batch, owners = [], []
            for i in idxs:
                segm = anns[i].get("segmentation")
                reason = _check_segm(segm, h, w, strict=False)
                if reason is not None:
                    raise LVISInputError(
                        "annotation id {} (image {}){}: malformed segmentation: {}".format(
                            anns[i].get("id"), img_id, _where(self.source), reason
                        )
                    )
                if isinstance(segm, list) and len(segm[0]) > 4:
                    batch.extend(segm)  # one frPyObjects call per image for polygons
                    owners.append((i, len(segm)))
                    continue
                try:
                    self._rle_cache[i] = _poly_or_rle_to_rle(segm, h, w)
                except Exception as e:
                    raise LVISInputError(
                        "annotation id {} (image {}){}: malformed segmentation: {}".format(
                            anns[i].get("id"), img_id, _where(self.source), e
                        )
                    ) from None
            if batch:
                try:
                    rles = mask_utils.frPyObjects(batch, h, w)
                except Exception as e:
                    raise LVISInputError(
                        "annotations {} (image {}){}: malformed polygons: {}".format(
                            [anns[i].get("id") for i, _ in owners], img_id, _where(self.source), e
                        )
                    ) from None
                p = 0
                for i, npoly in owners:
                    part = rles[p : p + npoly]
                    p += npoly
                    # merge of a single RLE is a copy (rleMerge, n == 1)
                    self._rle_cache[i] = part[0] if npoly == 1 else mask_utils.merge(part)


# ----------------------------------------------------------------------------------------
# Detections
# ----------------------------------------------------------------------------------------
_BOUNDARY = re.compile(r"\}\s*,\s*\{")


def _iter_json_list(path, chunk_chars=1 << 23):
    """Yield lists of the elements of the JSON array in ``path``, a chunk at a time.

    A chunk is cut after a '}' followed by ',' and '{'; it is accepted only when
    '[' + chunk + ']' parses, which proves the cut lies between two top-level elements
    (a cut inside a string or a nested object cannot parse). Otherwise more is read.
    """
    with open(path, "r", encoding="utf-8") as f:
        buf = f.read(chunk_chars)
        i = len(buf) - len(buf.lstrip())
        if i >= len(buf) or buf[i] != "[":
            rest = buf + f.read()
            try:
                json.loads(rest)
            except json.JSONDecodeError as e:
                raise LVISInputError("malformed JSON in {}: {}".format(path, e)) from None
            raise LVISInputError("{} does not hold a list of detections".format(path))
        buf = buf[i + 1 :]
        eof = False
        while True:
            if not eof:
                more = f.read(chunk_chars)
                if more:
                    buf = buf + more if buf else more
                else:
                    eof = True
            if eof:
                try:
                    items = json.loads("[" + buf)
                except json.JSONDecodeError as e:
                    raise LVISInputError("malformed JSON in {}: {}".format(path, e)) from None
                if items:
                    yield items
                return
            cut = -1
            tail = max(0, len(buf) - (1 << 20))
            marks = [m for m in _BOUNDARY.finditer(buf, tail)]
            if not marks and tail:
                marks = [m for m in _BOUNDARY.finditer(buf)]
            for m in reversed(marks[-8:]):
                try:
                    items = json.loads("[" + buf[: m.start() + 1] + "]")
                except json.JSONDecodeError:
                    continue  # not between two top-level elements: try an earlier one
                cut = m.end() - 1
                break
            if cut >= 0:
                yield items
                items = None
                buf = buf[cut:]


class _Detections:
    """Columns of the detections lvis-api evaluates, ordered by (cell, -score, input order):
    pos (index in the input), img / cat (indices into the sorted ids), key (cell), score,
    area, box, segs (segm only), nel (category not exhaustively annotated in the image)."""


def _extract_batch(batch, base, gt, keep_segm, source, sink):
    n = len(batch)
    try:
        img = [d["image_id"] for d in batch]
        cat = [d["category_id"] for d in batch]
        score = [d["score"] for d in batch]
    except (KeyError, TypeError):
        for i, d in enumerate(batch):
            if not isinstance(d, dict):
                raise LVISInputError(
                    "detection #{}{} is a {}, not a dict".format(
                        base + i, _where(source), type(d).__name__
                    )
                ) from None
            for key in ("image_id", "category_id", "score"):
                if key not in d:
                    raise LVISInputError(
                        "detection #{}{} has no {!r}".format(base + i, _where(source), key)
                    ) from None
        raise
    img = _as_int_ids(img, "detection image_id", source)
    cat = _as_int_ids(cat, "detection category_id", source)
    try:
        score = np.array(score, dtype=np.float64).reshape(n)
    except (TypeError, ValueError):
        bad = [
            base + i
            for i, s in enumerate(score)
            if isinstance(s, bool) or not isinstance(s, (int, float))
        ]
        raise LVISInputError(
            "detections{} with a non-numeric score: {}".format(_where(source), _fmt_examples(bad))
        ) from None
    iidx, ifound = _lookup(gt.img_ids, img)
    cidx, cfound = _lookup(gt.cat_ids, cat)
    if not ifound.all():
        sink["bad_img"].update(img[~ifound].tolist())
        sink["bad_img_n"] += int((~ifound).sum())
    if not cfound.all():
        sink["bad_cat"].update(cat[~cfound].tolist())
        sink["bad_cat_n"] += int((~cfound).sum())
    known = ifound & cfound
    key = iidx * gt.num_cats + cidx
    rel = known & _in_sorted(gt.rel_keys, key)
    box_any = [d.get("bbox") for d in batch]
    if box_any.count(None):
        has_box = np.array([b is not None for b in box_any], dtype=bool)
    else:
        has_box = np.ones(n, bool)
    # boxes (and segmentations) only of detections that lvis-api will evaluate
    rel_idx = np.flatnonzero(rel).tolist()
    rel_has = has_box[rel]
    boxes = [
        box_any[i] for i in (rel_idx if rel_has.all() else np.flatnonzero(rel & has_box).tolist())
    ]
    del box_any
    try:
        if set(map(len, boxes)) - {4}:
            raise ValueError
        vals = np.fromiter(itertools.chain.from_iterable(boxes), np.float64, 4 * len(boxes))
    except (TypeError, ValueError):
        bad = [
            base + i
            for i in rel_idx
            if "bbox" in batch[i]
            and (
                not isinstance(batch[i]["bbox"], (list, tuple))
                or len(batch[i]["bbox"]) != 4
                or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool)
                    for v in batch[i]["bbox"]
                )
            )
        ]
        raise LVISInputError(
            "detections{} with a malformed bbox (need [x, y, w, h]): {}".format(
                _where(source), _fmt_examples(bad)
            )
        ) from None
    if rel_has.all():
        box_arr = vals.reshape(-1, 4)
    else:
        box_arr = np.full((len(rel_idx), 4), np.nan)
        box_arr[rel_has] = vals.reshape(-1, 4)
    if source is not None and (keep_segm or not has_box.all()):
        segs = [batch[i].get("segmentation") for i in rel_idx]
    else:
        segs = None
    sink["img"].append(iidx.astype(np.int32))
    sink["cat"].append(cidx.astype(np.int32))
    sink["score"].append(score)
    sink["box"].append(box_arr)
    sink["has_box"].append(has_box)
    sink["rel"].append(rel)
    sink["segs"].append(segs)


def _load_detections(results, gt, iou_type, max_dets):
    """Apply lvis-api's LVISResults + LVISEval._prepare to the detections."""
    keep_segm = iou_type == "segm"
    source = None
    sink = {k: [] for k in ("img", "cat", "score", "box", "has_box", "rel", "segs")}
    sink.update(bad_img=set(), bad_img_n=0, bad_cat=set(), bad_cat_n=0)
    base = 0
    if isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
        for batch in _iter_json_list(source):
            _extract_batch(batch, base, gt, keep_segm, source, sink)
            base += len(batch)
    elif isinstance(results, (list, tuple)):
        step = 1 << 16
        for s in range(0, len(results), step):
            _extract_batch(results[s : s + step], s, gt, keep_segm, None, sink)
        base = len(results)
    else:
        raise TypeError("results must be a list of dicts or a path, not {}".format(type(results)))

    problems = []
    if sink["bad_img"]:
        problems.append(
            "{} detections have image ids absent from the annotation file{}: {}".format(
                sink["bad_img_n"], _where(gt.source), _fmt_examples(sorted(sink["bad_img"]))
            )
        )
    if sink["bad_cat"]:
        problems.append(
            "{} detections have category ids absent from the annotation file{}: {}".format(
                sink["bad_cat_n"], _where(gt.source), _fmt_examples(sorted(sink["bad_cat"]))
            )
        )
    if problems:
        raise LVISInputError("bad detections{}: {}".format(_where(source), "; ".join(problems)))

    n = base
    cat = lambda name, dt: np.concatenate(sink[name]) if sink[name] else np.zeros(0, dt)
    img = cat("img", np.int32).astype(np.int64)
    cidx = cat("cat", np.int32).astype(np.int64)
    score = cat("score", np.float64)
    box = np.concatenate(sink["box"]) if sink["box"] else np.zeros((0, 4))
    has_box = cat("has_box", bool)
    rel = cat("rel", bool)
    seg_lists = sink["segs"]
    del sink

    # LVISResults.limit_dets_per_image: top max_dets scores per image (stable, desc).
    keep = np.ones(n, bool)
    first = 0
    if max_dets >= 0 and n and np.bincount(img).max() > max_dets:
        order = np.lexsort((-score, img))
        s_img = img[order]
        starts = np.r_[0, np.flatnonzero(s_img[1:] != s_img[:-1]) + 1]
        counts = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, counts)
        keep = np.zeros(n, bool)
        keep[order[rank < max_dets]] = True
        g = int(np.searchsorted(starts, np.searchsorted(s_img, img[0]), side="right") - 1)
        if counts[g] > max_dets:
            first = int(order[starts[g]])
    first_has_box = bool(has_box[first]) if n else True
    if n and first_has_box:
        lacking = np.flatnonzero(keep & ~has_box)
        if len(lacking):
            raise LVISInputError(
                "detections{} without a bbox while others have one: {}".format(
                    _where(source), _fmt_examples(lacking.tolist())
                )
            )
    idx = np.flatnonzero(keep & rel)
    rel_pos = np.cumsum(rel) - 1
    sub_img = img[idx]
    sub_segs = None
    if keep_segm or not first_has_box:
        if source is None:
            sub_segs = [results[i].get("segmentation") for i in idx.tolist()]
        elif all(s is not None for s in seg_lists):
            flat = []
            for s in seg_lists:
                flat.extend(s)
            sub_segs = [flat[p] for p in rel_pos[idx].tolist()]
            del flat
        else:  # rare (mixed boxes / no boxes): read the segmentations again
            want = set(idx.tolist())
            got = {}
            b0 = 0
            for batch in _iter_json_list(source):
                for j, det in enumerate(batch):
                    if b0 + j in want:
                        got[b0 + j] = det.get("segmentation")
                b0 += len(batch)
            sub_segs = [got[i] for i in idx.tolist()]
    del seg_lists
    h = gt.img_h[sub_img]
    w = gt.img_w[sub_img]

    def check_segs(need):
        """Validate; return the positions of segmentations that are not compressed RLEs."""
        try:  # fast path: all compressed RLEs (str counts) of the image's size
            sizes = np.array([s["size"] for s in sub_segs], dtype=np.int64)
            if (
                sizes.shape == (len(sub_segs), 2)
                and (sizes[:, 0] == h).all()
                and (sizes[:, 1] == w).all()
                and all(s["counts"].__class__ is str for s in sub_segs)
            ):
                return []
        except (TypeError, KeyError, ValueError, IndexError):
            pass
        bad, other = [], []
        for j, (s, hh, ww) in enumerate(zip(sub_segs, h.tolist(), w.tolist())):
            if s.__class__ is dict and s.get("counts").__class__ in (str, bytes):
                sz = s.get("size")
                if sz.__class__ is list and len(sz) == 2 and sz[0] == hh and sz[1] == ww:
                    continue
            if s is None:
                if need:
                    bad.append((int(idx[j]), "no segmentation"))
                other.append(j)
                continue
            reason = _check_segm(s, hh, ww)
            if reason is not None:
                bad.append((int(idx[j]), reason))
            elif not (isinstance(s, dict) and isinstance(s["counts"], (str, bytes))):
                other.append(j)
        if bad:
            raise LVISInputError(
                "detections{} with a malformed segmentation: {}".format(
                    _where(source),
                    "; ".join("#{}: {}".format(i, r) for i, r in bad[:_EXAMPLES])
                    + (" ... ({} in all)".format(len(bad)) if len(bad) > _EXAMPLES else ""),
                )
            )
        return other

    sub_box = box[rel_pos[idx]]
    if first_has_box:
        area = sub_box[:, 2] * sub_box[:, 3]
        if keep_segm:
            for j in check_segs(False):  # polygons, uncompressed RLE, none (-> the box)
                s = sub_segs[j]
                if s is None:  # LVISResults: the box as a polygon
                    x1, y1, bw, bh = sub_box[j].tolist()
                    x2, y2 = x1 + bw, y1 + bh
                    s = [[x1, y1, x1, y2, x2, y2, x2, y1]]
                sub_segs[j] = _poly_or_rle_to_rle(s, int(h[j]), int(w[j]))
    else:
        # LVISResults: area of the mask, bbox from the mask when absent
        if sub_segs is None:
            raise LVISInputError(
                "detections{} have neither bbox nor segmentation".format(_where(source))
            )
        check_segs(True)
        rles = [_poly_or_rle_to_rle(s, int(hh), int(ww)) for s, hh, ww in zip(sub_segs, h, w)]
        area = (
            np.asarray(mask_utils.area(rles), dtype=np.float64).reshape(-1) if rles else np.zeros(0)
        )
        nob = np.flatnonzero(~has_box[idx])
        if len(nob):
            sub_box[nob] = np.asarray(mask_utils.toBbox([rles[j] for j in nob.tolist()]))
        if keep_segm:
            sub_segs = rles
    with np.errstate(invalid="ignore"):
        ok = (area > 0) & (area < float("inf"))
    if not ok.all():
        sel = np.flatnonzero(ok)
        idx, sub_box, area, sub_img = idx[sel], sub_box[sel], area[sel], sub_img[sel]
        if sub_segs is not None:
            sub_segs = [sub_segs[j] for j in sel.tolist()]

    d = _Detections()
    d.pos = idx
    d.img = sub_img
    d.cat = cidx[idx]
    d.key = d.img * gt.num_cats + d.cat
    d.score = score[idx]
    d.area = area
    d.box = sub_box
    d.segs = sub_segs if keep_segm else None
    d.source = source
    order = np.lexsort((d.pos, -d.score, d.key))
    for name in ("pos", "img", "cat", "key", "score", "area", "box"):
        setattr(d, name, getattr(d, name)[order])
    if d.segs is not None:
        d.segs = [d.segs[j] for j in order.tolist()]
    d.nel = _in_sorted(gt.nel_keys, d.key)
    return d


# ----------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _any_last(x):
    """x.any(-1) for a C-contiguous bool array; a bit test when the last axis is 1-8 long
    (numpy reductions over a short last axis are slow)."""
    view = _UINT.get(x.shape[-1])
    if view is not None and x.flags.c_contiguous:
        return x.view(view)[..., 0] != 0
    return x.any(-1)


def _greedy_match(items, nz_out, igm_out, max_cells=2048):
    """lvis-api's greedy matching for many cells, all thresholds and area ranges at once.

    items: list of (rows, ious, gig, gid_nz): ``rows`` the global indices of the cell's
    detections that reach the lowest threshold against some ground truth (in score order),
    ``ious`` (len(rows), G), ``gig`` (A, G) ground truth ignored per area range,
    ``gid_nz`` (G,) ground truth id != 0. Writes, for each row, nz_out[row] (A, T): matched
    to ground truth with a nonzero id, and igm_out[row]: matched to ignored ground truth.

    The ground-truth axis is reversed so that argmax (first maximum) picks the last
    ground truth among equal IoUs, as lvis-api does. An area range whose ground truth is
    all ignored or all regular matches exactly like one with no ignored ground truth, so
    such area ranges share one "pattern"; only the others get their own.
    """
    if not items:
        return
    ncell = len(items)
    gsize = np.empty(ncell, np.int64)
    npat = np.empty(ncell, np.int64)
    nonuni = []
    for i, (rows, ious, gig, gnz) in enumerate(items):
        gsize[i] = ious.shape[1]
        nu = np.flatnonzero(gig.any(1) & ~gig.all(1))
        nonuni.append(nu)
        npat[i] = 1 + len(nu)
    gpad = 1 << np.ceil(np.log2(np.maximum(gsize, 1))).astype(np.int64)
    thr = _THR_EFF[None, None, :, None]
    ar_a = np.arange(_NA)
    for gb, P in sorted(set(zip(gpad.tolist(), npat.tolist()))):
        members = np.flatnonzero((gpad == gb) & (npat == P))
        ms = np.array([len(items[i][0]) for i in members])
        members = members[np.argsort(-ms, kind="stable")]
        for c0 in range(0, len(members), max_cells):
            chunk = members[c0 : c0 + max_cells]
            C = len(chunk)
            M = np.array([len(items[i][0]) for i in chunk])
            off = np.r_[0, np.cumsum(M)[:-1]]
            tot = int(M.sum())
            IOU = np.full((tot, gb), -1.0)
            GIGP = np.zeros((C, P, gb), bool)  # per pattern (0: no ignored ground truth)
            GIGA = np.zeros((C, _NA, gb), bool)  # per area range
            PMAP = np.zeros((C, _NA), np.int64)  # area range -> pattern
            GNZ = np.zeros((C, gb), bool)
            ROWS = np.empty(tot, np.int64)
            for c, i in enumerate(chunk.tolist()):
                rows, ious, gig, gnz = items[i]
                G = ious.shape[1]
                IOU[off[c] : off[c] + M[c], :G] = ious[:, ::-1]
                GIGA[c, :, :G] = gig[:, ::-1]
                nu = nonuni[i]
                if len(nu):
                    GIGP[c, 1:, :G] = gig[nu, ::-1]
                    PMAP[c, nu] = np.arange(1, len(nu) + 1)
                GNZ[c, :G] = gnz[::-1]
                ROWS[off[c] : off[c] + M[c]] = rows
            matched = np.zeros((C, P, _NT, gb), bool)
            active = np.searchsorted(-M, -np.arange(M[0]), side="left")  # cells with M > j
            for j in range(int(M[0])):
                n = int(active[j])
                r = off[:n] + j
                iou = IOU[r]  # (n, gb)
                cand = (iou[:, None, None, :] >= thr) & ~matched[:n]  # (n, P, T, gb)
                if P > 1:
                    reg = cand & ~GIGP[:n, :, None, :]
                    eff = np.where(_any_last(reg)[..., None], reg, cand)
                else:
                    eff = cand
                found = _any_last(eff)  # (n, P, T)
                if not found.any():
                    continue
                best = np.where(eff, iou[:, None, None, :], -1.0).argmax(-1)  # (n, P, T)
                ni, pi, ti = np.nonzero(found)
                matched[ni, pi, ti, best[ni, pi, ti]] = True
                # back to area ranges
                cn = np.arange(n)[:, None]
                pm = PMAP[:n]  # (n, A)
                found_a = found[cn, pm]  # (n, A, T)
                best_a = best[cn, pm]
                ni, ai, ti = np.nonzero(found_a)
                bi = best_a[ni, ai, ti]
                gr = ROWS[r[ni]]
                nz_out[gr, ai, ti] = GNZ[ni, bi]
                igm_out[gr, ai, ti] = GIGA[ni, ai, bi]


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------
class LVISEvalResult:
    """What lvis-api's LVISEval holds after run(), plus per-category helpers."""

    def __init__(
        self, iou_type, max_dets, cat_ids, img_ids, precision, recall, freq_groups, timings=None
    ):
        self.iou_type = iou_type
        self.max_dets = max_dets
        self.cat_ids = [int(c) for c in cat_ids]
        self.img_ids = img_ids
        self.iou_thrs = IOU_THRS
        self.rec_thrs = REC_THRS
        self.area_rng = AREA_RNG
        self.area_rng_lbl = AREA_RNG_LBL
        self.precision = precision  # (T, R, K, A), -1 where undefined
        self.recall = recall  # (T, K, A)
        self.freq_groups = freq_groups
        self.timings = timings or {}
        self.results = self._summarize_all()
        self.stats = self.results

    def _summarize(self, summary_type, iou_thr=None, area_rng="all", freq_group_idx=None):
        aidx = [i for i, lbl in enumerate(self.area_rng_lbl) if lbl == area_rng]
        if summary_type == "ap":
            s = self.precision
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            if freq_group_idx is not None:
                s = s[:, :, self.freq_groups[freq_group_idx], aidx]
            else:
                s = s[:, :, :, aidx]
        else:
            s = self.recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, :, aidx]
        if len(s[s > -1]) == 0:
            return -1
        return np.mean(s[s > -1])

    def _summarize_all(self):
        r = OrderedDict()
        r["AP"] = self._summarize("ap")
        r["AP50"] = self._summarize("ap", iou_thr=0.50)
        r["AP75"] = self._summarize("ap", iou_thr=0.75)
        r["APs"] = self._summarize("ap", area_rng="small")
        r["APm"] = self._summarize("ap", area_rng="medium")
        r["APl"] = self._summarize("ap", area_rng="large")
        r["APr"] = self._summarize("ap", freq_group_idx=0)
        r["APc"] = self._summarize("ap", freq_group_idx=1)
        r["APf"] = self._summarize("ap", freq_group_idx=2)
        r["AR@{}".format(self.max_dets)] = self._summarize("ar")
        for area_rng in ["small", "medium", "large"]:
            r["AR{}@{}".format(area_rng[0], self.max_dets)] = self._summarize(
                "ar", area_rng=area_rng
            )
        return r

    def get_results(self):
        return self.results

    def per_category_ap(self):
        """{category id: AP (IoU .50:.95, all areas) or nan}, as lvis-api would for one category."""
        out = {}
        for k, cid in enumerate(self.cat_ids):
            p = self.precision[:, :, k, 0]
            p = p[p > -1]
            out[cid] = float(np.mean(p)) if p.size else float("nan")
        return out

    def summary_str(self):
        template = (
            " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} catIds={:>3s}]" " = {:0.3f}"
        )
        lines = []
        for key, value in self.results.items():
            if "AP" in key:
                title, _type = "Average Precision", "(AP)"
            else:
                title, _type = "Average Recall", "(AR)"
            if len(key) > 2 and key[2].isdigit():
                iou = "{:0.2f}".format(float(key[2:]) / 100)
            else:
                iou = "{:0.2f}:{:0.2f}".format(self.iou_thrs[0], self.iou_thrs[-1])
            cat_group = key[2] if len(key) > 2 and key[2] in ["r", "c", "f"] else "all"
            area = key[2] if len(key) > 2 and key[2] in ["s", "m", "l"] else "all"
            lines.append(template.format(title, _type, iou, area, self.max_dets, cat_group, value))
        return "\n".join(lines)

    def print_results(self):
        print(self.summary_str())


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------
def _recall_steps(num_gt):
    """jr[k, a, r]: the least integer j with j / num_gt[k, a] >= REC_THRS[r] (float64 math,
    as lvis-api's ``tp / num_gt``), so that ``searchsorted(rc, REC_THRS, "left")`` equals
    ``searchsorted(tp_cumsum, jr, "left")`` (j -> j / num_gt is monotone)."""
    ng = np.maximum(num_gt, 1).astype(np.float64)[..., None]
    j = np.ceil(REC_THRS * ng)
    for _ in range(3):
        j = np.where(j / ng < REC_THRS, j + 1, j)
        j = np.where((j > 0) & ((j - 1) / ng >= REC_THRS), j - 1, j)
    assert ((j / ng >= REC_THRS) & ((j == 0) | ((j - 1) / ng < REC_THRS))).all()
    return j.astype(np.int64)


def _accumulate(gt, d, tp, fp):
    K = gt.num_cats
    R = len(REC_THRS)
    precision = -np.ones((_NT, R, K, _NA))
    recall = -np.ones((_NT, K, _NA))
    # accumulation order: category, -score, image id, input order (lvis-api's mergesorts)
    order = np.lexsort((d.pos, d.img, -d.score, d.cat))
    cat_sorted = d.cat[order]
    bounds = np.searchsorted(cat_sorted, np.arange(K + 1))
    eps = np.spacing(1)
    jr_all = _recall_steps(gt.num_gt)  # (K, A, R)
    rows = _NA * _NT
    tp = tp[order]  # contiguous per category from here on
    fp = fp[order]
    for k in np.flatnonzero(gt.num_gt.any(1)).tolist():
        s, e = bounds[k], bounds[k + 1]
        nd = int(e - s)
        va = gt.num_gt[k] > 0  # area ranges lvis-api fills (num_gt > 0)
        if nd == 0:
            recall[:, k, va] = 0
            precision[:, :, k, va] = 0.0
            continue
        tp_cnt = np.cumsum(tp[s:e], axis=0).reshape(nd, rows).T  # (A*T, nd), row = a*T + t
        fp_cnt = np.cumsum(fp[s:e], axis=0).reshape(nd, rows).T
        tp_sum = tp_cnt.astype(np.float64)
        fp_sum = fp_cnt.astype(np.float64)
        ng = np.repeat(gt.num_gt[k], _NT).astype(np.float64)[:, None]  # (A*T, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc_last = tp_sum[:, -1:] / ng
        pr = tp_sum / (fp_sum + tp_sum + eps)
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        # searchsorted(rc, REC_THRS, "left") for all rows at once, on integer keys
        stride = nd + 1
        off = np.arange(rows, dtype=np.int64)[:, None] * stride
        keys = (tp_cnt + off).ravel()
        jr = np.minimum(np.repeat(jr_all[k], _NT, axis=0), stride)  # (A*T, R)
        ins = np.searchsorted(keys, (jr + off).ravel(), side="left").reshape(rows, R)
        ins -= np.arange(rows, dtype=np.int64)[:, None] * nd
        valid = ins < nd
        prec = np.where(valid, np.take_along_axis(pr, np.minimum(ins, nd - 1), axis=1), 0.0)
        prec = prec.reshape(_NA, _NT, R)
        rcl = rc_last.reshape(_NA, _NT)
        for a in np.flatnonzero(va).tolist():
            precision[:, :, k, a] = prec[a]
            recall[:, k, a] = rcl[a]
    return precision, recall


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: parsing millions of small containers otherwise
    triggers full collections over everything alive (nothing here makes cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def evaluate_lvis(gt, results, iou_type, max_dets=300):
    """Evaluate LVIS detections like lvis-api 0.5.3 (``LVISEval(...).run()``), fast.

    Args:
        gt: path to an LVIS annotation json, the dataset dict already loaded (not
            modified), an ``lvis.LVIS`` object, or an :class:`LVISGroundTruth`.
        results: list of result dicts {image_id, category_id, bbox [x, y, w, h], score,
            segmentation (RLE with counts as str/bytes, or polygons)} as Detectron2 makes
            them, or the path to an LVIS results json (read in chunks). Not modified.
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image (top scores over all categories).
    Returns:
        LVISEvalResult.
    Raises:
        LVISInputError naming detections with unknown image or category ids, malformed
        boxes or segmentations (and the file they came from).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError("iou_type: {} is not supported.".format(iou_type))
    with _gc_paused():
        return _evaluate(gt, results, iou_type, max_dets)


def _evaluate(gt, results, iou_type, max_dets):
    t0 = time.perf_counter()
    if not isinstance(gt, LVISGroundTruth):
        gt = LVISGroundTruth(gt)
    t1 = time.perf_counter()
    d = _load_detections(results, gt, iou_type, max_dets)
    t2 = time.perf_counter()

    n = len(d.key)
    nz = np.zeros((n, _NA, _NT), bool)
    igm = np.zeros((n, _NA, _NT), bool)
    # cells holding both detections and ground truth
    d_keys, d_start, d_count = np.unique(d.key, return_index=True, return_counts=True)
    both, di, gi = np.intersect1d(d_keys, gt.cell_keys, assume_unique=True, return_indices=True)
    items = []
    thr0 = _THR_EFF.min()
    if iou_type == "segm" and len(both):
        # ground-truth masks of these cells, converted an image at a time
        starts, counts = gt.cell_start[gi], gt.cell_count[gi]
        need = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
            counts.sum()
        )
        gt.rles(need)
    for c in range(len(both)):
        ds, dn = int(d_start[di[c]]), int(d_count[di[c]])
        gs, gn = int(gt.cell_start[gi[c]]), int(gt.cell_count[gi[c]])
        gsl = slice(gs, gs + gn)
        if iou_type == "bbox":
            ious = mask_utils.iou(d.box[ds : ds + dn], gt.boxes(gsl), [0] * gn)
        else:
            ious = mask_utils.iou(d.segs[ds : ds + dn], gt.rles(gsl), [0] * gn)
        ious = np.asarray(ious, dtype=np.float64).reshape(dn, gn)
        m = np.flatnonzero(ious.max(1) >= thr0)
        if len(m):
            items.append((m + ds, ious[m], gt.g_ig_area[gsl].T, gt.g_id_nonzero[gsl]))
    t3 = time.perf_counter()
    _greedy_match(items, nz, igm)
    del items
    t4 = time.perf_counter()

    dt_mask = (d.area[:, None] < _AREA_LO) | (d.area[:, None] > _AREA_HI) | d.nel[:, None]
    dt_ig = igm | (~nz & dt_mask[:, :, None])
    del igm
    tp = nz & ~dt_ig
    fp = ~nz & ~dt_ig
    del dt_ig, nz
    precision, recall = _accumulate(gt, d, tp, fp)
    t5 = time.perf_counter()
    timings = OrderedDict(
        gt=t1 - t0, detections=t2 - t1, iou=t3 - t2, match=t4 - t3, accumulate=t5 - t4
    )
    return LVISEvalResult(
        iou_type, max_dets, gt.cat_ids, gt.img_ids, precision, recall, gt.freq_groups, timings
    )


class FastLVISEval:
    """lvis-api-like wrapper: ``FastLVISEval(gt, results, "segm").run()`` -> LVISEvalResult."""

    def __init__(self, gt, results, iou_type="segm", max_dets=300):
        self.gt = gt if isinstance(gt, LVISGroundTruth) else LVISGroundTruth(gt)
        self.results_in = results
        self.iou_type = iou_type
        self.max_dets = max_dets
        self.result = None

    def run(self):
        self.result = evaluate_lvis(self.gt, self.results_in, self.iou_type, self.max_dets)
        return self.result

    def get_results(self):
        return self.result.results

    def print_results(self):
        self.result.print_results()
