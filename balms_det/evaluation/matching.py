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
    "Cells",
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


class Cells:
    """The (image, category) cells to match, as arrays over C cells and their rows.

    Cell c holds the detections ``rows[row_start[c]:row_start[c] + M[c]]`` (indices into the
    outputs, in score order: only those reaching the lowest threshold against some ground truth)
    and the ground truth ``g_start[c]:g_start[c] + G[c]`` (indices into ``gig`` / ``gnz``).
    Row i's IoUs with them are ``iou[iou_start[i]:iou_start[i] + G[c]]``."""

    def __init__(self, rows, row_start, M, g_start, G, iou, iou_start):
        self.rows = rows
        self.row_start = row_start
        self.M = M
        self.g_start = g_start
        self.G = G
        self.iou = iou
        self.iou_start = iou_start


def _cell_patterns(cells, gig):
    """(nonuniform (C, A), npat (C,)): area ranges whose ground truth is partly ignored."""
    cs = np.vstack([np.zeros((1, _NA), np.int64), np.cumsum(gig, axis=0, dtype=np.int64)])
    ignored = cs[cells.g_start + cells.G] - cs[cells.g_start]  # (C, A)
    nonuni = (ignored > 0) & (ignored < cells.G[:, None])
    return nonuni, 1 + nonuni.sum(1)


def greedy_match(cells, gig, gnz, nz_out, igm_out, max_cells=2048):
    """lvis-api's greedy matching for many cells, all thresholds and area ranges at once.

    ``cells``: :class:`Cells`; ``gig`` (N, A): ground truth ignored per area range; ``gnz``
    (N,): ground truth id != 0. Writes, for each row, nz_out[row] (A, T): matched to ground
    truth with a nonzero id, and igm_out[row]: matched to ignored ground truth.

    The ground-truth axis is reversed so that argmax (first maximum) picks the last
    ground truth among equal IoUs, as lvis-api does. An area range whose ground truth is
    all ignored or all regular matches exactly like one with no ignored ground truth, so
    such area ranges share one "pattern"; only the others get their own.
    """
    if len(cells.M) == 0:
        return
    nonuni, npat = _cell_patterns(cells, gig)
    gpad = 1 << np.ceil(np.log2(np.maximum(cells.G, 1))).astype(np.int64)
    for gb, P in sorted(set(zip(gpad.tolist(), npat.tolist()))):
        members = np.flatnonzero((gpad == gb) & (npat == P))
        members = members[np.argsort(-cells.M[members], kind="stable")]
        for c0 in range(0, len(members), max_cells):
            _match_block(
                cells, members[c0 : c0 + max_cells], gb, P, nonuni, gig, gnz, nz_out, igm_out
            )


def _match_block(cells, chunk, gb, P, nonuni, gig, gnz, nz_out, igm_out):
    """Match the cells ``chunk`` (sorted by decreasing M; ground truth padded to ``gb``, ``P``
    ignore patterns), one detection rank at a time over all of them."""
    C = len(chunk)
    M = cells.M[chunk]
    G = cells.G[chunk]
    off = np.r_[0, np.cumsum(M)[:-1]]
    tot = int(M.sum())
    # the chunk's rows, cell after cell
    src = np.repeat(cells.row_start[chunk] - off, M) + np.arange(tot)
    ROWS = cells.rows[src]
    j = np.arange(gb)
    # IoUs with the ground truth in reverse order, -1 past the cell's ground truth
    g_row = np.repeat(G, M)[:, None]
    iou_idx = cells.iou_start[src][:, None] + g_row - 1 - j
    IOU = np.where(j < g_row, cells.iou[np.minimum(iou_idx, len(cells.iou) - 1)], -1.0)
    # ground truth per cell, reversed, padded (ignored: False)
    g_idx = cells.g_start[chunk][:, None] + G[:, None] - 1 - j
    valid = j < G[:, None]
    g_idx = np.where(valid, g_idx, 0)
    GIGA = (gig[g_idx] & valid[:, :, None]).transpose(0, 2, 1).copy()  # (C, A, gb)
    GNZ = gnz[g_idx] & valid  # (C, gb)
    nu = nonuni[chunk]
    PMAP = np.where(nu, np.cumsum(nu, axis=1), 0)  # area range -> pattern (0: uniform)
    GIGP = np.zeros((C, P, gb), bool)  # per pattern (0: no ignored ground truth)
    ci, ai = np.nonzero(nu)
    GIGP[ci, PMAP[ci, ai]] = GIGA[ci, ai]
    thr = _THR_EFF[None, None, :, None]
    matched = np.zeros((C, P, _NT, gb), bool)
    active = np.searchsorted(-M, -np.arange(M[0]), side="left")  # cells with M > j
    for k in range(int(M[0])):
        n = int(active[k])
        r = off[:n] + k
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


def accumulate(tp, fp, order, bounds, num_gt, max_elems=1 << 21):
    """lvis-api's accumulation for groups of detections.

    Args:
        tp, fp: (n, A, T) bool, true / false positives per area range and IoU threshold
            (neither: ignored).
        order: indices into the n detections, group after group, each group in lvis-api's
            accumulation order (score descending, ties as lvis-api breaks them); a detection
            may appear in several groups.
        bounds: (G + 1,) group g is ``order[bounds[g]:bounds[g + 1]]``.
        num_gt: (G, A) ground truth that is not ignored, per group and area range.
        max_elems: size of the blocks worked on at once (memory).

    Returns:
        precision (T, R, G, A) and recall (T, G, A), -1 where lvis-api leaves them undefined
        (no ground truth in the group and area range).

    Groups of similar size are padded to a common length and accumulated together (a padded
    position repeats the group's last counts, which changes neither the precision envelope nor
    the recall-threshold search); a group too large for a block goes alone, a few rows at a
    time.
    """
    G = len(bounds) - 1
    R = len(REC_THRS)
    rows = _NA * _NT
    precision = -np.ones((_NT, R, G, _NA))
    recall = -np.ones((_NT, G, _NA))
    n = len(tp)
    pad = n  # an all-False row
    tp2 = np.concatenate([tp.reshape(n, rows), np.zeros((1, rows), bool)])
    fp2 = np.concatenate([fp.reshape(n, rows), np.zeros((1, rows), bool)])
    order = np.asarray(order, np.int64)
    nd = np.diff(bounds)
    jr_all = np.repeat(_recall_steps(num_gt), _NT, axis=1)  # (G, A*T, R), row = a*T + t
    ng_all = np.repeat(num_gt, _NT, axis=1).astype(np.float64)  # (G, A*T)
    filled = np.flatnonzero(num_gt.any(1))
    for g in filled[nd[filled] == 0].tolist():  # ground truth but no detection: AP 0
        va = num_gt[g] > 0
        recall[:, g, va] = 0
        precision[:, :, g, va] = 0.0
    rest = filled[nd[filled] > 0]
    big = rest[nd[rest] * rows > max_elems]
    rest = rest[nd[rest] * rows <= max_elems]
    out = (precision, recall, num_gt)
    for g in big.tolist():  # alone, unpadded, a few rows at a time
        sel = order[bounds[g] : bounds[g + 1]]
        TPt = np.ascontiguousarray(tp2[sel].T)[None]  # (1, A*T, nd)
        FPt = np.ascontiguousarray(fp2[sel].T)[None]
        step = max(1, (4 * max_elems) // len(sel))
        for r0 in range(0, rows, step):
            rs = slice(r0, min(rows, r0 + step))
            grp = np.array([g])
            res = _accumulate_block(
                TPt[:, rs], FPt[:, rs], nd[grp], ng_all[grp, rs], jr_all[grp, rs]
            )
            _store(out, grp, rs, *res)
    length = 1 << np.ceil(np.log2(nd[rest])).astype(np.int64) if len(rest) else rest
    for L in sorted(set(length.tolist())):  # similar sizes together, padded to L
        members = rest[length == L]
        per = max(1, max_elems // (L * rows))
        for c0 in range(0, len(members), per):
            grp = members[c0 : c0 + per]
            pos = bounds[grp][:, None] + np.arange(L)
            idx = np.where(
                np.arange(L) < nd[grp][:, None], order[np.minimum(pos, len(order) - 1)], pad
            )
            TPt = np.ascontiguousarray(tp2[idx].transpose(0, 2, 1))  # (C, A*T, L)
            FPt = np.ascontiguousarray(fp2[idx].transpose(0, 2, 1))
            res = _accumulate_block(TPt, FPt, nd[grp], ng_all[grp], jr_all[grp])
            _store(out, grp, slice(0, rows), *res)
    return precision, recall


def _store(out, grp, rs, prec, rc_last):
    """Write the rows ``rs`` (a * T + t) of the groups ``grp`` where they have ground truth."""
    precision, recall, num_gt = out
    a_idx = np.arange(rs.start, rs.stop) // _NT
    t_idx = np.arange(rs.start, rs.stop) % _NT
    ci, ri = np.nonzero(num_gt[grp][:, a_idx] > 0)
    precision[t_idx[ri], :, grp[ci], a_idx[ri]] = prec[ci, ri]
    recall[t_idx[ri], grp[ci], a_idx[ri]] = rc_last[ci, ri]


def _accumulate_block(TPt, FPt, nd, ng, jr):
    """Precision at the recall thresholds (C, W, R) and the last recall (C, W) of C groups
    padded to length L: ``TPt`` / ``FPt`` (C, W, L) bool, rows a * T + t, in accumulation
    order; ``nd`` (C,) their lengths (>= 1), ``ng`` (C, W) ground truth, ``jr`` (C, W, R) the
    integer recall steps.

    lvis-api computes precision tp / (fp + tp + eps) at every position, its running maximum
    from the end, and reads it where the true-positive count first reaches each recall
    threshold. That position is the position of the jr-th true positive (the first one for
    jr = 0), and between two true positives precision only falls, so the running maximum
    from a true positive is the maximum over the true positives from there on: only the
    true positives' precisions are computed (the same operations, hence the same values)."""
    C, W, L = TPt.shape
    R = jr.shape[-1]
    eps = np.spacing(1)
    fp_cnt = np.cumsum(FPt, axis=2, dtype=np.int32)
    m = TPt.sum(axis=2)  # true positives per row
    with np.errstate(divide="ignore", invalid="ignore"):
        rc_last = m.astype(np.float64) / ng
    prec = np.zeros((C, W, R))
    mmax = int(m.max())
    if mmax == 0:
        return prec, rc_last
    cc, rr, pp = np.nonzero(TPt)
    seg = cc * W + rr
    first = np.r_[0, np.cumsum(m.ravel())[:-1]]
    v = np.arange(len(seg)) - first[seg] + 1  # rank of each true positive in its row
    tp = v.astype(np.float64)
    fp = fp_cnt[cc, rr, pp].astype(np.float64)
    PR = np.zeros((C * W, mmax))
    PR[seg, v - 1] = tp / (fp + tp + eps)
    env = np.maximum.accumulate(PR[:, ::-1], axis=1)[:, ::-1]
    steps = jr.reshape(C * W, R)
    found = steps <= m.reshape(C * W, 1)
    pick = env[np.arange(C * W)[:, None], np.clip(steps - 1, 0, mmax - 1)]
    prec = np.where(found, pick, 0.0).reshape(C, W, R)
    return prec, rc_last
