"""``BalmsTrainer``: Detectron2's ``DefaultTrainer`` with balms-det's evaluation, decoupled
training and checkpoint-layout conversion. ``tools/train_net.py`` runs it."""

import logging
import os
import weakref

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..config import add_balms_config
from ..data.datasets import check_dataset_files, register_synthetic_from_cfg
from ..evaluation.lvis_evaluator import BalmsLVISEvaluator
from ..modeling.roi_heads import convert_classifier_layout
from .decoupled import FrozenNormHook, freeze_except
from .meta_reweigher import MetaReweigher

__all__ = ["BalmsTrainer", "BalmsCheckpointer", "setup_cfg", "format_results", "print_summary"]

logger = logging.getLogger("balms_det")


def _predictor(model):
    model = getattr(model, "module", model)
    heads = getattr(model, "roi_heads", None)
    return getattr(heads, "box_predictor", None)


class BalmsCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that adapts a classifier saved in the other layout (softmax
    K+1 rows vs sigmoid K rows) before loading, so stage-2 heads load stage-1 weights."""

    def _load_model(self, checkpoint):
        predictor = _predictor(self.model)
        if predictor is not None and hasattr(predictor, "cls_score"):
            convert_classifier_layout(checkpoint["model"], predictor)
        return super()._load_model(checkpoint)


class BalmsTrainer(DefaultTrainer):
    """DefaultTrainer + LVIS long-tail evaluation, decoupled training and BalmsCheckpointer."""

    def train(self):
        """Train, then return the last evaluation's results (``{}`` when none ran)."""
        super().train()
        return getattr(self, "_last_eval_results", None) or {}

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.BALMS.TRAINABLE_PARAMS:
            freeze_except(model, cfg.BALMS.TRAINABLE_PARAMS)
        return model

    def build_hooks(self):
        # called from DefaultTrainer.__init__ once the checkpointer exists: swap it for ours
        # before the PeriodicCheckpointer hook takes it
        self.checkpointer = BalmsCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks = super().build_hooks()
        if self.cfg.BALMS.TRAINABLE_PARAMS:
            hooks.insert(0, FrozenNormHook(self.model))
        if self.cfg.BALMS.META.ENABLED:
            # after FrozenNormHook (norm modes) and IterationTimer (the meta step is timed)
            pos = next(
                (i + 1 for i, h in enumerate(hooks) if isinstance(h, d2_hooks.IterationTimer)),
                len(hooks),
            )
            hooks.insert(pos, MetaReweigher(self.cfg, self.model, self.optimizer))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        check_dataset_files(cfg.DATASETS.TRAIN)
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files([dataset_name])
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "lvis":
            return BalmsLVISEvaluator(
                dataset_name,
                output_dir=output_folder,
                max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                train_dataset_names=cfg.DATASETS.TRAIN,
                engine=cfg.BALMS.EVAL.ENGINE,
            )
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}'"
        )


def setup_cfg(config_file="", opts=(), args=None):
    """Config with balms-det keys, merged from a file and overrides; registers the synthetic
    dataset with the config's parameters. Calls Detectron2's ``default_setup`` when ``args``."""
    cfg = get_cfg()
    add_balms_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    register_synthetic_from_cfg(cfg)
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
    return cfg


def format_results(results, dataset_name=""):
    """A small table of the long-tail metrics of each dataset and task (bbox, segm).

    ``results`` is what ``DefaultTrainer.test`` returns: {dataset: {task: metrics}}, or
    {task: metrics} when there is a single test dataset (named by ``dataset_name``)."""
    if results and all(
        isinstance(m, dict) and all(not isinstance(v, dict) for v in m.values())
        for m in results.values()
    ):
        results = {dataset_name: results}
    rows = []
    for dataset, per_task in results.items():
        if not isinstance(per_task, dict):
            continue
        for task, metrics in per_task.items():
            if not isinstance(metrics, dict):
                continue
            row = {"dataset": dataset, "task": task}
            for k in ("AP", "AP50", "APr", "APc", "APf", "hmean", "gmean", "min"):
                if k in metrics:
                    row[k] = metrics[k]
            rows.append(row)
    if not rows:
        return "(no results)"
    keys = list(rows[0].keys())
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_summary(cfg, results):
    """Print the long-tail table and where the outputs went (main process only)."""
    if comm.is_main_process():
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) == 1 else ""
        print("\nLong-tail results (%):\n" + format_results(results, name), flush=True)
        print(f"Outputs (checkpoints, metrics, predictions): {os.path.abspath(cfg.OUTPUT_DIR)}")
