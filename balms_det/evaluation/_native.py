"""The engine's compiled reading path: results files scanned into columns and mask IoUs computed
by the C core (``_ccore``, built by ``pip install -e .``), without a Python object per detection.

It is an accelerator only. Whatever it does not take as is (a chunk with a NaN, an unknown
form of segmentation, a malformed value, ...) it hands back (``None``), and the engine reads
that chunk with the Python reader, which computes the same values and raises the errors. With
``BALMS_NO_CCORE=1`` in the environment, or where the core is not built, the engine uses the
Python reader only (the tests compare the two on the same inputs).
"""

import logging
import os

import numpy as np

from .boundary import dilation
from .matching import THR_EFF

CCORE_VERSION = 2  # the interface of _ccore.c this module calls

try:
    from . import _ccore
except ImportError:  # pragma: no cover - exercised where the core is not built
    _ccore = None
if _ccore is not None and getattr(_ccore, "VERSION", None) != CCORE_VERSION:  # pragma: no cover
    logging.getLogger(__name__).warning(
        "balms_det.evaluation._ccore was built from other source than this checkout's: it is "
        "not used (the evaluation is slower, not different); rebuild it with `pip install -e .`"
    )
    _ccore = None

__all__ = [
    "available",
    "Scanned",
    "scan",
    "GroundTruthMasks",
    "ground_truth_masks",
    "undecodable_rles",
    "reads",
    "native_columns",
    "true_false_positives",
    "accumulate",
]

F_BOX, F_SEG, F_RLE, F_ESCAPED = 1, 2, 4, 8  # _ccore's flags


def available():
    """True when the compiled core is built and not switched off (``BALMS_NO_CCORE=1``)."""
    return _ccore is not None and os.environ.get("BALMS_NO_CCORE", "") in ("", "0")


class Scanned:
    """A piece of a results array read by the compiled scanner: columns of its ``n`` results and
    the piece's ``text`` (segmentations are spans of it: ``seg[:, 0:2]`` the value, ``seg[:, 2:4]``
    a compressed RLE's size, ``seg[:, 4:6]`` its counts string, -1 where absent)."""

    __slots__ = ("n", "img", "cat", "score", "box", "flags", "seg", "text")

    def __len__(self):
        return self.n


def scan(text):
    """:class:`Scanned` of ``text`` (the results between the brackets of an array), or None: not
    valid JSON, or something the Python reader is to read."""
    # a result the scanner takes holds image_id, category_id and score: 40 bytes at least
    cap = len(text) // 40 + 1
    s = Scanned()
    s.img = np.empty(cap, np.int64)
    s.cat = np.empty(cap, np.int64)
    s.score = np.empty(cap)
    s.box = np.empty((cap, 4))
    s.flags = np.empty(cap, np.uint8)
    s.seg = np.empty((cap, 6), np.int64)
    n = _ccore.scan_results(text, s.img, s.cat, s.score, s.box, s.flags, s.seg)
    if n < 0:
        return None
    s.n = n
    s.text = text
    for name in ("img", "cat", "score", "box", "flags", "seg"):
        setattr(s, name, getattr(s, name)[:n])
    return s


class GroundTruthMasks:
    """The masks of the kept ground truth of an :class:`LVISGroundTruth` as decoded RLE counts:
    ground truth g is ``counts[off[g]:off[g + 1]]`` of an ``h[g]`` x ``w[g]`` image."""

    def __init__(self, counts, off, h, w):
        self.counts, self.off, self.h, self.w = counts, off, h, w

    @classmethod
    def build(cls, rles):
        """From pycocotools RLE dicts (compressed counts); None when the core cannot decode one
        of them as pycocotools does (the Python path is used then)."""
        texts = []
        for r in rles:
            c = r["counts"]
            if isinstance(c, str):
                if not c.isascii():
                    return None
                c = c.encode("ascii")
            texts.append(c)
        n = len(texts)
        starts = np.zeros(n + 1, np.int64)
        np.cumsum([len(t) for t in texts], out=starts[1:])
        text = b"".join(texts)
        size = np.array([r["size"] for r in rles], np.int64).reshape(n, 2)
        h, w = np.ascontiguousarray(size[:, 0]), np.ascontiguousarray(size[:, 1])
        counts = np.empty(max(len(text), 1), np.uint32)
        off = np.empty(n + 1, np.int64)
        if _ccore.decode_rles(text, starts, h, w, counts, off) >= 0:
            return None
        return cls(counts[: off[-1]].copy(), off, h, w)


def undecodable_rles(text, lengths, hw):
    """Positions of the compressed RLE counts strings (``text``: bytes, the strings joined,
    ``lengths`` bytes each) that the core does not decode into counts summing to ``hw`` (per
    string): a superset of those that break detections_io's rules (the core also leaves counts
    of 7 characters and images of 2**32 pixels or more to them), found at C speed."""
    n = len(lengths)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    hw = np.ascontiguousarray(hw, np.int64)
    ones = np.ones(n, np.int64)
    counts = np.empty(max(len(text), 1), np.uint32)
    off = np.empty(n + 1, np.int64)
    view = memoryview(text)
    out, i = [], 0
    while i < n:  # the core stops at the first one: go on after it
        first = _ccore.decode_rles(
            view[starts[i] :], starts[i:] - starts[i], hw[i:], ones[i:], counts, off[: n - i + 1]
        )
        if first < 0:
            break
        out.append(i + first)
        i += first + 1
    return np.array(out, np.int64)


def _ranges(starts, lengths):
    """The indices starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def _polygons(gt, gidx):
    """(coords, polygon offsets, annotation offsets) of the kept ground truth ``gidx`` when
    every one of them is polygons as pycocotools rasterises them (a list of lists, the first of
    more than 4 coordinates), from the ground truth's polygon table, else None."""
    pos, xy, coord_off, poly_off, raster = gt.polygon_table()
    k = pos[gidx]
    if (k < 0).any() or not raster[k].all():
        return None
    npoly = poly_off[k + 1] - poly_off[k]
    polys = _ranges(poly_off[k], npoly)
    ncoord = coord_off[polys + 1] - coord_off[polys]
    coords = np.ascontiguousarray(xy[_ranges(coord_off[polys], ncoord)])
    return (
        coords,
        np.r_[0, np.cumsum(ncoord)].astype(np.int64),
        np.r_[0, np.cumsum(npoly)].astype(np.int64),
    )


def ground_truth_masks(gt, gidx):
    """:class:`GroundTruthMasks` of the kept ground truth ``gidx`` (in that order): polygons
    rasterised by the core as pycocotools does, other segmentations through pycocotools; None
    where the core cannot take them (the Python reader is used then)."""
    polys = _polygons(gt, gidx)
    if polys is None:
        return GroundTruthMasks.build(gt.rles(gidx))
    img = gt.g_img[gidx]
    h = np.ascontiguousarray(gt.img_h[img], np.int64)
    w = np.ascontiguousarray(gt.img_w[img], np.int64)
    off = np.empty(len(gidx) + 1, np.int64)
    counts = _ccore.polygons_to_rles(*polys, h, w, off)
    if counts is None:
        return GroundTruthMasks.build(gt.rles(gidx))
    return GroundTruthMasks(np.frombuffer(counts, np.uint32), off, h, w)


def reads(how):
    """Whether the compiled reader reads results of this kind (it leaves boxes made from masks
    to the Python reader)."""
    return not (how.iou_type == "bbox" and how.ignore_boxes)


def native_columns(s, how):
    """The engine's columns of a :class:`Scanned` piece (see ``fast_lvis._FIELDS``) and its
    (image ids, category ids) unknown to the ground truth, or None: the Python reader is to read
    the piece (it has a NaN or infinite number, a result without bbox and segmentation, a
    segmentation that is not a compressed RLE of its image's size where one is needed, ...)."""
    gt = how.gt
    n = s.n
    if not np.isfinite(s.score).all():
        return None
    has_seg = (s.flags & F_SEG) != 0
    if how.ignore_boxes:
        if not has_seg.all():
            return None
        has_box = np.zeros(n, bool)
    else:
        has_box = (s.flags & F_BOX) != 0
        if not (has_box | has_seg).all() or not np.isfinite(s.box[has_box]).all():
            return None
    iidx, ifound, cidx, cfound, rel = gt.locate(s.img, s.cat)
    rel_idx = np.flatnonzero(rel)
    nrel = len(rel_idx)
    box = s.box[rel_idx] if not how.ignore_boxes else np.full((nrel, 4), np.nan)
    out = dict(
        img=np.where(ifound, iidx, -1).astype(np.int32),
        cat=np.where(cfound, cidx, -1).astype(np.int32),
        score=s.score.copy(),  # not a view that keeps the scan's whole buffer alive
        has_box=has_box,
        rel=rel,
        box=box,
        mask_area=np.full(nrel, np.nan),
        no_seg=np.zeros(nrel, bool),
        iou_off=np.full(nrel, -1, np.int64),
        iou_val=np.zeros(0),
    )
    unknown = (s.img[~ifound], s.cat[~cfound])
    rel_box = has_box[rel_idx]
    if not how.need_segs and rel_box.all():
        return out, unknown
    # the segmentations read: of every relevant detection, or of those without a box
    need = np.arange(nrel) if how.need_segs else np.flatnonzero(~rel_box)
    if not rel_box.all() and how.iou_type == "bbox":
        return None  # boxes from masks: pycocotools' toBbox, in the Python reader
    ious = how.masks and how.ious
    j = rel_idx[need]
    img = iidx[j]
    h, w = gt.img_h[img], gt.img_w[img]
    seg = s.seg[j]
    if not ((s.flags[j] & F_RLE) != 0).all() or (seg[:, 2] != h).any() or (seg[:, 3] != w).any():
        return None
    m = len(j)
    g_first = np.zeros(m, np.int64)
    g_num = np.zeros(m, np.int64)
    masks = GroundTruthMasks.empty
    if ious and len(gt.cell_keys):
        # the ground truth of the cells of this piece, decoded for it (each reading process
        # converts the ground truth of its own images)
        key = img * gt.num_cats + cidx[j]
        ci = np.minimum(np.searchsorted(gt.cell_keys, key), len(gt.cell_keys) - 1)
        inside = gt.cell_keys[ci] == key
        cells = np.unique(ci[inside])
        count = gt.cell_count[cells]
        local = np.zeros(len(cells) + 1, np.int64)
        np.cumsum(count, out=local[1:])
        gidx = np.repeat(gt.cell_start[cells] - local[:-1], count) + np.arange(local[-1])
        masks = ground_truth_masks(gt, gidx)
        if masks is None:
            return None
        g_first[inside] = local[np.searchsorted(cells, ci[inside])]
        g_num[inside] = count[np.searchsorted(cells, ci[inside])]
    # every mask read is decoded (and so checked, as the Python reader checks every
    # segmentation it reads); the areas kept: of all, or of those without a box
    want = np.ones(m, bool) if how.areas == "all" else ~rel_box[need]
    out_off = np.zeros(m, np.int64)
    np.cumsum(g_num[:-1], out=out_off[1:])
    vals = np.empty(int(g_num.sum()))
    area = np.empty(m)
    bad = _ccore.mask_ious(
        s.text,
        np.ascontiguousarray(seg[:, 4:6]),
        ((s.flags[j] & F_ESCAPED) != 0).astype(np.uint8),
        h,
        w,
        g_first,
        g_num,
        out_off,
        masks.counts,
        masks.off,
        masks.h,
        masks.w,
        vals,
        area,
    )
    if bad >= 0:
        return None
    if ious and how.iou_type == "boundary" and len(vals):
        spans = np.ascontiguousarray(seg[:, 4:6])
        escaped = ((s.flags[j] & F_ESCAPED) != 0).astype(np.uint8)
        crowd = gt.g_crowd[gidx]
        if not _min_with_boundary(s.text, spans, escaped, h, w, g_first, g_num, masks, crowd, vals):
            return None
    out["mask_area"][need[want]] = area[want]
    if ious:
        out["iou_off"][need] = np.where(g_num > 0, out_off, -1)
        out["iou_val"] = vals
    return out, unknown


_THR0 = float(THR_EFF.min())  # as fast_lvis: below it with every ground truth, never matched


def _min_with_boundary(text, spans, escaped, h, w, g_first, g_num, masks, crowd, vals):
    """Boundary AP's IoUs, in place: ``vals`` (the mask IoUs of detections with the ground truth
    of their cell, as ``mask_ious`` wrote them: detection k's with ground truth ``g_first[k]``..
    at ``vals[sum(g_num[:k]):][:g_num[k]]``) become min(mask IoU, boundary IoU) where the Python
    reader computes the boundary IoU (``fast_lvis._min_with_boundary``): mask IoU at least the
    lowest threshold, ground truth not crowd. False: a detection left to the Python reader."""
    k = np.repeat(np.arange(len(g_num)), g_num)  # the detection of each value
    start = np.zeros(len(g_num), np.int64)
    np.cumsum(g_num[:-1], out=start[1:])
    g = np.repeat(g_first - start, g_num) + np.arange(len(vals))  # its ground truth
    pair = np.flatnonzero((vals >= _THR0) & ~crowd[g])
    if len(pair) == 0:
        return True
    size = h.astype(np.int64) << 32 | w  # image sizes are below 2**32 pixels (mask_ious)
    uniq, inv = np.unique(size, return_inverse=True)
    d = np.array([dilation(int(u >> 32), int(u & 0xFFFFFFFF)) for u in uniq.tolist()], np.int64)
    bad = _ccore.boundary_min(
        text,
        spans,
        escaped,
        np.ascontiguousarray(h, np.int64),
        np.ascontiguousarray(w, np.int64),
        d[inv],
        k[pair],
        g[pair],
        pair,
        masks.counts,
        masks.off,
        masks.h,
        masks.w,
        vals,
    )
    return bad < 0


GroundTruthMasks.empty = GroundTruthMasks(
    np.zeros(1, np.uint32), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
)


def true_false_positives(cells, d, gt, iou_type, iou_val, dt_mask, thr):
    """(tp, fp) (n, A, T) of the evaluated detections ``d``: lvis-api's greedy matching of the
    ``cells`` (first detection, detections, first ground truth, ground truth; detections in
    score order) at the IoU thresholds ``thr``, then its true and false positives (neither:
    ignored); ``dt_mask`` (n, A): area outside the range or category not exhaustively annotated.
    The same as ``fast_lvis._match`` and the numpy code after it."""
    n, A = dt_mask.shape
    cells = np.ascontiguousarray(np.stack(cells, 1), dtype=np.int64).reshape(-1, 4)
    none_f, none_i = np.zeros(0), np.zeros(0, np.int64)
    if iou_type == "bbox":
        ious = (np.ascontiguousarray(d.box, np.float64), gt.boxes(), none_i, none_f)
    else:
        ious = (none_f, none_f, np.ascontiguousarray(d.iou_off, np.int64), iou_val)
    gig = np.ascontiguousarray(gt.g_ig_area, bool)
    gnz = np.ascontiguousarray(gt.g_id_nonzero, bool)
    tp = np.empty((n, A, len(thr)), bool)
    fp = np.empty((n, A, len(thr)), bool)
    _ccore.match_cells(cells, thr, *ious, gig, gnz, np.ascontiguousarray(dt_mask), tp, fp)
    return tp, fp


def accumulate(tp, fp, order, bounds, num_gt, rec_thrs, precision, recall):
    """lvis-api's precision and recall of groups of detections (see
    :func:`balms_det.evaluation.matching.accumulate`, whose arguments these are), written into
    ``precision`` (T, R, G, A) and ``recall`` (T, G, A) where a group has ground truth in an
    area range (elsewhere left as they are: -1 for lvis-api). Groups may be written by several
    threads at once, each its own."""
    n, A, T = tp.shape
    G = len(bounds) - 1
    if precision.shape != (T, len(rec_thrs), G, A) or recall.shape != (T, G, A):
        raise ValueError("accumulate: precision / recall of the wrong shape")
    if not (precision.flags.c_contiguous and recall.flags.c_contiguous):
        raise ValueError("accumulate: precision / recall must be C-contiguous")
    _ccore.accumulate(
        np.ascontiguousarray(tp),
        np.ascontiguousarray(fp),
        np.ascontiguousarray(order, np.int64),
        np.ascontiguousarray(bounds, np.int64),
        np.ascontiguousarray(num_gt, np.int64),
        np.ascontiguousarray(rec_thrs, np.float64),
        precision,
        recall,
    )
