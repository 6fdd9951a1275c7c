"""The protocol driver: :func:`evaluate_lvis`, lvis-api 0.5.3's numbers (``LVISEval(...).run()``,
Gupta et al. 2019), its challenge protocols and boundary AP, fast.

Protocols: "standard" (lvis-api as it is, at most ``max_dets`` detections per image), "fixed"
(AP-fixed, Dave et al. 2021: the top ``dets_per_category`` detections of every category over
the dataset, what the authors' script gets from lvis-api with ``LVISResults(..., max_dets=-1)``
and ``params.max_dets = -1``) and "pool" (AP-pool: those detections matched per category as
usual, precision and recall accumulated over the categories of a pool, "all", r, c, f).

IoU types: "bbox", "segm", "boundary" (Cheng et al. 2021: matching with min(mask IoU, boundary
IoU) for non-crowd ground truth).
"""

import gc
import os
import time
from collections import OrderedDict
from contextlib import contextmanager

from ._threads import default_workers
from .ground_truth import LVISGroundTruth
from .params import DETS_PER_CATEGORY, IOU_TYPES, MAX_DETS, PROTOCOLS
from .reader import Reading, read_detections
from .result import LVISEvalResult
from .score import score
from .select import evaluated

__all__ = ["evaluate_lvis", "evaluate_protocols", "check_detections"]


@contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: reading millions of small containers otherwise
    triggers full collections over everything alive (nothing here makes cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _source(results):
    return os.fspath(results) if isinstance(results, (str, os.PathLike)) else None


def evaluate_lvis(
    gt,
    results,
    iou_type,
    max_dets=MAX_DETS,
    *,
    protocol="standard",
    dets_per_category=DETS_PER_CATEGORY,
    ignore_boxes=False,
    workers=None,
):
    """Evaluate LVIS detections like lvis-api 0.5.3 (``LVISEval(...).run()``), fast.

    Args:
        gt: an LVIS annotation file, its dict (not changed), an ``lvis.LVIS`` or an
            :class:`LVISGroundTruth`.
        results: result dicts {image_id, category_id, bbox [x, y, w, h], score, segmentation
            (an RLE or polygons)} as Detectron2 makes them, or a results file (read in pieces).
        iou_type: "bbox", "segm" or "boundary".
        max_dets: detections kept per image (top scores over all categories), "standard" only.
        protocol: "standard", "fixed" (AP-fixed) or "pool" (AP-pool).
        dets_per_category: detections kept per category by "fixed" and "pool".
        ignore_boxes: evaluate as if the results had no "bbox": mask AP with mask areas, as
            Detectron2's LVISEvaluator and Dave et al.'s scripts evaluate masks.
        workers: threads for a large input (default: up to 2).
    Returns:
        LVISEvalResult.
    Raises:
        LVISInputError naming the file and the entries at fault (see :mod:`.rules`).
    """
    out = evaluate_protocols(
        gt, results, iou_type, (protocol,), max_dets=max_dets,
        dets_per_category=dets_per_category, ignore_boxes=ignore_boxes, workers=workers,
    )  # fmt: skip
    return out[protocol]


def evaluate_protocols(
    gt,
    results,
    iou_type,
    protocols,
    max_dets=MAX_DETS,
    *,
    dets_per_category=DETS_PER_CATEGORY,
    ignore_boxes=False,
    workers=None,
):
    """:func:`evaluate_lvis` for several protocols of the same results and iou type, which are
    read (and their IoUs computed) once: {protocol: LVISEvalResult}."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type: {iou_type} is not supported.")
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        raise ValueError(f"protocols: {list(protocols)} are not among {PROTOCOLS}")
    if any(p != "standard" for p in protocols) and int(dets_per_category) < 1:
        raise ValueError(f"dets_per_category must be at least 1, not {dets_per_category}")
    workers = default_workers() if workers is None else max(1, int(workers))
    k = int(dets_per_category)
    with _gc_paused():
        t0 = time.perf_counter()
        gt = gt if isinstance(gt, LVISGroundTruth) else LVISGroundTruth(gt)
        t_gt = time.perf_counter() - t0
        source = _source(results)
        out = {}
        for areas in ("boxless", "all"):  # all mask areas only where the first has no box
            left = [p for p in protocols if p not in out]
            if not left:
                break
            t0 = time.perf_counter()
            cols = read_detections(
                results, Reading(gt, iou_type, ignore_boxes, areas, source), workers
            )
            t_read = time.perf_counter() - t0
            for p in left:
                t0 = time.perf_counter()
                d = evaluated(cols, gt, p, max_dets, k, source)
                if d is None:
                    continue
                precision, recall = score(d, gt, iou_type, cols["iou_val"], p, workers)
                timings = OrderedDict(gt=t_gt, detections=t_read)
                timings["select_match_accumulate"] = time.perf_counter() - t0
                out[p] = LVISEvalResult(iou_type, p, gt, d, precision, recall, max_dets, k, timings)
        return {p: out[p] for p in protocols}


def check_detections(
    gt, results, iou_type, *, protocol="standard", max_dets=MAX_DETS, ignore_boxes=False,
    source=None,
):  # fmt: skip
    """Check ``results`` as :func:`evaluate_lvis` does, without evaluating them (what the
    reference engine's path runs first, so that both report bad input the same way)."""
    gt = gt if isinstance(gt, LVISGroundTruth) else LVISGroundTruth(gt)
    source = source or _source(results)
    with _gc_paused():
        for areas in ("boxless", "all"):
            how = Reading(gt, iou_type, ignore_boxes, areas, source, ious=False)
            cols = read_detections(results, how, 1)
            if evaluated(cols, gt, protocol, max_dets, DETS_PER_CATEGORY, source) is not None:
                return
