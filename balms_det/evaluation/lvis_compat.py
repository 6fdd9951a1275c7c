"""The reference engine, lvis-api 0.5.3 itself (:func:`run_lvis_api`: the ``lvis-api`` engine
of :mod:`.tasks`, the oracle of the tests), on a current numpy: lvis 0.5.3 (the only release on
PyPI) calls ``np.float``, which numpy 1.24 removed; :func:`lvis_numpy_compat` puts the alias
back for the duration of a ``with`` block.
"""

import contextlib
import threading

import numpy as np

from ..lvis_eval import read_json

__all__ = ["lvis_numpy_compat", "run_lvis_api"]

_LOCK = threading.RLock()


@contextlib.contextmanager
def lvis_numpy_compat():
    """Temporarily provide ``np.float = float`` when numpy lacks it; restore afterwards."""
    with _LOCK:
        added = "float" not in vars(np)
        if added:
            np.float = float  # the alias numpy < 1.24 had (builtin float)
        try:
            yield
        finally:
            if added:
                vars(np).pop("float", None)


def run_lvis_api(gt, results, iou_type, max_dets=300, *, ignore_boxes=False):
    """lvis-api's ``LVISEval`` of ``results`` (result dicts, copied, or a results file) against
    ``gt`` (an annotation file or an ``lvis.LVIS``) after ``run()`` (``.results``, ``.eval``);
    ``iou_type`` "bbox" or "segm"; ``max_dets``: its per-image cap, -1 for none (as Dave et al.
    run AP-fixed on the top-k of each category). ``ignore_boxes``: evaluate as if the results
    had no "bbox", so that segm's APs / APm / APl are of mask areas (the convention of the mask
    tasks); with the boxes kept, lvis-api takes the areas of results that have boxes from the
    boxes. The same option, and default, as ``balms_det.lvis_eval.evaluate_lvis``'s.
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
