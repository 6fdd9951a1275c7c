"""Run the reference LVIS evaluator (lvis-api 0.5.3) on a current numpy.

lvis 0.5.3, the only release on PyPI, calls ``np.float`` in ``LVISEval.accumulate``;
the alias was removed in numpy 1.24, so ``LVISEval.run()`` crashes there.
:func:`lvis_numpy_compat` puts the alias back for the duration of a ``with`` block.
:func:`run_lvis_api` is the reference evaluator (the ``lvis-api`` engine of
:mod:`balms_det.evaluation.tasks`, and what the tests compare the fast engine with).
"""

import contextlib
import threading

import numpy as np

from ..lvis_eval import read_json

__all__ = ["lvis_numpy_compat", "run_lvis_api"]

_MISSING = object()
_LOCK = threading.RLock()


@contextlib.contextmanager
def lvis_numpy_compat():
    """Temporarily provide ``np.float = float`` when numpy lacks it; restore afterwards."""
    with _LOCK:
        previous = np.__dict__.get("float", _MISSING)
        added = previous is _MISSING
        if added:
            np.float = float  # the alias numpy < 1.24 had (builtin float)
        try:
            yield
        finally:
            if added:
                try:
                    del np.float
                except AttributeError:
                    pass


def run_lvis_api(gt, results, iou_type, max_dets=300, *, ignore_boxes=False):
    """Evaluate ``results`` against ``gt`` with lvis-api and return the ``LVISEval`` object.

    Args:
        gt: path to an LVIS annotation json, or an ``lvis.LVIS`` object.
        results: list of result dicts (image_id, category_id, bbox, score,
            segmentation) or path to a results json. A list is shallow-copied per
            element, as lvis-api adds keys ("area", "id") to each result.
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image (over all categories), lvis-api's cap; -1 for
            none (``LVISResults(..., max_dets=-1)`` and ``params.max_dets = -1``, how Dave et al.
            run AP-fixed after keeping the top-k detections of each category).
        ignore_boxes: evaluate as if the results had no "bbox": for segm the areas of APs /
            APm / APl are then mask areas (the evaluator's and Detectron2's convention for mask
            tasks); with the boxes kept, lvis-api takes the areas of a results file that has
            boxes from its boxes. The same option as ``balms_det.lvis_eval.evaluate_lvis``'s.
    Returns:
        lvis.LVISEval after ``run()``: ``.results`` / ``get_results()``, ``.eval``.
    """
    from lvis import LVIS, LVISEval, LVISResults

    if not isinstance(gt, LVIS):
        gt = LVIS(str(gt))
    if not isinstance(results, (list, tuple)):
        results = read_json(results, "Detections file")
    drop = ("bbox",) if ignore_boxes else ()
    results = [{k: v for k, v in r.items() if k not in drop} for r in results]
    dt = LVISResults(gt, results, max_dets=max_dets)
    lvis_eval = LVISEval(gt, dt, iou_type)
    lvis_eval.params.max_dets = max_dets
    with lvis_numpy_compat():
        lvis_eval.run()
    return lvis_eval
