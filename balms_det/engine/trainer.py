"""``BalmsTrainer``: Detectron2's ``DefaultTrainer`` with balms-det's evaluation, decoupled
training, the Meta Reweigher hook, CPU multi-process training, evaluation with the main
process's buffers, and an exact resume (the data stream continues where it stopped; a damaged
last checkpoint is skipped). ``tools/train_net.py`` runs it."""

import logging
import os
import weakref

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_balms_config
from ..data.annotation_checks import check_dicts_when_loaded, trust_datasets
from ..data.datasets import check_dataset_files, register_datasets_from_cfg
from ..data.resumable import build_resumable_train_loader
from ..data.training_set import shared_training_sets, training_set_from_cfg
from ..distributed import group_for
from ..evaluation.lvis_evaluator import BalmsLVISEvaluator
from ..modeling.roi_heads import resolve_class_counts
from ..utils import amp_dtype, markdown_table
from .buffer_sync import broadcast_buffers
from .checkpoint import BalmsCheckpointer
from .decoupled import FrozenNormHook, freeze_except
from .meta_reweigher import MetaReweigher
from .preflight import check_dataset_images, check_frozen_start, preflight_cfg, resolve_num_classes
from .resume import DataStreamHook, resume_checkpoint

__all__ = [
    "BalmsTrainer",
    "build_ddp_model",
    "merged_cfg",
    "setup_cfg",
    "format_results",
    "print_summary",
    "print_long_tail_table",
]

logger = logging.getLogger("balms_det")


def build_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, made safe for a CPU model: ``device_ids=None`` (DDP
    rejects device ids for CPU modules; Detectron2 always passes the local rank) and, under an
    NCCL default group (Detectron2's ``launch`` picks NCCL whenever CUDA is available, also
    with ``MODEL.DEVICE cpu``), Detectron2's gloo group as DDP's process group (NCCL carries
    CUDA tensors only)."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
        group = group_for("cpu")
        if group is not None:
            kwargs.setdefault("process_group", group)
    return create_ddp_model(model, **kwargs)


class BalmsTrainer(DefaultTrainer):
    """DefaultTrainer + LVIS long-tail evaluation, decoupled training and the Meta Reweigher."""

    def __init__(self, cfg):
        # DefaultTrainer's construction, step for step, except that the DDP model comes from
        # build_ddp_model (CPU processes); Detectron2 offers no hook for that one call.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # One read of the training set (balms_det/data/training_set.py): inside this block the
        # class counts, the train loader and the Meta Reweigher's meta set share one
        # TrainingSet of DATASETS.TRAIN, loaded by whichever asks first.
        if not cfg.BALMS.DATASETS.CHECK_ANNOTATIONS:
            trust_datasets([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
        with shared_training_sets():
            preflight_cfg(cfg)  # the data checks, before the model (engine/preflight.py)
            model = self.build_model(cfg)
            check_frozen_start(model, cfg.MODEL.WEIGHTS, cfg.BALMS.ALLOW_FROZEN_RANDOM_INIT)
            resolve_class_counts(model)  # the training data's counts, before the data loader
            optimizer = self.build_optimizer(cfg, model)
            data_loader = self.build_train_loader(cfg)
            model = build_ddp_model(model, broadcast_buffers=False)
            if cfg.SOLVER.AMP.ENABLED:  # Detectron2's AMPTrainer, at BALMS.AMP_DTYPE
                precision = amp_dtype(cfg.BALMS.AMP_DTYPE)
                self._trainer = AMPTrainer(model, data_loader, optimizer, precision=precision)
            else:
                self._trainer = SimpleTrainer(model, data_loader, optimizer)
            self.scheduler = self.build_lr_scheduler(cfg, optimizer)
            self.checkpointer = BalmsCheckpointer(
                model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
            )
            self.start_iter = 0
            self.max_iter = cfg.SOLVER.MAX_ITER
            self.cfg = cfg
            self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Detectron2's ``resume_or_load``, except that ``--resume`` continues from the
        checkpoint the main process chose for every process, falling back to the newest one
        that can be resumed from when the last one is damaged (warning naming it), and with
        the training data stream's position (``DataStreamHook``)."""
        found = resume_checkpoint(self.checkpointer) if resume else None
        if found is None:
            return super().resume_or_load(resume=False)
        self.checkpointer.load(found)
        self.start_iter = self.iter + 1

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
        hooks = super().build_hooks()
        # before Detectron2's hooks: seeds each step and keeps the data stream's position (the
        # balms hooks inserted before it draw no random number in before_step)
        seed = self.cfg.SEED if self.cfg.SEED >= 0 else None
        hooks.insert(0, DataStreamHook(self._trainer.data_loader, seed=seed))
        if self.cfg.BALMS.TRAINABLE_PARAMS:
            hooks.insert(0, FrozenNormHook(self.model))
        if self.cfg.BALMS.META.ENABLED:
            # first, so that its after_step (the meta step) runs before the IterationTimer
            # stops the clock and before the checkpointer saves its state
            hooks.insert(0, MetaReweigher(self.cfg, self.model, self.optimizer))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader, on the training set read once
        (:func:`~balms_det.data.training_set.training_set_from_cfg`, shared with the counts
        and the meta set while the trainer is built). ``RepeatFactorTrainingSampler`` gets the
        set's repeat factors (Detectron2's, from its class index, no second pass); any other
        sampler is Detectron2's choice for ``DATALOADER.SAMPLER_TRAIN``."""
        check_dataset_files(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        train = training_set_from_cfg(cfg)
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
            factors = train.repeat_factors(
                cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.get("REPEAT_SQRT", True)
            )
            logger.info("Using training sampler RepeatFactorTrainingSampler")
            sampler = RepeatFactorTrainingSampler(factors, seed=cfg.SEED)
        return build_resumable_train_loader(cfg, dataset=train, sampler=sampler)  # resumable

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files([dataset_name], "DATASETS.TEST")
        check_dicts_when_loaded([dataset_name])
        check_dataset_images(dataset_name, "DATASETS.TEST")
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's ``test``, on every process with the main process's buffers (the
        checkpoint's BatchNorm statistics), see ``balms_det.engine.buffer_sync``."""
        broadcast_buffers(model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "lvis":
            return BalmsLVISEvaluator.from_config(cfg, dataset_name, output_folder)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}'"
        )


def merged_cfg(config_file="", opts=()):
    """Detectron2's defaults with balms-det's keys, merged from a file and overrides (nothing
    registered, not frozen)."""
    cfg = get_cfg()
    add_balms_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def setup_cfg(config_file="", opts=(), args=None):
    """Config with balms-det keys, merged from a file and overrides; registers the datasets of
    ``BALMS.DATASETS.REGISTER`` and the synthetic one with the config's parameters, and takes
    ``MODEL.ROI_HEADS.NUM_CLASSES`` 0 from the training set's categories. Calls Detectron2's
    ``default_setup`` when ``args``."""
    cfg = merged_cfg(config_file, opts)
    amp_dtype(cfg.BALMS.AMP_DTYPE)  # a bad value fails here, naming the key
    register_datasets_from_cfg(cfg)
    note = resolve_num_classes(cfg)  # NUM_CLASSES 0: the training set's categories
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)  # Detectron2's and fvcore's loggers, config dump, seeds
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="balms_det")
    if note:
        logger.info(note)
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
    return markdown_table([[r.get(k) for k in keys] for r in rows], keys)


def print_long_tail_table(results, test_names, output_dir):
    """Print the long-tail table of ``results`` (of the datasets ``test_names``) and where the
    outputs went (main process only)."""
    if comm.is_main_process():
        names = [test_names] if isinstance(test_names, str) else list(test_names)
        name = names[0] if len(names) == 1 else ""
        print("\nLong-tail results (%):\n" + format_results(results, name), flush=True)
        print(f"Outputs (checkpoints, metrics, predictions): {output_dir}")


def print_summary(cfg, results):
    """:func:`print_long_tail_table` of a yacs config's DATASETS.TEST and OUTPUT_DIR."""
    print_long_tail_table(results, cfg.DATASETS.TEST, cfg.OUTPUT_DIR)
