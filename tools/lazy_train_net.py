#!/usr/bin/env python
"""Train and evaluate a LazyConfig (Python config) with balms-det: Detectron2's
``tools/lazyconfig_train_net.py`` pattern (``instantiate``, SimpleTrainer / AMPTrainer, hooks)
plus the ``train.balms`` procedures: decoupled training (``train.balms.trainable_params``) and
the Meta Reweigher (``train.balms.meta``), your own COCO/LVIS-format files
(``train.balms.datasets``) and the checks before the first iteration, see
``balms_det/engine/lazy.py``. Prints the long-tail results table as ``tools/train_net.py``.

python tools/lazy_train_net.py --config-file configs/lazy/mask_rcnn_R18_FPN_synthetic_tiny.py
python tools/lazy_train_net.py --config-file configs/lazy/mask_rcnn_R_50_FPN_1x_lvis_v1_balms.py \
    --num-gpus 8
# decoupled stage 2 (classifier only) with the Meta Reweigher, from a stage-1 checkpoint:
python tools/lazy_train_net.py --config-file configs/lazy/mask_rcnn_R_50_FPN_1x_lvis_v1_balms.py \
    --num-gpus 8 train.init_checkpoint=output/lazy_lvis_v1_balms_r50/model_final.pth \
    'train.balms.trainable_params=[cls_score]' train.balms.meta.enabled=True
python tools/lazy_train_net.py --config-file ... --eval-only train.init_checkpoint=model.pth
# your own data (docs/OWN_DATA.md):
python tools/lazy_train_net.py --config-file configs/own_data/lazy_cpu_r18.py \
    'train.balms.datasets=[[own_train,data/train.json,data/train_images],[own_val,data/val.json,data/val_images]]'
"""

import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from balms_det.data.training_set import shared_training_sets
from balms_det.distributed import hide_cuda_for_cpu_processes
from balms_det.engine.buffer_sync import broadcast_buffers
from balms_det.engine.checkpoint import BalmsCheckpointer
from balms_det.engine.launching import argument_parser, dist_url
from balms_det.engine.lazy import (
    balms_hooks,
    freeze_trainable,
    preflight_lazy,
    register_lazy_datasets,
    resumable_train_loader,
)
from balms_det.engine.resume import DataStreamHook, resume_checkpoint
from balms_det.engine.trainer import build_ddp_model, print_long_tail_table
from balms_det.utils import amp_dtype

logger = logging.getLogger("balms_det")


def do_test(cfg, model):
    """Inference on ``dataloader.test`` with ``dataloader.evaluator`` (every process with the
    main process's buffers: the checkpoint's BatchNorm statistics); ``{}`` without one."""
    if "evaluator" not in cfg.dataloader:
        return {}
    broadcast_buffers(model)
    res = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and res:
        print_csv_format(res)
    return res or {}


def build_trainer(cfg):
    """The model, optimizer, data loader, trainer and hooks of ``cfg``; returns
    ``(trainer, checkpointer)``. The training loader is resumable (``resumable_train_loader``).
    The balms hooks come first (the Meta Reweigher's meta step runs before the timer stops and
    before the checkpointer saves its state), then ``DataStreamHook`` (it seeds each step).
    Built inside ``shared_training_sets``: every ``L(training_set)(...)`` of the config (the
    loader's dataset, the sampler's repeat factors, the counts, the meta set) is one read."""
    with shared_training_sets():
        return _build_trainer(cfg)


def _build_trainer(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    freeze_trainable(cfg, model)  # before the optimizer: it skips frozen parameters
    preflight_lazy(cfg, model)  # classes, image files, frozen layers: before any iteration
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = resumable_train_loader(cfg)
    model = build_ddp_model(model, **cfg.train.ddp)
    if cfg.train.amp.enabled:  # train.amp.precision: "float16" (Detectron2's) or "bfloat16"
        precision = amp_dtype(cfg.train.amp.get("precision", "float16"), "train.amp.precision")
        trainer = AMPTrainer(model, train_loader, optimizer, precision=precision)
    else:
        trainer = SimpleTrainer(model, train_loader, optimizer)
    checkpointer = BalmsCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    seed = int(cfg.train.get("seed", -1))

    def test_and_keep():
        trainer.last_eval_results = do_test(cfg, model)
        return trainer.last_eval_results

    trainer.last_eval_results = {}
    trainer.register_hooks(
        balms_hooks(cfg, model, optimizer)
        + [
            # seeds each step and keeps the data stream's position (the balms hooks before it
            # draw no random number in before_step)
            DataStreamHook(train_loader, seed=seed if seed >= 0 else None),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main
                else None
            ),
        ]
    )
    return trainer, checkpointer


def do_train(cfg, resume=False):
    """Train ``cfg``; returns the trainer (``trainer.last_eval_results``: the last
    evaluation). ``resume`` continues from the newest readable checkpoint of
    ``train.output_dir``, chosen by the main process for all (model, optimizer, iteration, the
    data stream's position and the Meta Reweigher's state), else the model starts from
    ``train.init_checkpoint`` (e.g. the stage-1 model of a decoupled stage 2).
    """
    trainer, checkpointer = build_trainer(cfg)
    found = resume_checkpoint(checkpointer) if resume else None
    if found is not None:
        checkpointer.load(found)
        start_iter = trainer.iter + 1  # the checkpoint holds the iteration that finished
    else:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=False)
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def evaluate(cfg):
    """Evaluate ``train.init_checkpoint`` on ``dataloader.test``."""
    if not cfg.train.init_checkpoint:
        raise ValueError(
            "--eval-only needs trained weights: train.init_checkpoint is empty, so a randomly "
            "initialised model would be evaluated. Pass train.init_checkpoint=path/to/model.pth"
        )
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = build_ddp_model(model)
    BalmsCheckpointer(model).load(cfg.train.init_checkpoint)
    return do_test(cfg, model)


def setup(args):
    """The LazyConfig of ``args`` with its overrides, its ``train.balms.datasets`` registered;
    Detectron2's ``default_setup`` (loggers, config dump, seed) and balms-det's logger."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    register_lazy_datasets(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="balms_det")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        res = evaluate(cfg)
    else:
        res = do_train(cfg, resume=args.resume).last_eval_results
    if "evaluator" in cfg.dataloader:
        print_long_tail_table(res, cfg.dataloader.test.dataset.names, cfg.train.output_dir)
    # no process leaves before the main one has written every file
    comm.synchronize()
    return res


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    device = cfg.train.get("device", "cuda")
    hide_cuda_for_cpu_processes(device, args.num_gpus * args.num_machines)  # gloo, not NCCL
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=dist_url(args),  # a free port by default on one machine
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
