"""The LVIS evaluation engine: lvis-api 0.5.3's numbers (``lvis.LVISEval``, Gupta et al. 2019),
its challenge protocols and boundary AP, fast.

Protocols (``protocol``):

* "standard": lvis-api as it is, at most ``max_dets`` (300) detections per image.
* "fixed": AP-fixed (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil
  is in the Details"): the top ``dets_per_category`` (10,000) detections of every category
  over the whole dataset (score order, ties in input order), no per-image cap, then the
  standard matching and accumulation; what the authors' script gets from lvis-api with
  ``LVISResults(..., max_dets=-1)`` and ``params.max_dets = -1``.
* "pool": AP-pool (same paper): the detections of AP-fixed matched per category as usual,
  precision and recall accumulated over all detections of a pool of categories at once
  ("all", r, c, f), sorted by score.

IoU types (``iou_type``): "bbox", "segm", and "boundary" (Cheng et al. 2021, boundary AP:
matching with min(mask IoU, boundary IoU) for non-crowd ground truth, see
:mod:`balms_det.evaluation.boundary`).

Details of lvis-api 0.5.3 reproduced here (lvis/eval.py, lvis/results.py):

* the per-image cap keeps the top scores over all categories (a stable sort: ties keep the
  input order), before any other filtering;
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

How it is fast: only the (image, category) cells that hold ground truth or kept detections are
touched; the detections are numpy columns (a few arrays, not a dict each); a results file is
parsed in chunks (orjson when installed) by several processes at once, each also computing the
mask IoUs of its detections; box IoUs are one numpy expression (bit-equal to pycocotools);
the greedy matching runs for many cells, all thresholds and area ranges at once
(:mod:`balms_det.evaluation.matching`). This module imports neither torch nor Detectron2.

Main entry point: :func:`evaluate_lvis`. :class:`LVISGroundTruth` can be built once and
reused for several evaluations (e.g. bbox and segm of the same results).
"""

import contextlib
import gc
import os
import time
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_utils

from . import _json, _native
from ._parallel import default_workers, run_forked, run_threads
from .boundary import boundary_crops, boundary_iou, dilation
from .detections_io import (
    LVISInputError,
    array_ranges_or_raise,
    bad_outlines,
    bad_rle_strings,
    check_ids,
    check_segmentation,
    check_segmentations,
    extract_columns,
    flatten_polygons,
    iter_result_chunks,
)
from ..longtail import GROUPS
from .matching import (
    AREA_HI,
    AREA_LO,
    AREA_RNG,
    AREA_RNG_LBL,
    IOU_THRS,
    REC_THRS,
    THR_EFF,
    Cells,
    accumulate,
    greedy_match,
)

__all__ = [
    "LVISInputError",
    "LVISGroundTruth",
    "LVISEvalResult",
    "evaluate_lvis",
    "evaluate_protocols",
    "check_detections",
    "default_workers",
    "PROTOCOLS",
    "IOU_TYPES",
    "POOLS",
    "DETS_PER_CATEGORY",
    "IOU_THRS",
    "REC_THRS",
    "AREA_RNG",
    "AREA_RNG_LBL",
]

PROTOCOLS = ("standard", "fixed", "pool")
IOU_TYPES = ("bbox", "segm", "boundary")
POOLS = ("all",) + GROUPS  # the category pools of AP-pool
DETS_PER_CATEGORY = 10000  # AP-fixed / AP-pool budget (Dave et al. 2021)
_NT = len(IOU_THRS)
_NA = len(AREA_RNG)
_THR0 = float(THR_EFF.min())  # a detection below this IoU with every ground truth never matches
# inputs smaller than this are read in one process (forking costs more than it saves)
PARALLEL_MIN_BYTES = 32 << 20
PARALLEL_MIN_RESULTS = 100_000


def _where(source):
    return f" in '{source}'" if source else ""


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


# ----------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------
def _to_rle(segm, h, w):
    """lvis.LVIS.ann_to_rle: polygons -> merged RLE; uncompressed RLE -> RLE; RLE as is."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _search_sorted(sorted_ids, values):
    """Index of each value in ``sorted_ids`` and a mask of the values found there."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    idx = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return idx, sorted_ids[idx] == values


def _id_table(sorted_ids):
    """id -> index (-1: absent) of non-negative sorted ids below LVISGroundTruth.TABLE_MAX."""
    if len(sorted_ids) == 0 or sorted_ids[0] < 0 or sorted_ids[-1] >= LVISGroundTruth.TABLE_MAX:
        return None
    table = np.full(int(sorted_ids[-1]) + 1, -1, np.int64)
    table[sorted_ids] = np.arange(len(sorted_ids))
    return table


def _table_lookup(table, ids):
    """_search_sorted's result, by an id table."""
    inside = (ids >= 0) & (ids < len(table))
    idx = table[np.where(inside, ids, 0)]
    found = inside & (idx >= 0)
    return np.where(found, idx, 0), found


def _ids(values, what, source):
    arr = np.asarray(values)
    if arr.dtype.kind == "i" or (arr.dtype.kind == "u" and (arr.size == 0 or arr.max() < 2**63)):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(arr) & (arr == np.round(arr)) & (arr >= -(2.0**63)) & (arr < 2.0**63)
        if ok.all():
            return arr.astype(np.int64)
    raise LVISInputError(f"{what}{_where(source)}: non-integer values (or beyond 64 bits)")


class LVISGroundTruth:
    """An LVIS dataset (path, dict or ``lvis.LVIS``) indexed for :func:`evaluate_lvis`;
    ``source`` names a dict's file in error messages.

    The dataset dict is read, never modified. Build it once to evaluate several result
    sets or iou types against the same annotations.
    """

    def __init__(self, gt, source=None):
        with _gc_paused():
            self._init(gt, source)

    def _init(self, gt, source):
        self.source = source
        if isinstance(gt, LVISGroundTruth):
            raise TypeError("already an LVISGroundTruth")
        if isinstance(gt, (str, os.PathLike)):
            self.source = os.fspath(gt)
            if not os.path.exists(self.source):
                raise FileNotFoundError(f"Annotation file '{self.source}' does not exist")
            try:
                dataset = _json.read_file(self.source)
            except _json.BadJSON as e:
                raise LVISInputError(f"malformed JSON in {self.source}: {e}") from None
        elif isinstance(gt, dict):
            dataset = gt
        elif hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # lvis.LVIS
            dataset = gt.dataset
        else:
            raise TypeError(f"Unsupported ground truth type {type(gt)}")
        for key in ("images", "annotations", "categories"):
            if key not in dataset:
                raise LVISInputError(f"the LVIS dataset{_where(self.source)} has no {key!r}")
        self.dataset = dataset
        self._rle_cache = {}
        self._tables = None
        self._boundary_cache = {}
        self._boxes = None
        self._img_bounds = None
        self._masks_checked = False
        self._index_images_and_categories()
        self._index_annotations()

    def _index_images_and_categories(self):
        src = self.source
        # lvis.LVIS keeps the last entry of a duplicated id; params sort the ids.
        img_by_id = {im["id"]: im for im in self.dataset["images"]}
        cat_by_id = {c["id"]: c for c in self.dataset["categories"]}
        self.img_ids = np.array(sorted(img_by_id), dtype=np.int64)
        self.cat_ids = np.array(sorted(cat_by_id), dtype=np.int64)
        self.images = [img_by_id[i] for i in self.img_ids.tolist()]
        self.cats = [cat_by_id[i] for i in self.cat_ids.tolist()]
        self.num_cats = len(self.cat_ids)
        try:
            self.img_h = np.array([im["height"] for im in self.images], dtype=np.int64)
            self.img_w = np.array([im["width"] for im in self.images], dtype=np.int64)
        except KeyError as e:
            raise LVISInputError(f"an image{_where(src)} lacks {e}") from None
        self.freq_groups = [[] for _ in GROUPS]
        for k, c in enumerate(self.cats):
            freq = c.get("frequency")
            if freq not in GROUPS:
                raise LVISInputError(
                    f"category {c['id']}{_where(src)} has frequency {freq!r}, not one of r/c/f"
                )
            self.freq_groups[GROUPS.index(freq)].append(k)
        self.neg_keys = self._cell_keys("neg_category_ids")
        self.nel_keys = self._cell_keys("not_exhaustive_category_ids")

    def _cell_keys(self, field):
        """Sorted cell keys (image index * K + category index) of a per-image category list."""
        ii, cc = [], []
        for i, im in enumerate(self.images):
            ids = im.get(field) or []
            ii.extend([i] * len(ids))
            cc.extend(ids)
        if not cc:
            return np.zeros(0, np.int64)
        cidx = np.searchsorted(self.cat_ids, _ids(cc, field, self.source))
        cidx = np.minimum(cidx, self.num_cats - 1)
        found = self.cat_ids[cidx] == np.asarray(cc)
        return np.unique(np.asarray(ii, np.int64)[found] * self.num_cats + cidx[found])

    def _index_annotations(self):
        src = self.source
        anns = self.dataset["annotations"]
        ncat = self.num_cats
        # Ground truth kept by lvis-api: image and category known, 0 < area < inf, ordered
        # by image id then file order; LVIS.load_anns maps a duplicated id to its last ann.
        n = len(anns)
        try:
            a_img = _ids([a["image_id"] for a in anns], "annotation image_id", src)
            a_cat = _ids([a["category_id"] for a in anns], "annotation category_id", src)
            a_area = np.array([a["area"] for a in anns], dtype=np.float64).reshape(n)
            a_id = [a["id"] for a in anns]
        except (KeyError, TypeError, ValueError) as e:
            raise LVISInputError(f"malformed annotation{_where(src)}: {e!r}") from None
        a_iidx = np.minimum(np.searchsorted(self.img_ids, a_img), max(len(self.img_ids) - 1, 0))
        a_cidx = np.minimum(np.searchsorted(self.cat_ids, a_cat), max(ncat - 1, 0))
        a_ifound = (self.img_ids[a_iidx] == a_img) if len(self.img_ids) else np.zeros(n, bool)
        a_cfound = (self.cat_ids[a_cidx] == a_cat) if ncat else np.zeros(n, bool)
        with np.errstate(invalid="ignore"):
            keep = a_ifound & a_cfound & (a_area > 0) & (a_area < float("inf"))
        sel = np.flatnonzero(keep)
        sel = sel[np.argsort(a_iidx[sel], kind="mergesort")]
        if len(set(a_id)) != n:
            last = {aid: i for i, aid in enumerate(a_id)}
            sel = np.array([last[a_id[i]] for i in sel.tolist()], dtype=np.int64)
            # the substituted ann may be of another image / category / area
            sel = sel[a_ifound[sel] & a_cfound[sel]]
        g_key = a_iidx[sel] * ncat + a_cidx[sel]
        order = np.argsort(g_key, kind="mergesort")  # by cell, lvis-api's order inside one
        sel = sel[order]
        self.g_ann = sel  # indices into dataset["annotations"]
        self.g_img = a_iidx[sel]
        self.g_cat = a_cidx[sel]
        self.g_key = g_key[order]
        self.g_area = a_area[sel]
        sel_l = sel.tolist()
        self.g_ignore = np.array([bool(anns[i].get("ignore", 0)) for i in sel_l], bool)
        self.g_crowd = np.array([bool(anns[i].get("iscrowd", 0)) for i in sel_l], bool)
        self.g_id_nonzero = np.array([a_id[i] != 0 for i in sel_l], dtype=bool)
        self.pos_keys = np.unique(self.g_key)
        self.rel_keys = np.union1d(self.pos_keys, self.neg_keys)
        self.cell_keys, self.cell_start, self.cell_count = np.unique(
            self.g_key, return_index=True, return_counts=True
        )
        area = self.g_area[:, None]
        self.g_ig_area = self.g_ignore[:, None] | (area < AREA_LO) | (area > AREA_HI)
        self.num_gt = np.zeros((ncat, _NA), np.int64)
        for a in range(_NA):
            self.num_gt[:, a] = np.bincount(self.g_cat[~self.g_ig_area[:, a]], minlength=ncat)

    # -- locating detections -------------------------------------------------------------
    TABLE_MAX = 1 << 27  # ids / cells above this are looked up by binary search

    def lookup_tables(self):
        """Build (once) the lookup tables of :meth:`locate`: id -> index for images and
        categories, relevant and not-exhaustive flags per cell, where the ids are small enough.
        Readers in several threads or processes share them: build them before."""
        if self._tables is None:
            img, cat = _id_table(self.img_ids), _id_table(self.cat_ids)
            rel = nel = None
            if (
                img is not None
                and cat is not None
                and len(self.img_ids) * self.num_cats <= (self.TABLE_MAX)
            ):
                rel = np.zeros(len(self.img_ids) * self.num_cats, bool)
                rel[self.rel_keys] = True
                nel = np.zeros(len(self.img_ids) * self.num_cats, bool)
                nel[self.nel_keys] = True
            self._tables = (img, cat, rel, nel)
        return self._tables

    def locate(self, img_ids, cat_ids):
        """(image indices, found, category indices, found, relevant) of detections' image and
        category ids: indices into the sorted ids (0 where not found), and whether the image
        lists the category as positive or negative (lvis-api evaluates the detection)."""
        img_t, cat_t, rel_t, _ = self.lookup_tables()
        if rel_t is None:
            iidx, ifound = _search_sorted(self.img_ids, img_ids)
            cidx, cfound = _search_sorted(self.cat_ids, cat_ids)
            key = iidx * self.num_cats + cidx
            return (
                iidx,
                ifound,
                cidx,
                cfound,
                ifound & cfound & _search_sorted(self.rel_keys, key)[1],
            )
        iidx, ifound = _table_lookup(img_t, img_ids)
        cidx, cfound = _table_lookup(cat_t, cat_ids)
        return iidx, ifound, cidx, cfound, ifound & cfound & rel_t[iidx * self.num_cats + cidx]

    def not_exhaustive(self, keys):
        """Whether the cells ``keys`` (image index * K + category index) are among the images'
        ``not_exhaustive_category_ids``."""
        nel = self.lookup_tables()[3]
        return np.isin(keys, self.nel_keys) if nel is None else nel[keys]

    # -- iou inputs ----------------------------------------------------------------------
    def boxes(self):
        """(G, 4) boxes of the kept ground truth, in cell order."""
        if self._boxes is None:
            anns = self.dataset["annotations"]
            out = []
            for i in self.g_ann.tolist():
                b = anns[i].get("bbox")
                if not isinstance(b, (list, tuple)) or len(b) != 4:
                    raise LVISInputError(
                        f"annotation id {anns[i].get('id')}{_where(self.source)}: bbox must be "
                        f"[x, y, w, h], not {b!r}"
                    )
                out.append(b)
            self._boxes = np.array(out, dtype=np.float64).reshape(-1, 4)
        return self._boxes

    def rles(self, idx):
        """RLEs (as lvis.LVIS.ann_to_rle) of the kept ground truth ``idx`` (cached; all the
        ground truth of an image is converted at once)."""
        cache = self._rle_cache
        missing = [int(i) for i in idx if int(i) not in cache]
        if missing:
            if self._img_bounds is None:  # image k's ground truth: [bounds[k], bounds[k + 1])
                self._img_bounds = np.searchsorted(self.g_img, np.arange(len(self.img_ids) + 1))
            bounds = self._img_bounds
            for k in sorted(set(self.g_img[missing].tolist())):
                self._convert(range(int(bounds[k]), int(bounds[k + 1])))
        return [cache[int(i)] for i in idx]

    def boundaries(self, idx):
        """:class:`balms_det.evaluation.boundary.BoundaryCrop` of the kept ground truth
        ``idx`` (cached)."""
        missing = [int(i) for i in idx if int(i) not in self._boundary_cache]
        for i in missing:
            img = int(self.g_img[i])
            d = dilation(int(self.img_h[img]), int(self.img_w[img]))
            self._boundary_cache[i] = boundary_crops(self.rles([i]), d)[0]
        return [self._boundary_cache[int(i)] for i in idx]

    def _bad_segm(self, ann, img_id, reason):
        return LVISInputError(
            f"annotation id {ann.get('id')} (image {img_id}){_where(self.source)}: malformed "
            f"segmentation: {reason}"
        )

    def check_masks(self):
        """Raise LVISInputError for the first kept ground truth whose segmentation is malformed
        or unsafe for pycocotools (see ``detections_io.check_segmentation``): all of them at
        once (RLE strings and polygons vectorised), before any mask is made, by either reader."""
        if self._masks_checked:
            return
        anns = self.dataset["annotations"]
        h = self.img_h[self.g_img]
        w = self.img_w[self.g_img]
        bad, polys, strings = [], [], []
        for g, (a, hg, wg) in enumerate(zip(self.g_ann.tolist(), h.tolist(), w.tolist())):
            segm = anns[a].get("segmentation")
            if (
                segm.__class__ is list
                and segm
                and all(p.__class__ is list and len(p) >= 4 for p in segm)
            ):
                polys.append(g)  # (what check_segmentation's structure check lets through)
                continue
            reason = check_segmentation(segm, hg, wg, strict=False, deep=False)
            if reason is not None:
                bad.append((g, reason))
            elif isinstance(segm, list):
                polys.append(g)
            elif isinstance(segm["counts"], (str, bytes)):
                strings.append(g)
        segms = [anns[a]["segmentation"] for a in self.g_ann[polys].tolist()]
        flat = flatten_polygons(segms)
        if polys:
            flagged = np.flatnonzero(bad_outlines(segms, h[polys], w[polys], flat))
            bad += [(polys[i], "") for i in flagged.tolist()]
        if strings:
            counts = [anns[a]["segmentation"]["counts"] for a in self.g_ann[strings].tolist()]
            hw = h[strings] * w[strings]
            bad += [(strings[i], "") for i in np.flatnonzero(bad_rle_strings(counts, hw)).tolist()]
        if bad:
            g, reason = min(bad, key=lambda b: b[0])
            ann = anns[int(self.g_ann[g])]
            if not reason:
                reason = check_segmentation(ann["segmentation"], int(h[g]), int(w[g]), False)
            raise self._bad_segm(ann, int(self.img_ids[self.g_img[g]]), reason)
        xy, npts, npoly = flat
        pos = np.full(len(self.g_ann), -1, np.int64)
        pos[polys] = np.arange(len(polys))
        poly_off = np.zeros(len(polys) + 1, np.int64)
        np.cumsum(npoly, out=poly_off[1:])
        coord_off = np.zeros(len(npts) + 1, np.int64)
        np.cumsum(2 * npts, out=coord_off[1:])
        raster = np.array([len(s[0]) > 4 for s in segms], bool)  # pycocotools' frPoly
        self._polygon_table = (pos, np.zeros(0) if xy is None else xy, coord_off, poly_off, raster)
        self._masks_checked = True

    def polygon_table(self):
        """The polygons of the kept ground truth, read once by :meth:`check_masks`: (pos, xy,
        coord_off, poly_off, raster). Ground truth g is polygon set ``k = pos[g]`` (-1: not
        polygons), its polygons ``poly_off[k]:poly_off[k + 1]``, polygon p's coordinates
        ``xy[coord_off[p]:coord_off[p + 1]]`` (an odd last one left out); ``raster[k]``: they
        are polygons to pycocotools (a first list of more than 4 coordinates; else boxes)."""
        self.check_masks()
        return self._polygon_table

    def _convert(self, gidx):
        self.check_masks()
        anns = self.dataset["annotations"]
        by_img = {}
        for g in gidx:
            by_img.setdefault(int(self.g_img[g]), []).append(g)
        for k, gs in by_img.items():
            h, w = int(self.img_h[k]), int(self.img_w[k])
            img_id = int(self.img_ids[k])
            batch, owners = [], []
            for g in gs:
                ann = anns[int(self.g_ann[g])]
                segm = ann.get("segmentation")  # checked by check_masks
                if isinstance(segm, list) and len(segm[0]) > 4:
                    batch.extend(segm)  # one frPyObjects call per image for polygons
                    owners.append((g, len(segm)))
                    continue
                try:
                    self._rle_cache[g] = _to_rle(segm, h, w)
                except Exception as e:  # noqa: BLE001 (pycocotools' own error, named)
                    raise self._bad_segm(ann, img_id, e) from None
            if batch:
                try:
                    rles = mask_utils.frPyObjects(batch, h, w)
                except Exception as e:  # noqa: BLE001
                    ids = [anns[int(self.g_ann[g])].get("id") for g, _ in owners]
                    raise LVISInputError(
                        f"annotations {ids} (image {img_id}){_where(self.source)}: malformed "
                        f"polygons: {e}"
                    ) from None
                p = 0
                for g, npoly in owners:
                    part = rles[p : p + npoly]
                    p += npoly
                    # merge of a single RLE is a copy (rleMerge, n == 1)
                    self._rle_cache[g] = part[0] if npoly == 1 else mask_utils.merge(part)


# ----------------------------------------------------------------------------------------
# Reading detections
# ----------------------------------------------------------------------------------------
class _Reading:
    """What to read: the ground truth, the iou type, boxes ignored or not, which mask areas
    ("all" or "boxless": of the detections without a box), the results' file."""

    def __init__(self, gt, iou_type, ignore_boxes, areas, source, ious=True):
        self.gt = gt
        self.iou_type = iou_type
        self.masks = iou_type in ("segm", "boundary")
        self.ious = ious
        self.ignore_boxes = ignore_boxes
        self.areas = "all" if ignore_boxes else areas
        self.need_segs = self.masks or self.areas == "all"
        self.source = source


# columns of the detections read (see detections_io.Columns); of the relevant ones also
# ``mask_area`` (NaN where not computed), ``no_seg`` (no segmentation: scored with its box as
# polygon) and ``iou_off``: offset of its IoUs with the ground truth of its cell in
# ``iou_val`` (mask iou types), -1 outside such cells
_FIELDS = ("img", "cat", "score", "has_box", "rel", "box", "mask_area", "no_seg")


def _merge(parts):
    """One dict of columns from consecutive parts (dicts of the same columns)."""
    if len(parts) == 1:
        return parts[0]
    out = {name: np.concatenate([p[name] for p in parts]) for name in _FIELDS}
    shift = np.cumsum([0] + [len(p["iou_val"]) for p in parts])
    out["iou_off"] = np.concatenate(
        [np.where(p["iou_off"] >= 0, p["iou_off"] + s, -1) for p, s in zip(parts, shift)]
    )
    out["iou_val"] = np.concatenate([p["iou_val"] for p in parts])
    return out


def _empty_columns():
    return dict(
        img=np.zeros(0, np.int32),
        cat=np.zeros(0, np.int32),
        score=np.zeros(0),
        has_box=np.zeros(0, bool),
        rel=np.zeros(0, bool),
        box=np.zeros((0, 4)),
        mask_area=np.zeros(0),
        no_seg=np.zeros(0, bool),
        iou_off=np.zeros(0, np.int64),
        iou_val=np.zeros(0),
    )


def _tally_unknown(tally, col, batch, key):
    miss = np.flatnonzero(col < 0)
    if len(miss):
        tally[0] += len(miss)
        tally[1].update(batch[i][key] for i in miss.tolist())


def _read_part(results, rng, how):
    """(columns, unknown image ids, unknown category ids) of one range of the results: a byte
    range of a file (detections counted from its start) or a slice of a list."""
    is_list = isinstance(results, (list, tuple))
    parts = []
    bad_img, bad_cat = [0, set()], [0, set()]
    strip = not (how.need_segs or how.ignore_boxes)  # segmentations only of boxless ones
    scan = _native.scan if _native.available() and not is_list and _native.reads(how) else None
    chunks = iter_result_chunks(results, rng if is_list else [rng], strip, scan=scan)
    for base, batch, original in chunks:
        if isinstance(batch, _native.Scanned):
            got = _native.native_columns(batch, how)
            if got is not None:
                cols, (img_ids, cat_ids) = got
                for tally, ids in ((bad_img, img_ids), (bad_cat, cat_ids)):
                    tally[0] += len(ids)
                    tally[1].update(ids.tolist())
                parts.append(cols)
                continue
            batch = _json.loads(b"[" + batch.text + b"]")  # the Python reader decides
        if original is not None and any(
            not isinstance(d, dict) or d.get("bbox") is None for d in batch
        ):
            batch = _json.loads(b"[" + original + b"]")  # their segmentations are needed
        c = extract_columns(batch, base, how.gt, how.source, how.need_segs, how.ignore_boxes)
        _tally_unknown(bad_img, c.img, batch, "image_id")
        _tally_unknown(bad_cat, c.cat, batch, "category_id")
        parts.append(_mask_work(c, batch, base, how))
    cols = _merge(parts) if parts else _empty_columns()
    return cols, tuple(bad_img), tuple(bad_cat)


def _mask_work(c, batch, base, how):
    """The columns of a chunk (a dict, see :data:`_FIELDS`) with, for its relevant detections,
    RLEs made of their segmentations, mask areas, boxes from masks and, for mask iou types, the
    IoUs with the ground truth of their cell."""
    rel_idx = np.flatnonzero(c.rel)
    nrel = len(rel_idx)
    out = dict(
        img=c.img,
        cat=c.cat,
        score=c.score,
        has_box=c.has_box,
        rel=c.rel,
        box=c.box,
        mask_area=np.full(nrel, np.nan),
        no_seg=np.zeros(nrel, bool),
        iou_off=np.full(nrel, -1, np.int64),
        iou_val=np.zeros(0),
    )
    if c.segs is None:
        return out
    segs = c.segs
    has_box = c.has_box[rel_idx]
    need = np.flatnonzero(np.ones(nrel, bool) if how.need_segs else ~has_box)
    img = c.img[rel_idx]
    _to_rles(segs, need, img, out, batch, rel_idx, base, how)
    want = np.zeros(nrel, bool)
    want[need] = True
    if how.areas != "all":
        want &= ~has_box
    want_idx = np.flatnonzero(want & ~out["no_seg"])
    if len(want_idx):
        out["mask_area"][want_idx] = mask_utils.area([segs[j] for j in want_idx.tolist()])
    boxless = np.flatnonzero(~has_box)
    if len(boxless):
        out["box"][boxless] = np.asarray(mask_utils.toBbox([segs[j] for j in boxless.tolist()]))
    if how.masks and how.ious:
        out["iou_off"], out["iou_val"] = _mask_ious(c.cat[rel_idx], segs, img, how)
    return out


def _to_rles(segs, need, img, out, batch, rel_idx, base, how):
    """Check the segmentations ``segs[need]`` (one validator) and turn those that are not
    compressed RLEs into RLEs, in place; a missing one becomes its box as a polygon (lvis-api's
    LVISResults), marked in ``out["no_seg"]``."""
    h = how.gt.img_h[img]
    w = how.gt.img_w[img]

    def index(j):
        return base + int(rel_idx[need[j]])

    def ident(j):
        d = batch[int(rel_idx[need[j]])]
        return f"image_id {d.get('image_id')!r}, category_id {d.get('category_id')!r}"

    sub = [segs[j] for j in need.tolist()]
    for jj in check_segmentations(sub, h[need], w[need], index, ident, how.source):
        j = int(need[jj])
        s = segs[j]
        if s is None:
            out["no_seg"][j] = True
            x1, y1, bw, bh = out["box"][j].tolist()
            x2, y2 = x1 + bw, y1 + bh
            # clipped to 1 pixel outside the image: the same mask (a corner outside does not
            # move a crossing of a pixel column inside), none of pycocotools' overflow and
            # allocation in proportion to the coordinates for a box far outside
            x1, x2 = np.clip([x1, x2], -1.0, w[j] + 1.0).tolist()
            y1, y2 = np.clip([y1, y2], -1.0, h[j] + 1.0).tolist()
            s = [[x1, y1, x1, y2, x2, y2, x2, y1]]
        try:
            segs[j] = _to_rle(s, int(h[j]), int(w[j]))
        except Exception as e:  # noqa: BLE001 (pycocotools' own error, named)
            raise LVISInputError(
                f"Detections{_where(how.source)}: detection #{index(jj)} ({ident(jj)}): "
                f"malformed segmentation: {e}"
            ) from None


def _mask_ious(cat, segs, img, how):
    """(iou_off, iou_val): IoUs (segm) or min(mask IoU, boundary IoU) (boundary) of detections
    (category and image indices ``cat``, ``img``, RLEs ``segs``) with the ground truth of their
    cell, flattened: detection j's are ``iou_val[iou_off[j]:][:G]`` (-1: not in such a cell)."""
    gt = how.gt
    iou_off = np.full(len(cat), -1, np.int64)
    key = img.astype(np.int64) * gt.num_cats + cat
    if len(gt.cell_keys) == 0 or len(key) == 0:
        return iou_off, np.zeros(0)
    ci = np.minimum(np.searchsorted(gt.cell_keys, key), len(gt.cell_keys) - 1)
    inside = np.flatnonzero(gt.cell_keys[ci] == key)
    if len(inside) == 0:
        return iou_off, np.zeros(0)
    inside = inside[np.argsort(key[inside], kind="stable")]
    k_in = key[inside]
    starts = np.r_[0, np.flatnonzero(k_in[1:] != k_in[:-1]) + 1, len(inside)]
    vals, off = [], 0
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
        js = inside[a:b]
        cell = int(ci[js[0]])
        gs, gn = int(gt.cell_start[cell]), int(gt.cell_count[cell])
        gidx = np.arange(gs, gs + gn)
        ious = mask_utils.iou([segs[j] for j in js.tolist()], gt.rles(gidx), [0] * gn)
        ious = np.asarray(ious, dtype=np.float64).reshape(len(js), gn)
        if how.iou_type == "boundary":
            _min_with_boundary(ious, js, segs, gidx, int(img[js[0]]), gt)
        vals.append(ious.ravel())
        iou_off[js] = off + np.arange(len(js)) * gn
        off += len(js) * gn
    return iou_off, np.concatenate(vals)


def _min_with_boundary(ious, js, segs, gidx, img, gt):
    """ious[i, g] = min(mask IoU, boundary IoU) for non-crowd ground truth, in place.

    Only pairs whose mask IoU reaches the lowest threshold need it: any value below that
    threshold never matches, and min() keeps such a pair below it."""
    cand = (ious >= _THR0) & ~gt.g_crowd[gidx][None, :]
    if not cand.any():
        return
    rows = np.flatnonzero(cand.any(1))
    cols = np.flatnonzero(cand.any(0))
    d = dilation(int(gt.img_h[img]), int(gt.img_w[img]))
    det_b = dict(zip(rows.tolist(), boundary_crops([segs[int(js[r])] for r in rows], d)))
    gt_b = dict(zip(cols.tolist(), gt.boundaries(gidx[cols])))
    for r, g in zip(*np.nonzero(cand)):
        r, g = int(r), int(g)
        ious[r, g] = min(ious[r, g], boundary_iou(det_b[r], gt_b[g]))


def _jobs(results, how, workers):
    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        parts = workers if workers > 1 and os.path.getsize(path) >= PARALLEL_MIN_BYTES else 1
        return [(path, r, how) for r in array_ranges_or_raise(path, parts)]
    if isinstance(results, (list, tuple)):
        n = len(results)
        parts = workers if workers > 1 and n >= PARALLEL_MIN_RESULTS else 1
        cuts = [n * k // parts for k in range(parts + 1)]
        return [(results, (cuts[k], cuts[k + 1]), how) for k in range(parts)]
    raise TypeError(f"results must be a list of dicts or a path, not {type(results)}")


def _read_detections(results, how, workers):
    """All detections as one dict of columns (see :data:`_FIELDS`), read by up to ``workers``
    processes; raises the validator's errors (with indices as in the results)."""
    jobs = _jobs(results, how, workers)
    how.gt.lookup_tables()  # before the readers start: they share them
    if how.masks and how.ious:
        how.gt.check_masks()
    run = run_forked
    if _native.available() and not isinstance(results, (list, tuple)) and _native.reads(how):
        run = run_threads  # the compiled reader scans without the GIL: threads, no copies
    try:
        outs = run(_read_part, jobs)
    except LVISInputError:
        if len(jobs) == 1:
            raise
        # a later file range counts detections from its own start: read again in one
        # process, so that the error names the detection by its index in the file
        outs = [_read_part(*job) for job in _jobs(results, how, 1)]
    unknown = []
    for k in (1, 2):
        unknown.append((sum(o[k][0] for o in outs), set().union(*[o[k][1] for o in outs])))
    check_ids(unknown[0], unknown[1], how.source, how.gt.source)
    return _merge([o[0] for o in outs])


# ----------------------------------------------------------------------------------------
# Which detections are evaluated
# ----------------------------------------------------------------------------------------
def _top_per(group, score, k):
    """(keep, order, starts, counts): the top-``k`` scores of each group (a stable sort: ties
    in input order); ``order`` sorts by (group, -score, input order)."""
    n = len(score)
    order = np.lexsort((-score, group))
    g = group[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if n else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    keep = np.zeros(n, bool)
    keep[order[rank < k]] = True
    return keep, order, starts, counts


def _select(cols, protocol, max_dets, dets_per_category):
    """(keep, first): the detections the protocol keeps, and the index of the one lvis-api
    sees first (whose "bbox" decides how areas are computed)."""
    img, cat, score = cols["img"], cols["cat"], cols["score"]
    n = len(score)
    keep = np.ones(n, bool)
    first = 0
    if n == 0:
        return keep, first
    if protocol == "standard":
        # LVISResults.limit_dets_per_image: the top max_dets scores of each image; an image
        # over the cap has its detections reordered by score, so the first result changes
        if max_dets >= 0 and np.bincount(img).max() > max_dets:
            keep, order, starts, counts = _top_per(img, score, max_dets)
            g = int(np.searchsorted(img[order][starts], img[0]))
            if counts[g] > max_dets:
                first = int(order[starts[g]])
        return keep, first
    # AP-fixed / AP-pool (Dave et al. 2021): the top-k of each category over the dataset,
    # the results then listed category after category (in order of first appearance), each by
    # score; the first is the best of the first result's category
    if np.bincount(cat).max() > dets_per_category:
        keep = _top_per(cat, score, dets_per_category)[0]
    same = np.flatnonzero(cat == cat[0])
    first = int(same[np.lexsort((same, -score[same]))[0]])
    return keep, first


class _Detections:
    """Columns of the detections lvis-api evaluates, ordered by (cell, -score, input order):
    pos (index in the input), img / cat (indices into the sorted ids), key (cell), score,
    area, box, iou_off (offset of the IoUs with the cell's ground truth, mask iou types), nel
    (category not exhaustively annotated in the image)."""


def _evaluated(cols, gt, iou_type, protocol, max_dets, dets_per_category, source):
    keep, first = _select(cols, protocol, max_dets, dets_per_category)
    has_box = cols["has_box"]
    rel = cols["rel"]
    first_has_box = bool(has_box[first]) if len(keep) else True
    if first_has_box:
        lacking = np.flatnonzero(keep & ~has_box)
        if len(lacking):
            raise LVISInputError(
                f"detections{_where(source)} without a bbox while the first result (#{first}) "
                f"has one: {', '.join(f'#{i}' for i in lacking[:10].tolist())}"
                + (f" ... ({len(lacking)} in all)" if len(lacking) > 10 else "")
            )
    idx = np.flatnonzero(keep & rel)
    rp = (np.cumsum(rel) - 1)[idx]  # positions among the relevant detections
    box = cols["box"][rp]
    if first_has_box:
        area = box[:, 2] * box[:, 3]
    else:
        # LVISResults: every area from the masks; a kept result with a box but no mask
        # crashes lvis-api there
        no_seg = cols["no_seg"][rp]
        if no_seg.any():
            bad = idx[no_seg]
            raise LVISInputError(
                f"detections{_where(source)} without a segmentation while the first result "
                f"(#{first}) has no bbox (areas then come from the masks): "
                f"{', '.join(f'#{i}' for i in bad[:10].tolist())}"
            )
        area = cols["mask_area"][rp]
        if np.isnan(area).any():
            return None  # mask areas of detections with a box are needed: read again
    with np.errstate(invalid="ignore"):
        ok = (area > 0) & (area < float("inf"))
    sel = np.flatnonzero(ok)
    d = _Detections()
    d.pos = idx[sel]
    d.img = cols["img"][d.pos].astype(np.int64)
    d.cat = cols["cat"][d.pos].astype(np.int64)
    d.key = d.img * gt.num_cats + d.cat
    d.score = cols["score"][d.pos]
    d.area = area[sel]
    d.box = box[sel]
    d.iou_off = cols["iou_off"][rp[sel]]
    # by cell, then score, then input order: d.pos is increasing and lexsort is stable
    order = np.lexsort((-d.score, d.key))
    for name in ("pos", "img", "cat", "key", "score", "area", "box", "iou_off"):
        setattr(d, name, getattr(d, name)[order])
    d.nel = gt.not_exhaustive(d.key)
    d.num_kept = np.bincount(cols["cat"][keep], minlength=gt.num_cats)
    return d


# ----------------------------------------------------------------------------------------
# IoUs and matching
# ----------------------------------------------------------------------------------------
def _box_ious(db, gb):
    """pycocotools' bbIou for paired rows of ``db`` and ``gb`` (bit-equal: the same
    operations in the same order)."""
    w = np.minimum(db[:, 2] + db[:, 0], gb[:, 2] + gb[:, 0]) - np.maximum(db[:, 0], gb[:, 0])
    h = np.minimum(db[:, 3] + db[:, 1], gb[:, 3] + gb[:, 1]) - np.maximum(db[:, 1], gb[:, 1])
    i = w * h
    u = db[:, 2] * db[:, 3] + gb[:, 2] * gb[:, 3] - i
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), i / u, 0.0)


def _accumulate(tp, fp, order, bounds, num_gt, out=None):
    """:func:`balms_det.evaluation.matching.accumulate`, by the compiled core where it is
    there; with ``out`` (the core only: precision and recall shared by threads) written there."""
    if not _native.available():
        return accumulate(tp, fp, order, bounds, num_gt)
    if out is None:
        G = len(bounds) - 1
        out = (-np.ones((_NT, len(REC_THRS), G, _NA)), -np.ones((_NT, G, _NA)))
    _native.accumulate(tp, fp, order, bounds, num_gt, REC_THRS, *out)
    return out


def _cells(d, gt):
    """(first detection, detections, first ground truth, ground truth) of the cells holding
    both evaluated detections and ground truth."""
    n = len(d.key)
    # d.key is sorted: its runs are the cells
    d_start = np.flatnonzero(np.r_[True, d.key[1:] != d.key[:-1]]) if n else np.zeros(0, int)
    d_count = np.diff(np.r_[d_start, n])
    d_keys = d.key[d_start]
    _, di, gi = np.intersect1d(d_keys, gt.cell_keys, assume_unique=True, return_indices=True)
    return d_start[di], d_count[di], gt.cell_start[gi], gt.cell_count[gi]


def _match(d, gt, iou_type, iou_val):
    """(nz, igm): for each evaluated detection, per area range and threshold, matched to
    ground truth with a nonzero id / to ignored ground truth."""
    n = len(d.key)
    nz = np.zeros((n, _NA, _NT), bool)
    igm = np.zeros((n, _NA, _NT), bool)
    ds, dn, gs, gn = _cells(d, gt)
    if len(ds) == 0:
        return nz, igm
    # every (detection, ground truth) pair of these cells, detection-major
    det = np.repeat(ds - np.r_[0, np.cumsum(dn)[:-1]], dn) + np.arange(dn.sum())
    det_g = np.repeat(gn, dn)  # ground truth of each detection's cell
    pair_first = np.r_[0, np.cumsum(det_g)[:-1]]
    within = np.arange(det_g.sum()) - np.repeat(pair_first, det_g)
    if iou_type == "bbox":
        pair_gt = np.repeat(np.repeat(gs, dn), det_g) + within
        vals = _box_ious(d.box[np.repeat(det, det_g)], gt.boxes()[pair_gt])
    else:
        vals = iou_val[np.repeat(d.iou_off[det], det_g) + within]
    # rows: detections reaching the lowest threshold against some ground truth of their cell
    ok = np.flatnonzero(np.maximum.reduceat(vals, pair_first) >= _THR0)
    cell_of = np.repeat(np.arange(len(ds)), dn)[ok]
    M = np.bincount(cell_of, minlength=len(ds))
    keep = np.flatnonzero(M)
    cells = Cells(
        rows=det[ok],
        row_start=np.r_[0, np.cumsum(M)[:-1]][keep],
        M=M[keep],
        g_start=gs[keep],
        G=gn[keep],
        iou=vals,
        iou_start=pair_first[ok],
    )
    greedy_match(cells, gt.g_ig_area, gt.g_id_nonzero, nz, igm)
    return nz, igm


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------
class LVISEvalResult:
    """What lvis-api's LVISEval holds after run(): ``precision`` (T, R, K, A) and ``recall``
    (T, K, A), -1 where undefined, and the summary ``results`` (AP, AP50, ..., APr, APc, APf,
    AR@max_dets, ...). For AP-pool the K axis is the pools ("all", r, c, f) and AP, AP50,
    AP75, APs/m/l and AR are those of the pool "all", APr/APc/APf of the group pools.

    ``num_dets[k]``: detections of category k the protocol evaluated (kept, of area > 0, in an
    image where the category is positive or negative); a category with ground truth and 0
    here has AP 0 because nothing of it was evaluated. ``num_kept[k]``: those the protocol kept
    (the per-image cap or the per-category top-k), before the other filters."""

    def __init__(
        self,
        iou_type,
        protocol,
        max_dets,
        cat_ids,
        img_ids,
        precision,
        recall,
        freq_groups,
        num_dets,
        num_kept=None,
        dets_per_category=None,
        timings=None,
    ):
        self.iou_type = iou_type
        self.protocol = protocol
        self.max_dets = max_dets
        self.dets_per_category = dets_per_category
        self.cat_ids = [int(c) for c in cat_ids]
        self.img_ids = img_ids
        self.iou_thrs = IOU_THRS
        self.rec_thrs = REC_THRS
        self.area_rng = AREA_RNG
        self.area_rng_lbl = AREA_RNG_LBL
        self.precision = precision
        self.recall = recall
        self.freq_groups = freq_groups
        self.num_dets = num_dets
        self.num_kept = num_kept
        self.timings = timings or {}
        self.results = self._summarize_all()

    def _summarize(self, summary_type, iou_thr=None, area_rng="all", group=None):
        aidx = [i for i, lbl in enumerate(self.area_rng_lbl) if lbl == area_rng]
        if summary_type == "ap":
            s = self.precision
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, :, group, aidx] if group is not None else s[:, :, :, aidx]
        else:
            s = self.recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, group, aidx] if group is not None else s[:, :, aidx]
        if len(s[s > -1]) == 0:
            return -1
        return np.mean(s[s > -1])

    def _summarize_all(self):
        pooled = self.protocol == "pool"
        every = [0] if pooled else None  # AP-pool: the pool "all"
        groups = [[g + 1] for g in range(len(GROUPS))] if pooled else self.freq_groups
        r = OrderedDict()
        r["AP"] = self._summarize("ap", group=every)
        r["AP50"] = self._summarize("ap", iou_thr=0.50, group=every)
        r["AP75"] = self._summarize("ap", iou_thr=0.75, group=every)
        r["APs"] = self._summarize("ap", area_rng="small", group=every)
        r["APm"] = self._summarize("ap", area_rng="medium", group=every)
        r["APl"] = self._summarize("ap", area_rng="large", group=every)
        for g, members in zip(GROUPS, groups):
            r["AP" + g] = self._summarize("ap", group=members)
        r[f"AR@{self.max_dets}"] = self._summarize("ar", group=every)
        for area_rng in ["small", "medium", "large"]:
            r[f"AR{area_rng[0]}@{self.max_dets}"] = self._summarize(
                "ar", area_rng=area_rng, group=every
            )
        return r

    def get_results(self):
        return self.results

    def per_category_ap(self):
        """{category id: AP (IoU .50:.95, all areas) or nan}, as lvis-api would for one category."""
        if self.protocol == "pool":
            raise ValueError("AP-pool has no per-category AP (precision is pooled)")
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
                iou = f"{float(key[2:]) / 100:0.2f}"
            else:
                iou = f"{self.iou_thrs[0]:0.2f}:{self.iou_thrs[-1]:0.2f}"
            cat_group = key[2] if len(key) > 2 and key[2] in GROUPS else "all"
            area = key[2] if len(key) > 2 and key[2] in ["s", "m", "l"] else "all"
            lines.append(template.format(title, _type, iou, area, self.max_dets, cat_group, value))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------
def evaluate_lvis(
    gt,
    results,
    iou_type,
    max_dets=300,
    *,
    protocol="standard",
    dets_per_category=DETS_PER_CATEGORY,
    ignore_boxes=False,
    workers=None,
):
    """Evaluate LVIS detections like lvis-api 0.5.3 (``LVISEval(...).run()``), fast.

    Args:
        gt: path to an LVIS annotation json, the dataset dict already loaded (not
            modified), an ``lvis.LVIS`` object, or an :class:`LVISGroundTruth`.
        results: list of result dicts {image_id, category_id, bbox [x, y, w, h], score,
            segmentation (RLE with counts as str/bytes, or polygons)} as Detectron2 makes
            them, or the path to an LVIS results json (read in chunks). Not modified.
        iou_type: "bbox", "segm" or "boundary".
        max_dets: detections kept per image (top scores over all categories), "standard" only.
        protocol: "standard", "fixed" (AP-fixed) or "pool" (AP-pool).
        dets_per_category: detections kept per category by "fixed" and "pool".
        ignore_boxes: evaluate as if the results had no "bbox" (mask AP with mask areas, as
            Detectron2's LVISEvaluator and Dave et al.'s scripts evaluate masks).
        workers: processes used for a large input (default: up to 2, see
            :func:`default_workers`).
    Returns:
        LVISEvalResult.
    Raises:
        LVISInputError naming the file and the detections with unknown image or category ids,
        missing or malformed fields, NaN or infinite scores or boxes, malformed boxes or
        segmentations (polygons of fewer than 3 points included).
    """
    out = evaluate_protocols(
        gt,
        results,
        iou_type,
        (protocol,),
        max_dets=max_dets,
        dets_per_category=dets_per_category,
        ignore_boxes=ignore_boxes,
        workers=workers,
    )
    return out[protocol]


def evaluate_protocols(
    gt,
    results,
    iou_type,
    protocols,
    max_dets=300,
    *,
    dets_per_category=DETS_PER_CATEGORY,
    ignore_boxes=False,
    workers=None,
):
    """:func:`evaluate_lvis` for several protocols of the same results and iou type, which are
    read (and their IoUs computed) once: {protocol: LVISEvalResult}."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type: {iou_type} is not supported.")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"protocols: {list(protocols)} are not among {PROTOCOLS}")
    if any(p != "standard" for p in protocols) and int(dets_per_category) < 1:
        raise ValueError(f"dets_per_category must be at least 1, not {dets_per_category}")
    workers = default_workers() if workers is None else max(1, int(workers))
    with _gc_paused():
        t0 = time.perf_counter()
        if not isinstance(gt, LVISGroundTruth):
            gt = LVISGroundTruth(gt)
        t_gt = time.perf_counter() - t0
        source = os.fspath(results) if isinstance(results, (str, os.PathLike)) else None
        args = (max_dets, int(dets_per_category), source)
        cols = None
        out = {}
        for areas in ("boxless", "all"):
            left = [p for p in protocols if p not in out]
            if not left:
                break
            t0 = time.perf_counter()
            how = _Reading(gt, iou_type, ignore_boxes, areas, source)
            cols = _read_detections(results, how, workers)
            t_read = time.perf_counter() - t0
            for p in left:
                # None: the first kept result has no box, every area is a mask area (read again)
                t0 = time.perf_counter()
                d = _evaluated(cols, gt, iou_type, p, *args)
                if d is not None:
                    out[p] = _result(d, gt, iou_type, p, cols["iou_val"], workers, args, t0)
                    out[p].timings.update(gt=t_gt, detections=t_read)
                    out[p].timings.move_to_end("select_match_accumulate")
        return {p: out[p] for p in protocols}


def _result(d, gt, iou_type, protocol, iou_val, workers, args, t0):
    max_dets, dets_per_category, _ = args
    precision, recall = _score(d, gt, iou_type, iou_val, protocol, workers)
    timings = OrderedDict(select_match_accumulate=time.perf_counter() - t0)
    return LVISEvalResult(
        iou_type,
        protocol,
        max_dets if protocol == "standard" else -1,
        gt.cat_ids,
        gt.img_ids,
        precision,
        recall,
        gt.freq_groups,
        np.bincount(d.cat, minlength=gt.num_cats),
        d.num_kept,
        dets_per_category if protocol != "standard" else None,
        timings,
    )


PARALLEL_MIN_EVALUATED = 100_000  # evaluated detections below which one process scores them


def _true_false_positives(d, gt, iou_type, iou_val):
    """(tp, fp): (n, A, T) true / false positives of the evaluated detections (neither:
    ignored, as lvis-api's dt_ignore)."""
    dt_mask = (d.area[:, None] < AREA_LO) | (d.area[:, None] > AREA_HI) | d.nel[:, None]
    if _native.available():
        cells = _cells(d, gt)
        return _native.true_false_positives(cells, d, gt, iou_type, iou_val, dt_mask, THR_EFF)
    nz, igm = _match(d, gt, iou_type, iou_val)
    dt_ig = igm | (~nz & dt_mask[:, :, None])
    del igm
    return nz & ~dt_ig, ~nz & ~dt_ig


def _subset(d, idx):
    out = _Detections()
    for name in ("pos", "img", "cat", "key", "score", "area", "box", "iou_off", "nel"):
        setattr(out, name, getattr(d, name)[idx])
    return out


def _score_part(d, gt, iou_type, iou_val, cats, pooled, out=None):
    """Match the detections of the categories ``cats`` (indices); then their precision and
    recall (T, R, |cats|, A), (T, |cats|, A), or for AP-pool their (indices, packed tp, fp).
    With ``out`` (threads sharing it: the full precision and recall, or AP-pool's full tp and
    fp) the part is written there instead, and None returned."""
    mask = np.zeros(gt.num_cats, bool)
    mask[cats] = True
    idx = np.flatnonzero(mask[d.cat])
    sub = _subset(d, idx) if len(idx) < len(d.cat) else d
    tp, fp = _true_false_positives(sub, gt, iou_type, iou_val)
    if pooled:
        if out is not None:
            out[0][idx], out[1][idx] = tp, fp
            return None
        return idx, np.packbits(tp, axis=None), np.packbits(fp, axis=None)
    # per category: -score, image id, input order (lvis-api's mergesorts); sub is ordered by
    # image, category, -score, input order, and lexsort is stable
    order = np.lexsort((-sub.score, sub.cat))
    bounds = np.searchsorted(sub.cat[order], np.arange(gt.num_cats + 1))
    num_gt = np.where(mask[:, None], gt.num_gt, 0)
    if out is not None:
        _accumulate(tp, fp, order, bounds, num_gt, out)
        return None
    precision, recall = _accumulate(tp, fp, order, bounds, num_gt)
    return precision[:, :, cats], recall[:, cats]


def _score(d, gt, iou_type, iou_val, protocol, workers):
    """lvis-api's precision and recall of the evaluated detections; categories split
    between ``workers`` threads (compiled core) or processes (balanced by their detections)."""
    n = len(d.cat)
    parts = workers if workers > 1 and n >= PARALLEL_MIN_EVALUATED else 1
    weight = np.cumsum(np.bincount(d.cat, minlength=gt.num_cats) + 1)
    cut = np.searchsorted(weight, weight[-1] * np.arange(1, parts) / parts)
    groups = [g for g in np.split(np.arange(gt.num_cats), cut) if len(g)]
    pooled = protocol == "pool"
    if _native.available():  # threads (the core works without the GIL), writing one output
        if pooled:
            out = (np.zeros((n, _NA, _NT), bool), np.zeros((n, _NA, _NT), bool))
        else:
            out = (
                -np.ones((_NT, len(REC_THRS), gt.num_cats, _NA)),
                -np.ones((_NT, gt.num_cats, _NA)),
            )
        run_threads(_score_part, [(d, gt, iou_type, iou_val, g, pooled, out) for g in groups])
        if not pooled:
            return out
        tp, fp = out
    else:
        outs = run_forked(_score_part, [(d, gt, iou_type, iou_val, g, pooled) for g in groups])
        if not pooled:
            precision = -np.ones((_NT, len(REC_THRS), gt.num_cats, _NA))
            recall = -np.ones((_NT, gt.num_cats, _NA))
            for g, (p, r) in zip(groups, outs):
                precision[:, :, g] = p
                recall[:, g] = r
            return precision, recall
        tp = np.zeros((n, _NA, _NT), bool)
        fp = np.zeros((n, _NA, _NT), bool)
        for idx, tp_bits, fp_bits in outs:
            size = len(idx) * _NA * _NT
            tp[idx] = np.unpackbits(tp_bits, count=size).reshape(-1, _NA, _NT).astype(bool)
            fp[idx] = np.unpackbits(fp_bits, count=size).reshape(-1, _NA, _NT).astype(bool)
    order, bounds, num_gt = _pool_groups(d, gt)
    return _accumulate(tp, fp, order, bounds, num_gt)


def check_detections(
    gt, results, iou_type, *, protocol="standard", max_dets=300, ignore_boxes=False, source=None
):
    """Validate ``results`` as :func:`evaluate_lvis` does, without evaluating them (what the
    lvis-api path runs first, so that both report bad input the same way)."""
    if not isinstance(gt, LVISGroundTruth):
        gt = LVISGroundTruth(gt)
    if source is None and isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
    with _gc_paused():
        if iou_type in ("segm", "boundary"):
            gt.check_masks()
        how = _Reading(gt, iou_type, ignore_boxes, "boxless", source, ious=False)
        cols = _read_detections(results, how, 1)
        if _evaluated(cols, gt, iou_type, protocol, max_dets, DETS_PER_CATEGORY, source) is None:
            how = _Reading(gt, iou_type, ignore_boxes, "all", source, ious=False)
            _read_detections(results, how, 1)


def _pool_groups(d, gt):
    """AP-pool's groups: every detection ("all"), then those of the r, c and f categories,
    each by -score, then image, category and input order (the order in which Dave et al.'s
    accumulation concatenates lvis-api's per-image results before its stable sort)."""
    # d is ordered by image, category, -score, input order; the sort is stable
    order_all = np.argsort(-d.score, kind="stable")
    group_of_cat = np.zeros(gt.num_cats, np.int64)
    for g, members in enumerate(gt.freq_groups):
        group_of_cat[members] = g
    g_all = group_of_cat[d.cat[order_all]]
    orders = [order_all] + [order_all[g_all == g] for g in range(len(GROUPS))]
    bounds = np.cumsum([0] + [len(o) for o in orders])
    num_gt = np.stack(
        [gt.num_gt.sum(0)] + [gt.num_gt[members].sum(0) for members in gt.freq_groups]
    )
    return np.concatenate(orders), bounds, num_gt
