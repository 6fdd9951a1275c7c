"""Which detections lvis-api evaluates, and in which order.

* "standard": LVISResults.limit_dets_per_image: the top ``max_dets`` scores of each image over
  all its categories (a stable sort: ties in input order), before any other filter;
* "fixed" / "pool" (Dave et al. 2021): the top ``dets_per_category`` of each category over the
  dataset, no per-image cap;
* then: areas from the boxes when the first kept result has a "bbox" (every kept result must
  have one), else from the masks; a detection is evaluated when its area is in (0, inf) and its
  category is positive or negative in its image.
"""

import numpy as np

from .jsonio import LVISInputError, where

__all__ = ["Detections", "evaluated", "cells", "by_score_within"]


def by_score_within(group, score):
    """The order sorting by (group, -score, index): ``np.lexsort((-score, group))``, faster, as
    one sort of group * n + the rank of -score (ties by index) where that fits in int64."""
    n = len(score)
    if n == 0 or int(group.max()) >= (2**62) // n or int(group.min()) < 0:
        return np.lexsort((-score, group))
    rank = np.empty(n, np.int64)
    rank[np.argsort(-score, kind="stable")] = np.arange(n)
    return np.argsort(group.astype(np.int64) * n + rank)


def _top_per(group, score, k):
    """(keep, order, starts, counts): the top-``k`` scores of each group (ties in input order);
    ``order`` sorts by (group, -score, input order)."""
    n = len(score)
    order = by_score_within(group, score)
    g = group[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if n else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    keep = np.zeros(n, bool)
    keep[order[rank < k]] = True
    return keep, order, starts, counts


def _select(cols, protocol, max_dets, dets_per_category):
    """(keep, first): the detections the protocol keeps, and the one lvis-api sees first (whose
    "bbox" decides how areas are computed)."""
    img, cat, score = cols["img"], cols["cat"], cols["score"]
    n = len(score)
    keep = np.ones(n, bool)
    first = 0
    if n == 0:
        return keep, first
    if protocol == "standard":
        # an image over the cap has its detections reordered by score: the first may change
        if max_dets >= 0 and np.bincount(img).max() > max_dets:
            keep, order, starts, counts = _top_per(img, score, max_dets)
            g = int(np.searchsorted(img[order][starts], img[0]))
            if counts[g] > max_dets:
                first = int(order[starts[g]])
        return keep, first
    # the results then listed category after category (in order of first appearance), each by
    # score: the first is the best of the first result's category
    if np.bincount(cat).max() > dets_per_category:
        keep = _top_per(cat, score, dets_per_category)[0]
    same = np.flatnonzero(cat == cat[0])
    first = int(same[np.lexsort((same, -score[same]))[0]])
    return keep, first


class Detections:
    """Columns of the detections lvis-api evaluates, ordered by (cell, -score, input order):
    pos (index in the input), img / cat (indices into the sorted ids), key (cell), score,
    area, box, iou_off (where their IoUs with the cell's ground truth start, mask iou types),
    nel (category not exhaustively annotated in the image); per category, num_kept (kept by the
    protocol) and num_empty (kept, in an image that annotates the category, area 0)."""

    NAMES = ("pos", "img", "cat", "key", "score", "area", "box", "iou_off", "nel")

    def subset(self, idx):
        out = Detections()
        for name in self.NAMES:
            setattr(out, name, getattr(self, name)[idx])
        return out


def _listed(idx, total=True):
    shown = ", ".join(f"#{i}" for i in idx[:10].tolist())
    return shown + (f" ... ({len(idx)} in all)" if total and len(idx) > 10 else "")


def evaluated(cols, gt, protocol, max_dets, dets_per_category, source):
    """The :class:`Detections` the protocol evaluates, or None where areas are to come from the
    masks of detections whose masks were not read (read them again, every area)."""
    keep, first = _select(cols, protocol, max_dets, dets_per_category)
    has_box, rel = cols["has_box"], cols["rel"]
    first_has_box = bool(has_box[first]) if len(keep) else True
    if first_has_box:
        lacking = np.flatnonzero(keep & ~has_box)
        if len(lacking):
            raise LVISInputError(
                f"detections{where(source)} without a bbox while the first result (#{first}) "
                f"has one: {_listed(lacking)}"
            )
    idx = np.flatnonzero(keep & rel)
    rp = (np.cumsum(rel) - 1)[idx]  # positions among the relevant detections
    box = cols["box"][rp]
    if first_has_box:
        area = box[:, 2] * box[:, 3]
    else:  # every area from the masks (lvis-api crashes on a kept result without one)
        no_seg = cols["no_seg"][rp]
        if no_seg.any():
            raise LVISInputError(
                f"detections{where(source)} without a segmentation while the first result "
                f"(#{first}) has no bbox (areas then come from the masks): "
                f"{_listed(idx[no_seg], total=False)}"
            )
        area = cols["mask_area"][rp]
        if np.isnan(area).any():
            return None
    with np.errstate(invalid="ignore"):
        ok = (area > 0) & (area < float("inf"))
    sel = np.flatnonzero(ok)
    d = Detections()
    d.pos = idx[sel]
    d.img = cols["img"][d.pos].astype(np.int64)
    d.cat = cols["cat"][d.pos].astype(np.int64)
    d.key = d.img * gt.num_cats + d.cat
    d.score = cols["score"][d.pos]
    d.area = area[sel]
    d.box = box[sel]
    d.iou_off = cols["iou_off"][rp[sel]]
    d.nel = np.zeros(len(sel), bool)
    d = d.subset(by_score_within(d.key, d.score))  # (d.pos is increasing: ties in input order)
    d.nel = gt.not_exhaustive(d.key)
    d.num_kept = np.bincount(cols["cat"][keep], minlength=gt.num_cats)
    d.num_empty = np.bincount(cols["cat"][idx[~ok]], minlength=gt.num_cats)
    return d


def cells(d, gt):
    """(first detection, detections, first ground truth, ground truth) of the cells holding
    both evaluated detections and ground truth."""
    n = len(d.key)
    d_start = np.flatnonzero(np.r_[True, d.key[1:] != d.key[:-1]]) if n else np.zeros(0, int)
    d_count = np.diff(np.r_[d_start, n])
    _, di, gi = np.intersect1d(
        d.key[d_start], gt.cell_keys, assume_unique=True, return_indices=True
    )
    return d_start[di], d_count[di], gt.cell_start[gi], gt.cell_count[gi]
