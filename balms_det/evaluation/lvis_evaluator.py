"""The training-time LVIS-protocol evaluator: ``BalmsLVISEvaluator`` is Detectron2's
``LVISEvaluator`` with its metrics computed by the engine (:mod:`balms_det.lvis_eval`), the
protocols of :mod:`.tasks`, LVIS groups for categories without ``frequency`` (from training image
counts), worst-class metrics, and a per-class table and plots in its output folder.

For AP-fixed / AP-pool it keeps, while predictions stream in, the top-k detections of every
category (memory: 2 x categories x k) and, per image, those the per-image cap can keep; with
several processes the main one merges the pools after Detectron2's gather and alone computes
the metrics (the others return nothing, as LVISEvaluator). Metrics are in % (NaN: undefined);
Detectron2's ``EvalHook`` stores them (``<task>/<metric>``), the evaluator adds nothing itself.
"""

import itertools
import json
import math
import os
from operator import itemgetter

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator

from ..utils import atomic_write
from .report import write_report
from .tasks import (
    check_options,
    counts_from_categories,
    evaluate_tasks,
    plan_tasks,
    prepare_gt_dataset,
)

__all__ = ["BalmsLVISEvaluator", "CategoryTopK", "RESULTS_JSON", "TOPK_RESULTS_JSON"]

RESULTS_JSON = "lvis_instances_results.json"
# the per-category top-k detections that AP-fixed / AP-pool evaluate
TOPK_RESULTS_JSON = "lvis_instances_results_topk.json"


class CategoryTopK:
    """The top-``k`` detections of every category over all that is added (score order, ties
    in the order added), in memory bounded by 2 k per category.

    Detections with a NaN or infinite score are all kept, so that the evaluation names them.
    """

    def __init__(self, k):
        self.k = int(k)
        self.items = {}  # category -> [((-score, seq), result)]
        self.floor = {}  # category -> the k-th best key after the last prune
        self.bad = []  # (seq, result) with a non-finite score
        self.seq = 0

    def add(self, results):
        for r in results:
            seq = self.seq
            self.seq += 1
            score = r["score"]
            if not math.isfinite(score):
                self.bad.append((seq, r))
                continue
            key = (-score, seq)
            cat = r["category_id"]
            floor = self.floor.get(cat)
            if floor is not None and key > floor:
                continue  # k better ones are already kept
            lst = self.items.setdefault(cat, [])
            lst.append((key, r))
            if len(lst) >= 2 * self.k:
                self._prune(cat)

    def _prune(self, cat):
        lst = self.items[cat]
        lst.sort(key=itemgetter(0))
        del lst[self.k :]
        self.floor[cat] = lst[-1][0]

    def results(self):
        """The kept detections, in the order they were added."""
        return [r for _, r in self._ranked()]

    def _ranked(self):
        kept = list(self.bad)
        for lst in self.items.values():
            kept.extend((key[1], r) for key, r in sorted(lst, key=itemgetter(0))[: self.k])
        kept.sort(key=itemgetter(0))
        return kept

    @classmethod
    def merge(cls, pools):
        """The top-k of several pools (one per process, in rank order), as if every detection
        had been added to one pool, rank after rank."""
        out = cls(pools[0].k if pools else 1)
        for pool in pools:
            out.add([r for _, r in pool._ranked()])
        return out


def _top_per_image(instances, k):
    """The detections of one image that a per-image cap of ``k`` can keep (top scores, ties
    in order; non-finite scores kept for the validator), in their order."""
    if len(instances) <= k:
        return instances
    finite = [i for i, r in enumerate(instances) if math.isfinite(r["score"])]
    top = sorted(finite, key=lambda i: -instances[i]["score"])[:k]
    keep = set(top) | (set(range(len(instances))) - set(finite))
    return [r for i, r in enumerate(instances) if i in keep]


def _check_annotations(dataset_name, meta, json_file):
    if json_file and not os.path.exists(json_file):
        if meta.get("synthetic_config", None) is not None:
            DatasetCatalog.get(dataset_name)  # generated on first use
        else:
            raise FileNotFoundError(
                f"Annotation file '{json_file}' of dataset '{dataset_name}' does not exist; "
                "see datasets/README.md for where to put it"
            )


class BalmsLVISEvaluator(LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` computed by the engine, with the challenge protocols and
    long-tail extras: per task (:mod:`.tasks`) AP, AP50, AP75, APs/m/l, APr/c/f, AR (%; NaN where
    undefined), and but for AP-pool ``hmean``, ``gmean``, ``min`` of per-class AP and
    ``num_zero``; with an output folder, the report of :func:`.report.write_report`."""

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
        protocols=("standard",),
        fixed_dets_per_category=10000,
        workers=None,
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir: as LVISEvaluator.
            max_dets_per_image: the per-image cap of the standard protocol (LVIS: 300).
            train_dataset_names: registered training datasets whose image counts define the
                frequency groups of categories that lack an LVIS ``frequency`` field (and the
                training counts of the per-class table when the categories lack them).
            engine: "fast" or "lvis-api".
            compare_dirs: earlier result folders (holding ``per_class_ap.json``) to compare
                this evaluation with in ``comparison_<task>.png``.
            protocols: any of "standard", "fixed", "pool", "boundary".
            fixed_dets_per_category: the per-category budget k of AP-fixed and AP-pool.
            workers: threads of the fast engine (default: up to 2).
        """
        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("json_file", None)
        _check_annotations(dataset_name, meta, json_file)
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        check_options(engine, protocols, fixed_dets_per_category)
        if meta.get("thing_classes", None) is None:
            # a COCO-format dataset registered without metadata: loading it sets thing_classes
            # and thing_dataset_id_to_contiguous_id, needed to map predicted ids back
            DatasetCatalog.get(dataset_name)
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
        )
        self._engine = engine
        self._protocols = protocols
        self._dets_per_category = int(fixed_dets_per_category)
        self._workers = workers
        self._dataset_name = dataset_name
        self._train_dataset_names = list(train_dataset_names)
        self._compare_dirs = list(compare_dirs)
        self._train_counts_cache = None
        self._per_class = {}
        self._topk = None
        cats = self._lvis_api.dataset["categories"]
        derive = any("frequency" not in c for c in cats)
        counts = None
        if derive and (self._train_dataset_names or counts_from_categories(cats) is None):
            counts = self._train_counts()
        prepare_gt_dataset(self._lvis_api.dataset, counts, json_file)
        if derive:
            self._logger.info(
                "Frequency groups of '%s' derived from training image counts of %s",
                dataset_name,
                self._train_dataset_names or "its categories",
            )

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        """The evaluator a balms-det config asks for (``BALMS.EVAL``; groups of custom datasets
        from ``DATASETS.TRAIN``)."""
        ev = cfg.BALMS.EVAL
        return cls(
            dataset_name,
            output_dir=output_dir,
            max_dets_per_image=ev.MAX_DETS_PER_IMAGE,
            train_dataset_names=cfg.DATASETS.TRAIN,
            engine=ev.ENGINE,
            protocols=tuple(ev.PROTOCOLS),
            fixed_dets_per_category=ev.FIXED_DETS_PER_CATEGORY,
        )

    def reset(self):
        super().reset()
        keeps = any(p in ("fixed", "pool") for p in self._protocols)  # AP-fixed / AP-pool
        self._topk = CategoryTopK(self._dets_per_category) if keeps else None

    def process(self, inputs, outputs):
        n0 = len(self._predictions)
        super().process(inputs, outputs)
        if self._topk is None:
            return
        for pred in self._predictions[n0:]:
            instances = pred.get("instances")
            if instances:
                self._topk.add(instances)
                pred["instances"] = _top_per_image(instances, self._max_dets_per_image)

    def evaluate(self):
        self._merged_topk = None
        if self._topk is not None:
            if self._distributed:
                comm.synchronize()
                pools = comm.gather(self._topk, dst=0)
                if comm.is_main_process():
                    self._merged_topk = CategoryTopK.merge(pools)
            else:
                self._merged_topk = self._topk
        return super().evaluate()

    def _train_counts(self):
        """{category id: {"image_count", "instance_count"}} summed over the training datasets."""
        if self._train_counts_cache is not None:
            return self._train_counts_cache
        from ..class_counts import dataset_class_counts

        if not self._train_dataset_names:
            raise ValueError(
                f"Categories of '{self._dataset_name}' have no LVIS 'frequency' field: pass "
                "train_dataset_names so that groups can be derived from training image counts"
            )
        counts = {}
        for name in self._train_dataset_names:
            # the counts the head took from the same read (cached), else one read of the set,
            # which also sets the metadata of COCO-format datasets
            c, _ = dataset_class_counts([name], need_instances=True)
            meta = MetadataCatalog.get(name)
            id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
            classes = meta.get("thing_classes", None)
            if id_map is None:  # LVIS: contiguous 0-based ids are dataset ids - 1
                if classes is None:
                    raise ValueError(f"Training dataset '{name}' has no thing_classes metadata")
                id_map = {k + 1: k for k in range(len(classes))}
            for cid, k in id_map.items():
                cur = counts.setdefault(cid, {"image_count": 0, "instance_count": 0})
                cur["image_count"] += int(c.image_count[k])
                cur["instance_count"] += int(c.instance_count[k])
        self._train_counts_cache = counts
        return self._train_counts_cache

    def _table_counts(self):
        """Training counts for the per-class table: None when the categories carry them, else
        the training datasets' counts (None without training datasets: counts left empty)."""
        cats = self._lvis_api.dataset["categories"]
        if counts_from_categories(cats) is None and self._train_dataset_names:
            return self._train_counts()
        return None

    def _to_dataset_ids(self, results):
        """Contiguous (0-based) category ids of Detectron2's results -> dataset ids, in place."""
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in results:
                r["category_id"] = reverse[r["category_id"]]
        else:  # LVIS: contiguous 0-based -> 1-based ids
            for r in results:
                r["category_id"] += 1

    def _save(self, name, results):
        path = os.path.join(self._output_dir, name)
        self._logger.info("Saving results to %s", path)
        atomic_write(path, lambda f: f.write(json.dumps(results)))
        return path

    def _eval_predictions(self, predictions):
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        iou_types = self._tasks or self._tasks_from_predictions(lvis_results)
        topk = None
        if self._merged_topk is not None:
            # copies: the standard list holds the same dicts, and ids are mapped once each
            topk = [dict(r) for r in self._merged_topk.results()]
            self._to_dataset_ids(topk)
        self._to_dataset_ids(lvis_results)
        if self._output_dir:  # the engine reads the files written (errors name them)
            lvis_results = self._save(RESULTS_JSON, lvis_results)
            if topk is not None:
                topk = self._save(TOPK_RESULTS_JSON, topk)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        protocols = self._protocols
        if "boundary" in protocols and "segm" not in iou_types:
            self._logger.warning("No masks in the predictions: boundary AP is not computed")
            protocols = tuple(p for p in protocols if p != "boundary") or ("standard",)
        results, per_class, num_dets = evaluate_tasks(
            self._lvis_api.dataset,
            lvis_results,
            plan_tasks(iou_types, protocols),
            max_dets=self._max_dets_per_image,
            engine=self._engine,
            log=self._logger,
            dets_per_category=self._dets_per_category,
            source=lvis_results if isinstance(lvis_results, str) else None,
            gt_source=self._metadata.get("json_file", None),
            workers=self._workers,
            topk_results=topk,
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
                num_dets_by_task=num_dets,
            )
