"""lvis-api 0.5.3's greedy matching and precision / recall accumulation, vectorised over many
(image, category) cells and over groups of categories (Gupta et al. 2019, LVIS; lvis/eval.py).

:func:`greedy_match` runs the matching of all IoU thresholds and area ranges of many cells at
once; :func:`accumulate` turns matched detections into lvis-api's precision (T, R, G, A) and
recall (T, G, A) arrays for any grouping of the detections: one group per category (the
standard protocol) or one per pool of categories (AP-pool, Dave et al. 2021, "Evaluating
Large-Vocabulary Object Detectors: The Devil is in the Details"). See docs/METHODS.md.
"""

import numpy as np

__all__ = [
    "IOU_THRS",
    "REC_THRS",
    "AREA_RNG",
    "AREA_RNG_LBL",
    "THR_EFF",
    "AREA_LO",
    "AREA_HI",
    "greedy_match",
    "accumulate",
]

# Exactly lvis.eval.Params.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]]
AREA_RNG_LBL = ["all", "small", "medium", "large"]

THR_EFF = np.minimum(IOU_THRS, 1 - 1e-10)  # lvis-api: iou = min([iou_thr, 1 - 1e-10])
AREA_LO = np.array([a[0] for a in AREA_RNG], dtype=np.float64)
AREA_HI = np.array([a[1] for a in AREA_RNG], dtype=np.float64)
_NT = len(IOU_THRS)
_NA = len(AREA_RNG)
_THR_EFF = THR_EFF


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _any_last(x):
    """x.any(-1) for a C-contiguous bool array; a bit test when the last axis is 1-8 long
    (numpy reductions over a short last axis are slow)."""
    view = _UINT.get(x.shape[-1])
    if view is not None and x.flags.c_contiguous:
        return x.view(view)[..., 0] != 0
    return x.any(-1)


def greedy_match(items, nz_out, igm_out, max_cells=2048):
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


def accumulate(tp, fp, order, bounds, num_gt):
    """lvis-api's accumulation for groups of detections.

    Args:
        tp, fp: (n, A, T) bool, true / false positives per area range and IoU threshold
            (neither: ignored).
        order: indices into the n detections, group after group, each group in lvis-api's
            accumulation order (score descending, ties as lvis-api breaks them); a detection
            may appear in several groups.
        bounds: (G + 1,) group g is ``order[bounds[g]:bounds[g + 1]]``.
        num_gt: (G, A) ground truth that is not ignored, per group and area range.

    Returns:
        precision (T, R, G, A) and recall (T, G, A), -1 where lvis-api leaves them undefined
        (no ground truth in the group and area range).
    """
    G = len(bounds) - 1
    R = len(REC_THRS)
    precision = -np.ones((_NT, R, G, _NA))
    recall = -np.ones((_NT, G, _NA))
    eps = np.spacing(1)
    jr_all = _recall_steps(num_gt)  # (G, A, R)
    rows = _NA * _NT
    for g in np.flatnonzero(num_gt.any(1)).tolist():
        s, e = int(bounds[g]), int(bounds[g + 1])
        nd = e - s
        va = num_gt[g] > 0  # area ranges lvis-api fills (num_gt > 0)
        if nd == 0:
            recall[:, g, va] = 0
            precision[:, :, g, va] = 0.0
            continue
        sel = order[s:e]
        tp_cnt = np.cumsum(tp[sel], axis=0).reshape(nd, rows).T  # (A*T, nd), row = a*T + t
        fp_cnt = np.cumsum(fp[sel], axis=0).reshape(nd, rows).T
        tp_sum = tp_cnt.astype(np.float64)
        fp_sum = fp_cnt.astype(np.float64)
        ng = np.repeat(num_gt[g], _NT).astype(np.float64)[:, None]  # (A*T, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc_last = tp_sum[:, -1:] / ng
        pr = tp_sum / (fp_sum + tp_sum + eps)
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        # searchsorted(rc, REC_THRS, "left") for all rows at once, on integer keys
        stride = nd + 1
        off = np.arange(rows, dtype=np.int64)[:, None] * stride
        keys = (tp_cnt + off).ravel()
        jr = np.minimum(np.repeat(jr_all[g], _NT, axis=0), stride)  # (A*T, R)
        ins = np.searchsorted(keys, (jr + off).ravel(), side="left").reshape(rows, R)
        ins -= np.arange(rows, dtype=np.int64)[:, None] * nd
        valid = ins < nd
        prec = np.where(valid, np.take_along_axis(pr, np.minimum(ins, nd - 1), axis=1), 0.0)
        prec = prec.reshape(_NA, _NT, R)
        rcl = rc_last.reshape(_NA, _NT)
        for a in np.flatnonzero(va).tolist():
            precision[:, :, g, a] = prec[a]
            recall[:, g, a] = rcl[a]
    return precision, recall
