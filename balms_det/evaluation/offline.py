"""Evaluating a saved detections file against an annotation file, without the model
(:func:`evaluate_detections_file`, ``tools/evaluate_detections.py``): the file read by the engine
(a results JSON) or loaded without running code (Detectron2's ``instances_predictions.pth``),
the tasks planned, evaluated, and the report written.

This module imports neither torch nor Detectron2 (torch only to read a ``.pth`` file).
"""

import itertools
import logging
import os

from ..lvis_eval import LVISInputError, read_json, survey
from ..utils import format_examples
from .tasks import evaluate_tasks, plan_tasks, prepare_gt_dataset

__all__ = ["evaluate_detections_file", "load_lvis_detections", "is_pth"]

logger = logging.getLogger(__name__)


def _category_map(mapping, cat_ids, source):
    """contiguous (0-based) id -> dataset id, or None for "plus1" (id + 1)."""
    if mapping in ("auto", "sorted"):
        # Detectron2's loaders map the sorted dataset ids to 0..K-1 (for LVIS: id - 1)
        return dict(enumerate(sorted(cat_ids)))
    if mapping == "plus1":
        return None
    data = read_json(mapping, "Category mapping file")
    if isinstance(data, list):
        return dict(enumerate(data))
    if isinstance(data, dict):
        try:
            return {int(k): v for k, v in data.items()}
        except ValueError:
            pass
    raise LVISInputError(
        f"Category mapping file '{mapping}' must hold a list (contiguous id -> dataset id) or "
        f"an object {{contiguous id: dataset id}} (for '{source}')"
    )


def _load_pth(path, cat_ids, category_mapping):
    """LVIS results (dataset category ids) of Detectron2's saved predictions, unpickled without
    running code (``weights_only``: containers, numbers, strings and tensors only)."""
    import torch

    try:
        preds = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure: say which file)
        raise LVISInputError(
            f"Detections file '{path}' cannot be read as Detectron2's saved predictions (only "
            f"lists, dicts, numbers, strings and tensors are loaded, no code runs): {e}"
        ) from None
    if not isinstance(preds, list) or not all(isinstance(p, dict) for p in preds):
        raise LVISInputError(
            f"Detections file '{path}' must hold Detectron2's saved predictions: a list of "
            "{'image_id', 'instances'} dicts"
        )
    if preds and not any("instances" in p for p in preds):
        raise LVISInputError(
            f"Detections file '{path}' holds no 'instances' (proposals only?): nothing to "
            "evaluate"
        )
    results = list(itertools.chain(*[p.get("instances", []) for p in preds]))
    cmap = _category_map(category_mapping, cat_ids, path)
    bad = set()
    for i, r in enumerate(results):
        if not isinstance(r, dict) or "category_id" not in r:
            raise LVISInputError(f"Detections file '{path}': instance #{i} is not a result dict")
        k = r["category_id"]
        if cmap is None:
            r["category_id"] = k + 1
        elif k in cmap:
            r["category_id"] = cmap[k]
        else:
            bad.add(k)
    if bad:
        raise LVISInputError(
            f"Detections file '{path}' has contiguous category ids {format_examples(bad)} beyond "
            f"the {len(cmap)} categories of the annotation file (mapping '{category_mapping}')"
        )
    return results


def is_pth(path):
    return os.fspath(path).endswith((".pth", ".pt", ".pkl"))


def load_lvis_detections(path, gt_dataset, category_mapping="auto"):
    """LVIS results (1-based dataset category ids) of a results JSON or of Detectron2's
    ``instances_predictions.pth`` as a list (not checked: the evaluation does it).

    For a ``.pth`` file the 0-based contiguous category ids are mapped with
    ``category_mapping``: "auto"/"sorted" (index into the sorted category ids of the annotation
    file, as Detectron2's loaders do; id + 1 for LVIS), "plus1", or a JSON file (list or
    object, contiguous id -> dataset id).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Detections file '{path}' does not exist")
    if is_pth(path):
        return _load_pth(path, [c["id"] for c in gt_dataset["categories"]], category_mapping)
    results = read_json(path, "Detections file")
    if not isinstance(results, list):
        raise LVISInputError(
            f"Detections file '{path}' must hold a list of results, not a {type(results).__name__}"
        )
    return results


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
    protocols=("standard",),
    dets_per_category=10000,
    workers=None,
):
    """Evaluate a saved detections file against an annotation file, without the model.

    Args:
        gt_json: LVIS or COCO-format annotation file.
        detections: LVIS results JSON or Detectron2's ``instances_predictions.pth`` (its
            0-based category ids mapped by ``category_mapping``, see load_lvis_detections).
        output_dir: where the report goes (:func:`.report.write_report`; nothing without it).
        iou_types: "bbox" and / or "segm"; default: those the detections support (both for an
            empty file when the annotations have masks).
        engine: "fast" or "lvis-api" (the reference: standard and fixed protocols).
        train_json: training annotation file whose counts give the groups (and the table's
            counts); needed when ``gt_json`` has neither ``frequency`` nor ``image_count``.
        compare_dirs, compare_labels: earlier result folders to compare with.
        protocols, max_dets, dets_per_category, workers: see :func:`.tasks.evaluate_tasks`.

    Returns:
        (results, per_class, outputs): task -> metrics (%), task -> {category id: AP}, and
        :func:`.report.write_report`'s dict (empty without output_dir).
    """
    log = log or logger
    gt_json, detections = os.fspath(gt_json), os.fspath(detections)
    gt = read_json(gt_json, "Annotation file")
    train_counts = _train_counts(train_json)
    prepare_gt_dataset(
        gt, train_counts, gt_json, hint="pass --train-json (the training annotation file)"
    )
    results = detections  # a JSON file is read by the engine; a .pth is loaded into a list
    if is_pth(detections):
        results = load_lvis_detections(detections, gt, category_mapping)
    iou_types = iou_types or _iou_types(results, detections, gt)
    tasks = plan_tasks(iou_types, protocols)
    log.info(
        "Evaluating '%s' against '%s' (%s)", detections, gt_json, ", ".join(t.name for t in tasks)
    )
    res, per_class, num_dets = evaluate_tasks(
        gt, results, tasks, max_dets=max_dets, engine=engine, log=log,
        dets_per_category=dets_per_category, source=detections, gt_source=gt_json,
        workers=workers,
    )  # fmt: skip
    outputs = {}
    if output_dir:
        from .report import write_report

        outputs = write_report(
            output_dir, gt, res, per_class, train_counts, compare_dirs, compare_labels, log,
            num_dets_by_task=num_dets,
        )  # fmt: skip
    return res, per_class, outputs


def _iou_types(results, source, gt):
    """The iou types the results support (every result read and checked to know): "bbox"
    unless no result has a box, "segm" where some has a segmentation; without results, "bbox"
    and, where the annotations have masks, "segm"."""
    n, any_box, any_seg = survey(results, source)
    if n == 0:
        return (
            ("bbox", "segm") if any("segmentation" in a for a in gt["annotations"]) else ("bbox",)
        )
    return (("bbox",) if any_box else ()) + (("segm",) if any_seg else ())


def _train_counts(train_json):
    """{category id: counts} of a training annotation file, or None."""
    if not train_json:
        return None
    from ..class_counts import counts_from_annotation_file

    info, _ = counts_from_annotation_file(os.fspath(train_json))
    return {c["id"]: c for c in info}
