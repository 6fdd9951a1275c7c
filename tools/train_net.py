#!/usr/bin/env python
"""Train and evaluate Mask R-CNN with balms-det (Detectron2's DefaultTrainer pattern).

python tools/train_net.py --config-file configs/synthetic/main.yaml
python tools/train_net.py --config-file configs/lvis_balms_r50.yaml --num-gpus 8
python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
# check a multi-process set-up on CPU before renting GPUs:
python tools/train_net.py --config-file configs/synthetic/tiny.yaml --num-gpus 2 MODEL.DEVICE cpu
"""

import logging

from detectron2.engine import launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from balms_det.distributed import hide_cuda_for_cpu_processes
from balms_det.engine.checkpoint import BalmsCheckpointer
from balms_det.engine.launching import argument_parser, dist_url
from balms_det.engine.resume import resume_checkpoint
from balms_det.engine.trainer import BalmsTrainer, merged_cfg, print_summary, setup_cfg

logger = logging.getLogger("balms_det")


def evaluate(cfg, resume=False):
    """Evaluate MODEL.WEIGHTS (or the last checkpoint of OUTPUT_DIR with ``resume``) on
    DATASETS.TEST; every process runs inference, the main one writes results and metrics."""
    model = BalmsTrainer.build_model(cfg)
    # errors name a damaged file, and NaN / infinite weights are refused (not evaluated to AP 0)
    checkpointer = BalmsCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    weights = (resume_checkpoint(checkpointer) if resume else None) or cfg.MODEL.WEIGHTS
    if not weights:
        raise ValueError(
            "--eval-only needs trained weights: MODEL.WEIGHTS is empty, so a randomly "
            "initialised model would be evaluated. Pass MODEL.WEIGHTS path/to/model.pth (or "
            "--resume with a checkpoint in OUTPUT_DIR)"
        )
    checkpointer.load(weights)
    res = BalmsTrainer.test(cfg, model)
    if comm.is_main_process():
        verify_results(cfg, res)
    return res


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args)
    if args.eval_only:
        res = evaluate(cfg, resume=args.resume)
    else:
        trainer = BalmsTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        res = trainer.train()
    print_summary(cfg, res)
    # no process leaves before the main one has written every file (results, metrics,
    # checkpoints): a process that exits early takes the whole launch down with it
    comm.synchronize()
    return res


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    device = merged_cfg(args.config_file, args.opts).MODEL.DEVICE
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
