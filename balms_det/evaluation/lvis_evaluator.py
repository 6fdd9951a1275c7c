"""LVIS-protocol evaluation that works on the current stack, for LVIS and any long-tailed set.

``BalmsLVISEvaluator`` is Detectron2's ``LVISEvaluator`` with its metric computation replaced:
* it runs on numpy >= 1.24 (lvis-api 0.5.3 crashes there),
* categories without a ``frequency`` field (COCO-format datasets) get one from the training image
  counts with the LVIS thresholds, so APr/APc/APf exist for custom data,
* it adds worst-class metrics (harmonic/geometric mean and minimum of per-class AP),
* it writes a per-class table (CSV, JSON) and plots into its output folder.

The same code paths evaluate a saved detections file without the model
(:func:`evaluate_detections_file`, ``tools/evaluate_detections.py``).

Metric values are in %; a metric lvis-api leaves undefined (-1: e.g. APr when no rare category
has ground truth, APl without large objects) is reported as NaN, as Detectron2's COCOEvaluator
does. During training, Detectron2's ``EvalHook`` puts every metric returned by ``evaluate()``
into the event storage (``<task>/<metric>``, hence TensorBoard), and ``DefaultTrainer.test``
prints them with ``print_csv_format``; the evaluator itself adds nothing to the storage so that
nothing is logged twice.
"""

import copy
import itertools
import json
import logging
import math
import os
from collections import OrderedDict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..utils import read_json
from .longtail import assign_frequency, worst_class_metrics
from .report import write_report

__all__ = [
    "BalmsLVISEvaluator",
    "evaluate_lvis_results",
    "SUMMARY_KEYS",
    "WORST_KEYS",
    "DetectionFileError",
    "prepare_gt_dataset",
    "task_metrics",
    "evaluate_tasks",
    "tasks_of_results",
    "load_lvis_detections",
    "validate_lvis_results",
    "evaluate_detections_file",
]

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
WORST_KEYS = ("hmean", "gmean", "min", "num_zero")
_ENGINES = ("fast", "lvis-api")
_EXAMPLES = 10  # offending ids named in an error message


class DetectionFileError(ValueError):
    """A detections or annotation file that cannot be evaluated (the message names the file)."""


def _examples(values):
    values = sorted(set(values), key=lambda v: (str(type(v)), v))
    shown = ", ".join(repr(v) for v in values[:_EXAMPLES])
    if len(values) > _EXAMPLES:
        shown += f", ... ({len(values)} in all)"
    return "[" + shown + "]"


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
    if engine not in _ENGINES:
        raise ValueError(f"Unknown LVIS evaluation engine '{engine}'; choose one of {_ENGINES}")
    if engine == "fast" or len(results) == 0:
        # lvis-api crashes on an empty result list (LVISResults reads results[0]); without
        # detections every category with ground truth has AP 0, which the fast engine (equal
        # to lvis-api to 1e-9) gives.
        from .fast_lvis import evaluate_lvis

        ev = evaluate_lvis(gt_dataset, results, iou_type, max_dets=max_dets)
        return dict(ev.results), ev.per_category_ap()
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


# ------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------
def _counts_from_categories(categories):
    """{id: {"image_count", "instance_count"}} from the categories' own fields (LVIS has the
    training counts there), or None when some category lacks ``image_count``."""
    if not categories or any("image_count" not in c for c in categories):
        return None
    return {
        c["id"]: {"image_count": c["image_count"], "instance_count": c.get("instance_count")}
        for c in categories
    }


def prepare_gt_dataset(dataset, train_counts=None, source=None, hint=""):
    """Make an LVIS- or COCO-format annotation dict evaluable with the LVIS protocol (in place).

    * Categories without an LVIS ``frequency`` get one from training image counts with the LVIS
      thresholds (rare 1-10, common 11-100, frequent > 100): from ``train_counts``
      ({id: {"image_count", ...}}) when given, else from the categories' ``image_count``.
    * Images without ``neg_category_ids`` (COCO format: exhaustive annotations) list every
      category they hold no annotation of as negative; a missing
      ``not_exhaustive_category_ids`` is empty. LVIS images are left alone.
    * COCO crowd annotations (``iscrowd`` 1) are marked ``ignore`` (lvis-api does not read
      ``iscrowd``).

    Returns ``dataset``. Raises ValueError (naming ``source``, ending with ``hint``) when
    groups are needed and no counts are available.
    """
    cats = dataset["categories"]
    where = f" of '{source}'" if source else ""
    if any("frequency" not in c for c in cats):
        counts = train_counts if train_counts is not None else _counts_from_categories(cats)
        if counts is None:
            raise ValueError(
                f"Categories{where} have no LVIS 'frequency' field and no training image "
                f"counts to derive it from{': ' + hint if hint else ''}"
            )
        assign_frequency(cats, {cid: v["image_count"] for cid, v in counts.items()})
    images = dataset["images"]
    if any(
        "neg_category_ids" not in im or "not_exhaustive_category_ids" not in im for im in images
    ):
        all_ids = sorted(c["id"] for c in cats)
        present = {}
        for a in dataset["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        for im in images:
            if "neg_category_ids" not in im:
                pos = present.get(im["id"], set())
                im["neg_category_ids"] = [c for c in all_ids if c not in pos]
            im.setdefault("not_exhaustive_category_ids", [])
    for a in dataset["annotations"]:
        if a.get("iscrowd", 0) and "ignore" not in a:
            a["ignore"] = 1
    return dataset


# ------------------------------------------------------------------------------------------
# Metrics of one evaluation
# ------------------------------------------------------------------------------------------
def _pct(v):
    v = float(v)
    return float("nan") if v == -1 or math.isnan(v) else v * 100


def task_metrics(summary, per_class):
    """The reported metrics (%) of one task from ``evaluate_lvis_results``'s output: AP, AP50,
    AP75, APs, APm, APl, APr, APc, APf, AR (at max_dets), hmean, gmean, min (worst-class
    metrics over per-class AP, a zero AP replaced by 1e-3 in the means) and num_zero."""
    res = OrderedDict((k, _pct(summary[k])) for k in SUMMARY_KEYS)
    ar = [k for k in summary if k.startswith("AR@")]
    if ar:
        res["AR"] = _pct(summary[ar[0]])
    worst = worst_class_metrics(per_class.values())
    res.update(
        hmean=worst["hmean"] * 100,
        gmean=worst["gmean"] * 100,
        min=worst["min"] * 100,
        num_zero=float(worst["num_zero"]),
    )
    return res


def tasks_of_results(lvis_results):
    """Tasks the results support: "bbox" (unless no result has a box) and "segm" when some
    result has a segmentation."""
    tasks = []
    if not lvis_results or any("bbox" in r for r in lvis_results):
        tasks.append("bbox")
    if any("segmentation" in r for r in lvis_results):
        tasks.append("segm")
    return tuple(tasks)


def evaluate_tasks(gt_dataset, lvis_results, tasks, max_dets=300, engine="fast", log=None):
    """Evaluate LVIS results (1-based category ids) for every task.

    Mask AP is computed without the boxes, so that areas (small/medium/large) are mask areas,
    as Detectron2's LVISEvaluator does.

    Returns:
        (results, per_class): task -> :func:`task_metrics` dict, and task -> {category id: AP
        in [0, 1] or NaN}.
    """
    log = log or logger
    results, per_class_by_task = OrderedDict(), {}
    for task in sorted(tasks):
        res_in = lvis_results
        if task == "segm":
            res_in = [{k: v for k, v in r.items() if k != "bbox"} for r in lvis_results]
        summary, per_class = evaluate_lvis_results(gt_dataset, res_in, task, max_dets, engine)
        res = task_metrics(summary, per_class)
        log.info(
            "Evaluation results for %s (%s engine):\n%s", task, engine, create_small_table(res)
        )
        results[task] = res
        per_class_by_task[task] = per_class
    return results, per_class_by_task


# ------------------------------------------------------------------------------------------
# Detections files
# ------------------------------------------------------------------------------------------
def _read_json(path, what):
    return read_json(path, what, DetectionFileError)


def load_gt_dataset(path):
    """An LVIS/COCO-format annotation file as a dict (checked for the keys evaluation needs)."""
    data = _read_json(path, "Annotation file")
    if not isinstance(data, dict):
        raise DetectionFileError(f"Annotation file '{path}' must hold a JSON object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DetectionFileError(f"Annotation file '{path}' has no {missing}")
    return data


def _category_map(mapping, cat_ids, source):
    """contiguous (0-based) id -> dataset id."""
    sorted_ids = sorted(cat_ids)
    if mapping in ("auto", "sorted"):
        # Detectron2's loaders map the sorted dataset ids to 0..K-1 (for LVIS: id - 1)
        return dict(enumerate(sorted_ids))
    if mapping == "plus1":
        return None
    data = _read_json(mapping, "Category mapping file")
    if isinstance(data, list):
        return dict(enumerate(data))
    if isinstance(data, dict):
        try:
            return {int(k): v for k, v in data.items()}
        except ValueError:
            pass
    raise DetectionFileError(
        f"Category mapping file '{mapping}' must hold a list (contiguous id -> dataset id) or "
        f"an object {{contiguous id: dataset id}} (for '{source}')"
    )


def _load_pth(path, cat_ids, category_mapping):
    import torch

    try:
        preds = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (any unpickling failure: say which file)
        raise DetectionFileError(f"Detections file '{path}' cannot be read by torch.load: {e}")
    if not isinstance(preds, list) or not all(isinstance(p, dict) for p in preds):
        raise DetectionFileError(
            f"Detections file '{path}' must hold Detectron2's saved predictions: a list of "
            "{'image_id', 'instances'} dicts"
        )
    if preds and not any("instances" in p for p in preds):
        raise DetectionFileError(
            f"Detections file '{path}' holds no 'instances' (proposals only?): nothing to "
            "evaluate"
        )
    results = list(itertools.chain(*[p.get("instances", []) for p in preds]))
    cmap = _category_map(category_mapping, cat_ids, path)
    bad = set()
    for r in results:
        if not isinstance(r, dict) or "category_id" not in r:
            raise DetectionFileError(f"Detections file '{path}': an instance is not a result dict")
        k = r["category_id"]
        if cmap is None:
            r["category_id"] = k + 1
        elif k in cmap:
            r["category_id"] = cmap[k]
        else:
            bad.add(k)
    if bad:
        raise DetectionFileError(
            f"Detections file '{path}' has contiguous category ids {_examples(bad)} beyond the "
            f"{len(cmap)} categories of the annotation file (mapping '{category_mapping}')"
        )
    return results


def validate_lvis_results(results, gt_dataset, source="detections", gt_source="annotations"):
    """Check LVIS results against the annotation dict; raise DetectionFileError naming
    ``source`` and the offending ids (unknown image or category ids, missing fields)."""
    if not isinstance(results, list):
        raise DetectionFileError(
            f"Detections file '{source}' must hold a list of results, not a "
            f"{type(results).__name__}"
        )
    img_ids = {im["id"] for im in gt_dataset["images"]}
    cat_ids = {c["id"] for c in gt_dataset["categories"]}
    bad_img, bad_cat = set(), set()
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise DetectionFileError(
                f"Detections file '{source}': result #{i} is a {type(r).__name__}, not a dict"
            )
        missing = [k for k in ("image_id", "category_id", "score") if k not in r]
        if "bbox" not in r and "segmentation" not in r:
            missing.append("bbox or segmentation")
        if missing:
            raise DetectionFileError(f"Detections file '{source}': result #{i} lacks {missing}")
        try:
            if r["image_id"] not in img_ids:
                bad_img.add(r["image_id"])
            if r["category_id"] not in cat_ids:
                bad_cat.add(r["category_id"])
        except TypeError:  # unhashable id
            raise DetectionFileError(
                f"Detections file '{source}': result #{i} has a malformed image_id/category_id"
            ) from None
    problems = []
    if bad_cat:
        problems.append(f"category ids {_examples(bad_cat)} are not in '{gt_source}'")
    if bad_img:
        problems.append(f"image ids {_examples(bad_img)} are not in '{gt_source}'")
    if problems:
        raise DetectionFileError(f"Detections file '{source}': " + "; ".join(problems))
    return results


def load_lvis_detections(path, gt_dataset, category_mapping="auto", gt_source="annotations"):
    """LVIS results (1-based dataset category ids) from a results JSON or Detectron2's
    ``instances_predictions.pth``, validated against ``gt_dataset``.

    For a ``.pth`` file the 0-based contiguous category ids are mapped with
    ``category_mapping``: "auto"/"sorted" (index into the sorted category ids of the annotation
    file, as Detectron2's loaders do; id + 1 for LVIS), "plus1", or a JSON file (list or
    object, contiguous id -> dataset id).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Detections file '{path}' does not exist")
    cat_ids = [c["id"] for c in gt_dataset["categories"]]
    if path.endswith((".pth", ".pt", ".pkl")):
        results = _load_pth(path, cat_ids, category_mapping)
    else:
        results = _read_json(path, "Detections file")
        if isinstance(results, dict) and "annotations" in results:
            raise DetectionFileError(
                f"Detections file '{path}' looks like an annotation file (it has "
                "'annotations'); pass LVIS results (a list) or instances_predictions.pth"
            )
    return validate_lvis_results(results, gt_dataset, path, gt_source)


def evaluate_detections_file(
    gt_json,
    detections,
    output_dir=None,
    iou_types=None,
    engine="fast",
    train_json=None,
    compare_dirs=(),
    compare_labels=None,
    max_dets=300,
    category_mapping="auto",
    log=None,
):
    """Evaluate a saved detections file against an annotation file, without the model.

    Args:
        gt_json: LVIS or COCO-format annotation file.
        detections: LVIS results JSON or Detectron2's ``instances_predictions.pth``.
        output_dir: where the per-class table, metrics and plots go (nothing written if None).
        iou_types: tasks ("bbox", "segm"); default: those the detections support (both for
            an empty file when the annotations have masks).
        train_json: training annotation file whose counts give the groups (and the table's
            counts) of categories; needed when ``gt_json`` has neither ``frequency`` nor
            ``image_count`` fields.
        compare_dirs: earlier result folders to compare with in ``comparison_<task>.png``.

    Returns:
        (results, per_class, outputs): task -> metrics (%), task -> {category id: AP}, and
        :func:`balms_det.evaluation.report.write_report`'s dict (empty without output_dir).
    """
    log = log or logger
    gt_json = os.fspath(gt_json)
    gt = load_gt_dataset(gt_json)
    train_counts = None
    if train_json:
        from ..class_counts import counts_from_annotation_file

        info, _ = counts_from_annotation_file(os.fspath(train_json))
        train_counts = {c["id"]: c for c in info}
    prepare_gt_dataset(
        gt,
        train_counts,
        gt_json,
        hint="pass --train-json (the training annotation file) to derive them",
    )
    results = load_lvis_detections(detections, gt, category_mapping, gt_json)
    if iou_types:
        tasks = tuple(iou_types)
        bad = [t for t in tasks if t not in ("bbox", "segm")]
        if bad:
            raise ValueError(f"Unknown iou types {bad}; choose among bbox, segm")
        need = {"bbox": "bbox", "segm": "segmentation"}
        for t in tasks:
            lacking = [i for i, r in enumerate(results) if need[t] not in r]
            if lacking and not (t == "bbox" and all("segmentation" in r for r in results)):
                raise DetectionFileError(
                    f"Detections file '{detections}': {len(lacking)} results lack "
                    f"'{need[t]}' needed for {t} evaluation (first: #{lacking[0]})"
                )
    else:
        tasks = tasks_of_results(results)
        if not results and any("segmentation" in a for a in gt["annotations"]):
            tasks = ("bbox", "segm")
    log.info(
        "Evaluating %d detections of '%s' against '%s' (%s)",
        len(results),
        detections,
        gt_json,
        ", ".join(tasks),
    )
    res, per_class = evaluate_tasks(gt, results, tasks, max_dets, engine, log)
    outputs = {}
    if output_dir:
        outputs = write_report(
            output_dir, gt, res, per_class, train_counts, compare_dirs, compare_labels, log
        )
    return res, per_class, outputs


# ------------------------------------------------------------------------------------------
# The evaluator
# ------------------------------------------------------------------------------------------
class BalmsLVISEvaluator(LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` with a working, faster metric computation and long-tail
    extras. Results (in %): AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR, plus ``hmean``,
    ``gmean``, ``min`` of per-class AP and ``num_zero`` (classes at zero AP); NaN where
    lvis-api leaves a metric undefined. With an output folder it also writes
    ``per_class_ap.csv/json``, ``lvis_metrics.json`` and ``per_class_ap_<task>.png`` (and
    ``comparison_<task>.png`` when ``compare_dirs`` are given)."""

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
        compare_dirs=(),
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir, max_dets_per_image: as LVISEvaluator.
            train_dataset_names: registered training datasets whose image counts define the
                frequency groups of categories that lack an LVIS ``frequency`` field (and the
                training counts of the per-class table when the categories lack them).
            engine: "fast" or "lvis-api".
            compare_dirs: earlier result folders (holding ``per_class_ap.json``) to compare
                this evaluation with in ``comparison_<task>.png``.
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
        if meta.get("thing_classes", None) is None:
            # a COCO-format dataset registered without metadata: loading it sets thing_classes
            # and thing_dataset_id_to_contiguous_id, needed to map predicted ids back
            DatasetCatalog.get(dataset_name)
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        self._engine = engine
        self._dataset_name = dataset_name
        self._train_dataset_names = list(train_dataset_names)
        self._compare_dirs = list(compare_dirs)
        self._train_counts_cache = None
        self._per_class = {}
        cats = self._lvis_api.dataset["categories"]
        derive = any("frequency" not in c for c in cats)
        counts = None
        if derive and (self._train_dataset_names or _counts_from_categories(cats) is None):
            counts = self._train_counts()
        prepare_gt_dataset(self._lvis_api.dataset, counts, json_file)
        if derive:
            self._logger.info(
                "Frequency groups of '%s' derived from training image counts of %s",
                dataset_name,
                self._train_dataset_names or "its categories",
            )

    def _train_counts(self):
        """{category id: {"image_count", "instance_count"}} summed over the training datasets."""
        if self._train_counts_cache is not None:
            return self._train_counts_cache
        from ..class_counts import counts_from_dataset_dicts

        if not self._train_dataset_names:
            raise ValueError(
                f"Categories of '{self._dataset_name}' have no LVIS 'frequency' field: pass "
                "train_dataset_names so that groups can be derived from training image counts"
            )
        counts = {}
        for name in self._train_dataset_names:
            dicts = DatasetCatalog.get(name)  # sets the metadata of COCO-format datasets
            meta = MetadataCatalog.get(name)
            id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
            classes = meta.get("thing_classes", None)
            if id_map is None:  # LVIS: contiguous 0-based ids are dataset ids - 1
                if classes is None:
                    raise ValueError(f"Training dataset '{name}' has no thing_classes metadata")
                id_map = {k + 1: k for k in range(len(classes))}
            c = counts_from_dataset_dicts(dicts, len(id_map))
            for cid, k in id_map.items():
                cur = counts.setdefault(cid, {"image_count": 0, "instance_count": 0})
                cur["image_count"] += int(c.image_count[k])
                cur["instance_count"] += int(c.instance_count[k])
        self._train_counts_cache = counts
        return self._train_counts_cache

    def _table_counts(self):
        """Training counts for the per-class table: None (the categories carry them), the
        training datasets' counts, or None when neither is available (counts left empty)."""
        if _counts_from_categories(self._lvis_api.dataset["categories"]) is not None:
            return None
        if self._train_dataset_names:
            return self._train_counts()
        return None

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
        results, per_class = evaluate_tasks(
            self._lvis_api.dataset,
            lvis_results,
            tasks,
            self._max_dets_per_image,
            self._engine,
            self._logger,
        )
        self._results.update(results)
        self._per_class = per_class
        if self._output_dir:
            write_report(
                self._output_dir,
                self._lvis_api.dataset,
                results,
                per_class,
                self._table_counts(),
                self._compare_dirs,
                logger=self._logger,
                strict_compare=False,
            )
