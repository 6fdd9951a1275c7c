"""The tasks of an LVIS-protocol evaluation and their reported metrics, shared by the
training-time evaluator (:mod:`.lvis_evaluator`) and the offline driver (:mod:`.offline`); each
task is run by the engine (:mod:`balms_det.lvis_eval`) or by lvis-api itself (the reference).

Protocols and their tasks per iou type: "standard" (lvis-api, 300 detections per image) ->
"bbox", "segm"; "fixed" (AP-fixed, Dave et al. 2021: the top 10,000 detections per category)
-> "bbox_fixed", "segm_fixed"; "pool" (AP-pool: AP-fixed's detections, precision pooled over
the categories of "all", r, c, f; no per-class AP) -> "bbox_pool", "segm_pool"; "boundary"
(boundary AP of the masks, Cheng et al. 2021) -> "boundary". Mask tasks are computed without the
boxes (``ignore_boxes``) by both engines: APs / APm / APl are of mask areas, as Detectron2 and
Dave et al. evaluate masks. Metrics are in %, NaN where lvis-api leaves one undefined (-1).
See docs/EVALUATION.md. This module imports neither torch nor Detectron2.
"""

import copy
import logging
import math
from collections import Counter, OrderedDict, namedtuple

from ..longtail import GROUPS, assign_frequency, worst_class_metrics
from ..lvis_eval import (
    LVISGroundTruth,
    category_ap,
    check_detections,
    check_ground_truth,
    evaluate_protocols,
    read_json,
)
from ..utils import format_examples, markdown_table

__all__ = [
    "PROTOCOLS", "ENGINES", "SUMMARY_KEYS", "WORST_KEYS", "Task", "plan_tasks", "check_options",
    "prepare_gt_dataset", "task_metrics", "evaluate_tasks", "top_per_category",
    "counts_from_categories",
]  # fmt: skip

logger = logging.getLogger(__name__)

PROTOCOLS = ("standard", "fixed", "pool", "boundary")
ENGINES = ("fast", "lvis-api")
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl") + tuple("AP" + g for g in GROUPS)
WORST_KEYS = ("hmean", "gmean", "min", "num_zero")


class Task(namedtuple("Task", ["name", "iou_type", "protocol"])):
    """One evaluation: its name (the key of the results), the engine's iou type and
    protocol ("standard", "fixed" or "pool")."""

    @property
    def masks(self):
        return self.iou_type != "bbox"


def _task_of_name(name):
    if name == "boundary":
        return Task(name, "boundary", "standard")
    iou_type, _, protocol = name.partition("_")
    if iou_type not in ("bbox", "segm") or protocol not in ("", "fixed", "pool"):
        raise ValueError(
            f"Unknown evaluation task '{name}'; tasks are bbox, segm, bbox_fixed, segm_fixed, "
            "bbox_pool, segm_pool, boundary"
        )
    return Task(name, iou_type, protocol or "standard")


def check_options(engine, protocols, dets_per_category):
    """ValueError for an unknown engine or protocol, or no protocol, or a budget below 1."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    if engine not in ENGINES:
        raise ValueError(f"Unknown LVIS evaluation engine '{engine}'; choose one of {ENGINES}")
    if bad or not protocols:
        raise ValueError(f"Unknown evaluation protocols {bad}; choose among {list(PROTOCOLS)}")
    if int(dets_per_category) < 1:
        raise ValueError(f"the budget per category must be at least 1, not {dets_per_category}")


def plan_tasks(iou_types, protocols=("standard",)):
    """The tasks of ``protocols`` (see the module doc) for the iou types ("bbox", "segm").

    Raises ValueError for an unknown protocol or iou type, and for "boundary" without "segm"
    (boundary AP evaluates masks)."""
    bad = [t for t in iou_types if t not in ("bbox", "segm")]
    if bad:
        raise ValueError(f"Unknown iou types {bad}; choose among bbox, segm")
    iou_types = tuple(t for t in ("bbox", "segm") if t in iou_types)
    protocols = tuple(protocols)
    check_options("fast", protocols, 1)
    if "boundary" in protocols and "segm" not in iou_types:
        raise ValueError(
            "The boundary protocol evaluates masks: the detections have no segmentation, or "
            "segm is not among the iou types"
        )
    tasks = [Task("boundary", "boundary", "standard")] if "boundary" in protocols else []
    for p in ("pool", "fixed", "standard"):
        if p in protocols:
            tasks[:0] = [Task(t if p == "standard" else f"{t}_{p}", t, p) for t in iou_types]
    return tasks


def _as_tasks(tasks):
    return [t if isinstance(t, Task) else _task_of_name(t) for t in tasks]


# ------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------
def counts_from_categories(categories):
    """{id: {"image_count", "instance_count"}} from the categories' own fields (LVIS has the
    training counts there), or None when some category lacks ``image_count``."""
    if not categories or any("image_count" not in c for c in categories):
        return None
    return {
        c["id"]: {"image_count": c["image_count"], "instance_count": c.get("instance_count")}
        for c in categories
    }


def prepare_gt_dataset(dataset, train_counts=None, source=None, hint=""):
    """Make an LVIS- or COCO-format annotation dict evaluable with the LVIS protocol, in place:
    categories without an LVIS ``frequency`` get one from training image counts
    (``train_counts`` {id: {"image_count", ...}}, else the categories' ``image_count``) and the
    LVIS thresholds; images without ``neg_category_ids`` (COCO: exhaustive annotations) get
    every category they do not hold, a missing ``not_exhaustive_category_ids`` is empty; crowd
    annotations (``iscrowd``, which lvis-api does not read) are marked ``ignore``. Returns
    ``dataset``; LVISInputError where it breaks a ground-truth rule (``check_ground_truth``),
    ValueError (naming ``source``, ending with ``hint``) where groups lack counts.
    """
    check_ground_truth(dataset, source, sizes=False)
    cats = dataset["categories"]
    where = f" of '{source}'" if source else ""
    if any("frequency" not in c for c in cats):
        counts = train_counts if train_counts is not None else counts_from_categories(cats)
        if counts is None:
            raise ValueError(
                f"Categories{where} have no LVIS 'frequency' field and no training image "
                f"counts to derive it from{': ' + hint if hint else ''}"
            )
        assign_frequency(cats, {cid: v["image_count"] for cid, v in counts.items()})
    fields = ("neg_category_ids", "not_exhaustive_category_ids")
    if not all(f in im for im in dataset["images"] for f in fields):
        all_ids, present = sorted(c["id"] for c in cats), {}
        for a in dataset["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        for im in dataset["images"]:
            if "neg_category_ids" not in im:
                im["neg_category_ids"] = [c for c in all_ids if c not in present.get(im["id"], ())]
            im.setdefault("not_exhaustive_category_ids", [])
    for a in dataset["annotations"]:
        if a.get("iscrowd", 0) and "ignore" not in a:
            a["ignore"] = 1
    return dataset


# ------------------------------------------------------------------------------------------
# One task
# ------------------------------------------------------------------------------------------
def top_per_category(results, k):
    """Dave et al.'s AP-fixed filter: the top-``k`` scores of each category (ties in input
    order), the results listed category after category in order of first appearance."""
    by_cat = OrderedDict()
    for r in results:
        by_cat.setdefault(r["category_id"], []).append(r)
    out = []
    for anns in by_cat.values():
        out.extend(sorted(anns, key=lambda r: r["score"], reverse=True)[:k])
    return out


def _lvis_api(gt_dataset, gt_index, results, task, max_dets, dets_per_category, source):
    """(summary, per_class, num_dets, short, empty) of lvis-api itself: the standard protocol,
    or AP-fixed run as Dave et al.'s script runs it; mask tasks without the boxes, as the
    engine runs them."""
    from lvis import LVIS

    from .lvis_compat import run_lvis_api

    if task.protocol == "pool" or task.iou_type == "boundary":
        raise ValueError(
            f"The lvis-api engine evaluates the standard and fixed protocols; '{task.name}' is "
            "computed by the fast engine only"
        )
    check_detections(gt_index, results, task.iou_type, ignore_boxes=task.masks, source=source)
    short = 0
    if task.protocol == "fixed":
        counts = Counter(r["category_id"] for r in results)
        short = sum(1 for c in gt_index.cat_ids.tolist() if counts[c] < dets_per_category)
        results, max_dets = top_per_category(results, dets_per_category), -1
    gt = LVIS.__new__(LVIS)  # an LVIS object over an in-memory dict, without reading a file
    gt.logger = logger
    gt.dataset = copy.deepcopy(gt_dataset)
    gt._create_index()
    ev = run_lvis_api(gt, results, task.iou_type, max_dets=max_dets, ignore_boxes=task.masks)
    per_class = category_ap(ev.eval["precision"], ev.params.cat_ids)
    num_dets = dict.fromkeys(ev.params.cat_ids, 0)
    for (_, cat_id), dts in ev._dts.items():
        num_dets[cat_id] += len(dts)
    return dict(ev.get_results()), per_class, num_dets, short, None


def _fast(gt_index, results, task, protocols, max_dets, dets_per_category, workers):
    """{protocol: (summary, per_class, num_dets, short, empty)} of the engine for ``task``'s
    iou type and ``protocols`` (read once); ``short``: categories with fewer than
    ``dets_per_category`` detections kept (AP-fixed / AP-pool want that many); ``empty``:
    {category id: its detections (kept, where lvis-api evaluates them) of area 0}."""
    k = dets_per_category
    evs = evaluate_protocols(
        gt_index, results, task.iou_type, protocols, max_dets=max_dets,
        dets_per_category=dets_per_category, ignore_boxes=task.masks, workers=workers,
    )  # fmt: skip
    out = {}
    for protocol, ev in evs.items():
        per_class = ev.per_category_ap() if protocol != "pool" else None
        num_dets = dict(zip(ev.cat_ids, ev.num_dets.tolist()))
        empty = dict(zip(ev.cat_ids, ev.num_empty.tolist()))
        short = int((ev.num_kept < k).sum())
        out[protocol] = dict(ev.results), per_class, num_dets, short, empty
    return out


def _pct(v):
    v = float(v)
    return float("nan") if v == -1 or math.isnan(v) else v * 100


def task_metrics(summary, per_class):
    """The reported metrics (%) of one task: AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR
    (at the task's cap), and, from per-class AP (None for AP-pool), hmean, gmean, min
    (worst-class metrics, a zero AP replaced by 1e-3 in the means) and num_zero."""
    res = OrderedDict((k, _pct(summary[k])) for k in SUMMARY_KEYS)
    ar = [k for k in summary if k.startswith("AR@")]
    if ar:
        res["AR"] = _pct(summary[ar[0]])
    if per_class is not None:
        worst = worst_class_metrics(per_class.values())
        res.update({k: worst[k] * 100 for k in ("hmean", "gmean", "min")})
        res["num_zero"] = float(worst["num_zero"])
    return res


def _log_task(log, task, engine, res, per_class, num_dets, dets_per_category, short, empty):
    table = markdown_table([list(res.values())], list(res), floatfmt=".3f")
    log.info(f"Evaluation results for {task.name} ({engine} engine):\n{table}")
    if per_class is not None:
        silent = [c for c, ap in per_class.items() if not math.isnan(ap) and num_dets[c] == 0]
        hollow = [c for c in silent if (empty or {}).get(c)]
        none = [c for c in silent if c not in hollow]
        if none:
            where = " in the images that annotate them" if empty is not None else " evaluated"
            log.info(
                f"{task.name}: {len(none)} categories with ground truth have no detection{where}"
                f" (AP 0, num_dets_{task.name} 0 in the per-class table): {format_examples(none)}"
            )
        if hollow:
            shown = format_examples(f"{c} ({empty[c]} detections)" for c in hollow)
            log.info(
                f"{task.name}: {len(hollow)} categories with ground truth have detections, all "
                f"with empty {'masks' if task.masks else 'boxes'} (area 0: lvis-api does not "
                f"evaluate them; AP 0): {shown}"
            )
    if task.protocol != "standard" and short:
        k = dets_per_category
        log.info(
            f"{task.name}: {short} of {len(num_dets)} categories have fewer than {k} detections "
            f"in the results; AP-fixed and AP-pool expect {k} per category (raise "
            "TEST.DETECTIONS_PER_IMAGE and lower MODEL.ROI_HEADS.SCORE_THRESH_TEST)"
        )


def evaluate_tasks(
    gt_dataset,
    results,
    tasks,
    max_dets=300,
    engine="fast",
    log=None,
    dets_per_category=10000,
    source=None,
    gt_source=None,
    workers=None,
    topk_results=None,
):
    """Evaluate LVIS results (1-based dataset category ids: a list, or a results file, streamed
    by the fast engine) against the prepared annotation dict (:func:`prepare_gt_dataset`; not
    modified) for every task (:class:`Task` or its name), with ``engine`` "fast" or "lvis-api"
    (standard and fixed protocols only); ``max_dets``: the standard protocol's per-image cap;
    ``dets_per_category``: AP-fixed's and AP-pool's budget; ``source`` / ``gt_source``: file
    names for messages; ``topk_results``: what AP-fixed / AP-pool evaluate where it is not
    ``results`` (the training-time evaluator's per-category top-k).

    Returns (results, per_class, num_dets): task -> :func:`task_metrics`; task -> {category id:
    AP in [0, 1] or NaN} (tasks with per-class AP); task -> {category id: detections evaluated}.
    """
    log = log or logger
    check_options(engine, [t.protocol for t in _as_tasks(tasks)] or ["standard"], 1)
    gt_index = LVISGroundTruth(gt_dataset, source=gt_source)
    out, per_class_by_task, num_dets_by_task = OrderedDict(), {}, {}
    tasks = _as_tasks(tasks)

    def dets_of(task):
        return results if task.protocol == "standard" or topk_results is None else topk_results

    fast = {}  # (detections, iou type) -> the fast engine's results of all their protocols
    for task in tasks:
        dets = dets_of(task)
        listed = dets
        if engine == "lvis-api" and not isinstance(dets, (list, tuple)):
            listed = read_json(dets, "Detections file")
        if engine == "lvis-api" and listed:
            got = _lvis_api(gt_dataset, gt_index, listed, task, max_dets, dets_per_category, source)
        else:
            # lvis-api crashes on an empty result list (LVISResults reads results[0]); without
            # detections every category with ground truth has AP 0, which the engine (equal to
            # lvis-api) gives
            key = (id(dets), task.iou_type)
            if key not in fast:
                protocols = [
                    t.protocol for t in tasks if t.iou_type == task.iou_type and dets_of(t) is dets
                ]
                fast[key] = _fast(
                    gt_index, dets, task, protocols, max_dets, dets_per_category, workers
                )
            got = fast[key][task.protocol]
        summary, per_class, num_dets, short, empty = got
        res = task_metrics(summary, per_class)
        _log_task(log, task, engine, res, per_class, num_dets, dets_per_category, short, empty)
        out[task.name] = res
        if per_class is not None:
            per_class_by_task[task.name] = per_class
        num_dets_by_task[task.name] = num_dets
    return out, per_class_by_task, num_dets_by_task
