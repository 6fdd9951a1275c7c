"""lvis-api's matching and accumulation of the evaluated detections (compiled core): precision
(T, R, K, A) and recall (T, K, A) per category, or per pool of categories for AP-pool (Dave et
al. 2021: the detections of all / r / c / f categories accumulated together, by score)."""

import numpy as np

from ._threads import run_threads
from .jsonio import load_core
from .params import AREA_HI, AREA_LO, AREA_RNG, GROUPS, IOU_THRS, REC_THRS, THR_EFF
from .select import by_score_within, cells

__all__ = ["score"]

_NT, _NA, _NR = len(IOU_THRS), len(AREA_RNG), len(REC_THRS)
PARALLEL_MIN_EVALUATED = 100_000  # evaluated detections below which one thread scores them


def _true_false_positives(d, gt, iou_type, iou_val):
    """(tp, fp) (n, A, T) of the detections ``d`` (neither: ignored, lvis-api's dt_ignore)."""
    n = len(d.key)
    dt_mask = (d.area[:, None] < AREA_LO) | (d.area[:, None] > AREA_HI) | d.nel[:, None]
    cell = np.ascontiguousarray(np.stack(cells(d, gt), 1), np.int64).reshape(-1, 4)
    none_f, none_i = np.zeros((0, 4)), np.zeros(0, np.int64)
    if iou_type == "bbox":
        ious = (np.ascontiguousarray(d.box, np.float64), gt.boxes(), none_i, np.zeros(0))
    else:
        ious = (none_f, none_f, np.ascontiguousarray(d.iou_off, np.int64), iou_val)
    tp, fp = np.empty((n, _NA, _NT), bool), np.empty((n, _NA, _NT), bool)
    load_core().match(
        cell, THR_EFF, *ious, np.ascontiguousarray(gt.g_ig_area).view(np.uint8),
        gt.g_id_nonzero.view(np.uint8), np.ascontiguousarray(dt_mask).view(np.uint8),
        tp.view(np.uint8), fp.view(np.uint8),
    )  # fmt: skip
    return tp, fp


def _accumulate(tp, fp, order, bounds, num_gt, precision, recall):
    load_core().accumulate_groups(
        tp.view(np.uint8), fp.view(np.uint8), np.ascontiguousarray(order, np.int64),
        np.ascontiguousarray(bounds, np.int64), np.ascontiguousarray(num_gt, np.int64),
        REC_THRS, precision, recall,
    )  # fmt: skip


def _part(d, gt, iou_type, iou_val, cats, out, pooled):
    """Match the detections of the categories ``cats`` and write their precision and recall
    (``pooled``: their tp and fp) into ``out``, which threads share (each its own entries)."""
    mask = np.zeros(gt.num_cats, bool)
    mask[cats] = True
    idx = np.flatnonzero(mask[d.cat])
    sub = d.subset(idx) if len(idx) < len(d.cat) else d
    tp, fp = _true_false_positives(sub, gt, iou_type, iou_val)
    if pooled:  # AP-pool: matched here, accumulated in pools
        out[0][idx], out[1][idx] = tp, fp
        return
    # per category: -score, image id, input order (lvis-api's mergesorts); sub is ordered by
    # image, category, -score, input order
    order = by_score_within(sub.cat, sub.score)
    bounds = np.searchsorted(sub.cat[order], np.arange(gt.num_cats + 1))
    _accumulate(tp, fp, order, bounds, np.where(mask[:, None], gt.num_gt, 0), *out)


def _pools(d, gt):
    """AP-pool's groups: every detection ("all"), then those of the r, c and f categories,
    each by -score, then image, category and input order (the order in which Dave et al.'s
    accumulation concatenates lvis-api's per-image results before its stable sort)."""
    order_all = np.argsort(-d.score, kind="stable")
    group_of_cat = np.zeros(gt.num_cats, np.int64)
    for g, members in enumerate(gt.freq_groups):
        group_of_cat[members] = g
    g_all = group_of_cat[d.cat[order_all]]
    orders = [order_all] + [order_all[g_all == g] for g in range(len(GROUPS))]
    bounds = np.cumsum([0] + [len(o) for o in orders])
    num_gt = np.stack([gt.num_gt.sum(0)] + [gt.num_gt[m].sum(0) for m in gt.freq_groups])
    return np.concatenate(orders), bounds, num_gt


def score(d, gt, iou_type, iou_val, protocol, workers):
    """lvis-api's (precision, recall) of the evaluated detections ``d``; categories split
    between up to ``workers`` threads, balanced by their detections."""
    n = len(d.cat)
    parts = workers if workers > 1 and n >= PARALLEL_MIN_EVALUATED else 1
    weight = np.cumsum(np.bincount(d.cat, minlength=gt.num_cats) + 1)
    cut = np.searchsorted(weight, weight[-1] * np.arange(1, parts) / parts)
    groups = [g for g in np.split(np.arange(gt.num_cats), cut) if len(g)]
    K = len(GROUPS) + 1 if protocol == "pool" else gt.num_cats
    precision, recall = -np.ones((_NT, _NR, K, _NA)), -np.ones((_NT, K, _NA))
    if protocol == "pool":
        tp, fp = np.zeros((n, _NA, _NT), bool), np.zeros((n, _NA, _NT), bool)
        run_threads(_part, [(d, gt, iou_type, iou_val, g, (tp, fp), True) for g in groups])
        _accumulate(tp, fp, *_pools(d, gt), precision, recall)
    else:
        out = (precision, recall)
        run_threads(_part, [(d, gt, iou_type, iou_val, g, out, False) for g in groups])
    return precision, recall
