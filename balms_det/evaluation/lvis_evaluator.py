"""LVIS-protocol evaluation that works on the current stack, for LVIS and any long-tailed set.

``BalmsLVISEvaluator`` is Detectron2's ``LVISEvaluator`` with its metric computation replaced:
* it runs on numpy >= 1.24 (lvis-api 0.5.3 crashes there),
* categories without a ``frequency`` field (COCO-format datasets) get one from the training image
  counts with the LVIS thresholds, so APr/APc/APf exist for custom data,
* it adds worst-class metrics (harmonic/geometric mean and minimum of per-class AP).
"""

import copy
import itertools
import json
import logging
import os
from collections import OrderedDict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .longtail import assign_frequency, worst_class_metrics

__all__ = ["BalmsLVISEvaluator", "evaluate_lvis_results", "SUMMARY_KEYS"]

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_ENGINES = ("fast", "lvis-api")


def evaluate_lvis_results(gt_dataset, results, iou_type, max_dets=300, engine="fast"):
    """Evaluate LVIS-format results with the given engine.

    Args:
        gt_dataset (dict): the LVIS annotation dict (categories must carry ``frequency``).
        results (list[dict]): LVIS results (1-based category ids).
        iou_type (str): "bbox" or "segm".
        engine (str): "fast" (balms_det.evaluation.fast_lvis) or "lvis-api" (the reference).

    Returns:
        (summary, per_class): ``summary`` maps lvis-api's result keys (AP, APr, AR@300, ...) to
        fractions (-1 where undefined); ``per_class`` maps category id to AP (NaN where the
        category cannot be evaluated).
    """
    if engine == "fast":
        from .fast_lvis import evaluate_lvis

        ev = evaluate_lvis(gt_dataset, results, iou_type, max_dets=max_dets)
        return dict(ev.results), ev.per_category_ap()
    if engine != "lvis-api":
        raise ValueError(f"Unknown LVIS evaluation engine '{engine}'; choose one of {_ENGINES}")
    import numpy as np
    from lvis import LVIS

    from .lvis_compat import run_lvis_api

    gt = LVIS.__new__(LVIS)  # an LVIS object over an in-memory dict, without reading a file
    gt.logger = logger
    gt.dataset = copy.deepcopy(gt_dataset)
    gt._create_index()
    ev = run_lvis_api(gt, results, iou_type, max_dets=max_dets)
    precision = ev.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(ev.params.cat_ids):
        p = precision[:, :, k, 0]
        p = p[p > -1]
        per_class[cat_id] = float(np.mean(p)) if p.size else float("nan")
    return dict(ev.get_results()), per_class


class BalmsLVISEvaluator(LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` with a working, faster metric computation and long-tail
    extras. Results (in %): AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR, plus ``hmean``,
    ``gmean``, ``min`` of per-class AP and ``num_zero`` (classes at zero AP)."""

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=300,
        train_dataset_names=(),
        engine="fast",
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir, max_dets_per_image: as LVISEvaluator.
            train_dataset_names: registered training datasets whose image counts define the
                frequency groups of categories that lack an LVIS ``frequency`` field.
            engine: "fast" or "lvis-api".
        """
        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("json_file", None)
        if json_file and not os.path.exists(json_file):
            if meta.get("synthetic_config", None) is not None:
                DatasetCatalog.get(dataset_name)  # generated on first use
            else:
                raise FileNotFoundError(
                    f"Annotation file '{json_file}' of dataset '{dataset_name}' does not exist; "
                    "see datasets/README.md for where to put it"
                )
        if engine not in _ENGINES:
            raise ValueError(f"Unknown LVIS evaluation engine '{engine}'; choose one of {_ENGINES}")
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        self._engine = engine
        self._dataset_name = dataset_name
        self._train_dataset_names = list(train_dataset_names)
        cats = self._lvis_api.dataset["categories"]
        if any("frequency" not in c for c in cats):
            assign_frequency(cats, self._train_image_counts())
            self._logger.info(
                "Frequency groups of '%s' derived from training image counts of %s",
                dataset_name, self._train_dataset_names,
            )

    def _train_image_counts(self):
        from ..class_counts import counts_from_dataset_dicts

        if not self._train_dataset_names:
            raise ValueError(
                f"Categories of '{self._dataset_name}' have no LVIS 'frequency' field: pass "
                "train_dataset_names so that groups can be derived from training image counts"
            )
        meta = MetadataCatalog.get(self._dataset_name)
        K = len(meta.thing_classes)
        total = None
        for name in self._train_dataset_names:
            c = counts_from_dataset_dicts(DatasetCatalog.get(name), K).image_count
            total = c if total is None else total + c
        if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            return {
                cid: total[k] for cid, k in meta.thing_dataset_id_to_contiguous_id.items()
            }
        return {k + 1: total[k] for k in range(K)}

    def _eval_predictions(self, predictions):
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in lvis_results:
                r["category_id"] = reverse[r["category_id"]]
        else:  # LVIS: contiguous 0-based -> 1-based ids
            for r in lvis_results:
                r["category_id"] += 1
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info("Saving results to %s", path)
            with PathManager.open(path, "w") as f:
                json.dump(lvis_results, f)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._per_class = {}
        for task in sorted(tasks):
            results = lvis_results
            if task == "segm":  # mask AP uses mask areas, as Detectron2 does
                results = [{k: v for k, v in r.items() if k != "bbox"} for r in lvis_results]
            summary, per_class = evaluate_lvis_results(
                self._lvis_api.dataset, results, task, self._max_dets_per_image, self._engine
            )
            res = OrderedDict((k, float(summary[k] * 100)) for k in SUMMARY_KEYS)
            ar = [k for k in summary if k.startswith("AR@")]
            if ar:
                res["AR"] = float(summary[ar[0]] * 100)
            worst = worst_class_metrics(per_class.values())
            res.update(
                hmean=worst["hmean"] * 100,
                gmean=worst["gmean"] * 100,
                min=worst["min"] * 100,
                num_zero=float(worst["num_zero"]),
            )
            self._logger.info(
                "Evaluation results for %s (%s engine):\n%s", task, self._engine,
                create_small_table(res),
            )
            self._results[task] = res
            self._per_class[task] = per_class
