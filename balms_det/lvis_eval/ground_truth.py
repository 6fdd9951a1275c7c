"""The ground truth of an LVIS evaluation, checked (:func:`~.rules.check_ground_truth`) and indexed
as lvis-api 0.5.3 reads it (lvis/lvis.py, lvis/eval.py):

* images and categories by sorted id (a duplicated id: its last record); every category has a
  "frequency" r, c or f;
* the ground truth kept: its image and category known, 0 < area < inf, ordered by image id,
  then category, then file order; a duplicated annotation id stands for its last annotation;
* ground truth with a true "ignore" field is ignored; iscrowd is not read (but by boundary AP);
* cells: (image, category) pairs, keyed image index * K + category index; a detection is
  evaluated when its category has ground truth in its image or is in the image's
  ``neg_category_ids``; ``not_exhaustive_category_ids`` marks cells whose unmatched detections
  are ignored.
"""

import os

import numpy as np

from .jsonio import LVISInputError, read_json, where
from .params import AREA_HI, AREA_LO, AREA_RNG, GROUPS
from .rules import annotation_boxes, annotation_masks, check_ground_truth

__all__ = ["LVISGroundTruth"]

_NA = len(AREA_RNG)


def _int64(values):
    """int64 array of integer (or integral float) ids, exactly."""
    return np.fromiter(map(int, values), np.int64, len(values))


def _search_sorted(sorted_ids, values):
    """Index of each value in ``sorted_ids`` and a mask of the values found there."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    idx = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return idx, sorted_ids[idx] == values


def _id_table(sorted_ids, limit):
    """id -> index (-1: absent) of sorted non-negative ids below ``limit``, else None."""
    if len(sorted_ids) == 0 or sorted_ids[0] < 0 or sorted_ids[-1] >= limit:
        return None
    table = np.full(int(sorted_ids[-1]) + 1, -1, np.int64)
    table[sorted_ids] = np.arange(len(sorted_ids))
    return table


def _table_lookup(table, ids):
    inside = (ids >= 0) & (ids < len(table))
    idx = table[np.where(inside, ids, 0)]
    found = inside & (idx >= 0)
    return np.where(found, idx, 0), found


class LVISGroundTruth:
    """An LVIS dataset (a file, the dict loaded, or an ``lvis.LVIS``) checked and indexed for the
    engine; ``source`` names a dict's file in error messages. The dict is read, never changed.
    Build it once to evaluate several result sets or iou types against the same annotations."""

    TABLE_MAX = 1 << 27  # ids / cells above this are looked up by binary search

    def __init__(self, gt, source=None):
        if isinstance(gt, LVISGroundTruth):
            raise TypeError("already an LVISGroundTruth")
        if isinstance(gt, (str, os.PathLike)):
            source = os.fspath(gt)
            gt = read_json(source, "Annotation file")
        elif not isinstance(gt, dict) and isinstance(getattr(gt, "dataset", None), dict):
            gt = gt.dataset  # lvis.LVIS
        elif not isinstance(gt, dict):
            raise TypeError(f"Unsupported ground truth type {type(gt)}")
        self.source = source
        self.dataset = gt
        self._ann_ids, self._ann_img = check_ground_truth(gt, source, areas=True)
        self._tables = self._boxes = self._masks = None
        self._index_images_and_categories()
        self._index_annotations()

    def _index_images_and_categories(self):
        img_by_id = {int(im["id"]): im for im in self.dataset["images"]}
        cat_by_id = {int(c["id"]): c for c in self.dataset["categories"]}
        self.img_ids = np.array(sorted(img_by_id), dtype=np.int64)
        self.cat_ids = np.array(sorted(cat_by_id), dtype=np.int64)
        self.images = [img_by_id[i] for i in self.img_ids.tolist()]
        self.cats = [cat_by_id[i] for i in self.cat_ids.tolist()]
        self.num_cats = len(self.cat_ids)
        self.img_h = np.array([im["height"] for im in self.images], dtype=np.int64)
        self.img_w = np.array([im["width"] for im in self.images], dtype=np.int64)
        self.freq_groups = [[] for _ in GROUPS]
        for k, c in enumerate(self.cats):
            freq = c.get("frequency")
            if freq not in GROUPS:
                raise LVISInputError(
                    f"category {c['id']}{where(self.source)} has frequency {freq!r}, not one "
                    "of r/c/f"
                )
            self.freq_groups[GROUPS.index(freq)].append(k)
        self.neg_keys = self._cell_keys("neg_category_ids")
        self.nel_keys = self._cell_keys("not_exhaustive_category_ids")

    def _cell_keys(self, field):
        """Sorted cell keys of a per-image category list (unknown categories left out)."""
        lists = [im.get(field) or [] for im in self.images]
        cc = [c for ids in lists for c in ids]
        if not cc:
            return np.zeros(0, np.int64)
        ii = np.repeat(np.arange(len(lists)), [len(ids) for ids in lists])
        cidx, found = _search_sorted(self.cat_ids, _int64(cc))
        return np.unique(ii[found] * self.num_cats + cidx[found])

    def _index_annotations(self):
        anns = self.dataset["annotations"]
        ncat, n = self.num_cats, len(anns)
        a_img = _int64(self._ann_img)
        a_cat = _int64([a["category_id"] for a in anns])
        a_area = np.array([a["area"] for a in anns], dtype=np.float64).reshape(n)
        a_id = self._ann_ids
        a_iidx, a_ifound = _search_sorted(self.img_ids, a_img)
        a_cidx, a_cfound = _search_sorted(self.cat_ids, a_cat)
        with np.errstate(invalid="ignore"):
            keep = a_ifound & a_cfound & (a_area > 0) & (a_area < float("inf"))
        sel = np.flatnonzero(keep)
        sel = sel[np.argsort(a_iidx[sel], kind="mergesort")]
        if len(set(a_id)) != n:  # LVIS.load_anns: a duplicated id stands for its last annotation
            last = {aid: i for i, aid in enumerate(a_id)}
            sel = np.array([last[a_id[i]] for i in sel.tolist()], dtype=np.int64)
            sel = sel[a_ifound[sel] & a_cfound[sel]]  # (the last may be of another image)
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
    def lookup_tables(self):
        """Build (once) the tables of :meth:`locate`: id -> index of images and categories,
        relevant and not-exhaustive flags per cell, where the ids are small enough. Readers in
        several threads share them: build them before."""
        if self._tables is None:
            img = _id_table(self.img_ids, self.TABLE_MAX)
            cat = _id_table(self.cat_ids, self.TABLE_MAX)
            rel = nel = None
            cells = len(self.img_ids) * self.num_cats
            if img is not None and cat is not None and cells <= self.TABLE_MAX:
                rel, nel = np.zeros(cells, bool), np.zeros(cells, bool)
                rel[self.rel_keys] = True
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
            rel = _search_sorted(self.rel_keys, iidx * self.num_cats + cidx)[1]
            return iidx, ifound, cidx, cfound, ifound & cfound & rel
        iidx, ifound = _table_lookup(img_t, img_ids)
        cidx, cfound = _table_lookup(cat_t, cat_ids)
        return iidx, ifound, cidx, cfound, ifound & cfound & rel_t[iidx * self.num_cats + cidx]

    def not_exhaustive(self, keys):
        """Whether the cells ``keys`` are among their images' not_exhaustive_category_ids."""
        nel = self.lookup_tables()[3]
        return np.isin(keys, self.nel_keys) if nel is None else nel[keys]

    # -- what IoUs are computed of -----------------------------------------------------------
    def _kept(self):
        anns = self.dataset["annotations"]
        sel = self.g_ann.tolist()
        return [anns[i] for i in sel], [self._ann_ids[i] for i in sel], self.img_ids[self.g_img]

    def boxes(self):
        """(G, 4) boxes of the kept ground truth, in cell order."""
        if self._boxes is None:
            anns, ids, imgs = self._kept()
            self._boxes = annotation_boxes(anns, ids, imgs.tolist(), self.source)
        return self._boxes

    def masks(self):
        """(counts, offsets): the masks of the kept ground truth, in cell order (ground truth g
        is counts[off[g]:off[g + 1]]), made once under the segmentation rules."""
        if self._masks is None:
            anns, ids, imgs = self._kept()
            sizes = {
                int(i): (int(h), int(w)) for i, h, w in zip(self.img_ids, self.img_h, self.img_w)
            }
            self._masks = annotation_masks(anns, ids, imgs.tolist(), sizes, self.source)
        return self._masks
