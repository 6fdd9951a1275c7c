#!/usr/bin/env python
"""Train and evaluate Mask R-CNN with balms-det (Detectron2's DefaultTrainer pattern).

python tools/train_net.py --config-file configs/synthetic/mask_rcnn_r18_softmax.yaml
python tools/train_net.py --config-file configs/lvis_balms_r50.yaml --num-gpus 8
python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
"""

import logging

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from balms_det.engine.trainer import BalmsCheckpointer, BalmsTrainer, print_summary, setup_cfg

logger = logging.getLogger("balms_det")


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args)
    if args.eval_only:
        model = BalmsTrainer.build_model(cfg)
        BalmsCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = BalmsTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        print_summary(cfg, res)
        return res

    trainer = BalmsTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    print_summary(cfg, res)
    return res


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
