#!/usr/bin/env python
"""Balanced Training and Merging (BTM) from a stage-1 checkpoint, then (optionally) stage 2.

    # synthetic default (stage 1 = configs/synthetic/main.yaml -> output/main/model_final.pth)
    python tools/btm.py --config-file configs/synthetic/btm.yaml \\
        --stage2-config configs/synthetic/btm_stage2.yaml
    # LVIS v1, 8 GPUs per fine-tune
    python tools/btm.py --config-file configs/lvis/btm_r50.yaml --num-gpus 8 \\
        --stage2-config configs/lvis/stage2_balanced_sigmoid_r50.yaml

Steps (all under --output-dir, default the config's OUTPUT_DIR): draw BALMS.BTM.NUM_SUBSETS
class-balanced subsets of DATASETS.TRAIN (BALMS.BTM.SHOTS images per class, seed BALMS.BTM.SEED;
subsets.json, subsets.md), fine-tune the whole stage-1 model on each for BALMS.BTM.ITERS
iterations at lr BALMS.BTM.BASE_LR (finetune_<i>/model_final.pth, one after the other, each
through Detectron2's launch), average them (merged.pth, BALMS.BTM.MERGE_WEIGHTS or uniform),
re-train the classifier with --stage2-config (stage2/model_final.pth), evaluate every model and
print/write the table (btm_results.md, btm_results.json). Re-running the same command skips
every finished step: a crash after k fine-tunes continues with fine-tune k+1.
Trailing KEY VALUE pairs override the stage-1/BTM config (e.g. BALMS.BTM.NUM_SUBSETS 3).
"""

import shlex
import sys

from balms_det.engine.launching import argument_parser, dist_url


def build_parser():
    p = argument_parser(epilog=__doc__)
    p.add_argument(
        "--stage1-weights",
        default="",
        help="stage-1 checkpoint (default: MODEL.WEIGHTS of --config-file)",
    )
    p.add_argument("--output-dir", default="", help="default: OUTPUT_DIR of --config-file")
    p.add_argument(
        "--stage2-config",
        default="",
        help="stage-2 config (classifier re-training, any balanced-head loss); "
        "empty: stop after merging",
    )
    p.add_argument(
        "--stage2-opts",
        default="",
        help="overrides of the stage-2 config, one quoted string: 'KEY VALUE ...'",
    )
    p.add_argument(
        "--finetune-opts",
        default="",
        help="overrides applied to every fine-tune, one quoted string",
    )
    p.add_argument(
        "--finetune-loss",
        default="plain",
        help="'plain' (default: softmax/sigmoid, the subsets are balanced), 'same' "
        "(stage 1's loss) or a MODEL.ROI_BOX_HEAD.BALMS.LOSS name",
    )
    p.add_argument(
        "--subset-mode",
        choices=("fill", "independent"),
        default="fill",
        help="how images already in a subset count for later classes (see docs)",
    )
    p.add_argument(
        "--stage2-baseline",
        action="store_true",
        help="also run stage 2 from the stage-1 model (the control without BTM)",
    )
    p.add_argument("--no-eval-stage1", action="store_true", help="do not evaluate stage 1")
    p.add_argument(
        "--no-eval-finetunes",
        action="store_true",
        help="do not evaluate the individual fine-tuned models",
    )
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    print("Command Line Args:", args)
    if args.eval_only or args.resume:
        print(
            "tools/btm.py: --eval-only/--resume are not used (re-running resumes by itself)",
            file=sys.stderr,
        )
    from balms_det.engine.btm import run_btm_pipeline
    from balms_det.engine.trainer import setup_cfg

    stage2 = None
    if args.stage2_config:
        stage2 = setup_cfg(args.stage2_config, shlex.split(args.stage2_opts))
    # set up last: its synthetic-dataset parameters are the ones registered for the pipeline
    cfg = setup_cfg(args.config_file, args.opts)
    if stage2 is not None and stage2.BALMS.SYNTHETIC != cfg.BALMS.SYNTHETIC:
        diff = [
            k for k in cfg.BALMS.SYNTHETIC if cfg.BALMS.SYNTHETIC[k] != stage2.BALMS.SYNTHETIC[k]
        ]
        raise ValueError(
            f"--stage2-config {args.stage2_config} (with --stage2-opts) describes another "
            f"synthetic dataset than --config-file {args.config_file}: BALMS.SYNTHETIC."
            f"{diff[0]} is {stage2.BALMS.SYNTHETIC[diff[0]]!r} vs {cfg.BALMS.SYNTHETIC[diff[0]]!r}"
            "; pass the same BALMS.SYNTHETIC.* overrides in --stage2-opts"
        )
    out = run_btm_pipeline(
        cfg,
        args.output_dir or cfg.OUTPUT_DIR,
        stage1_weights=args.stage1_weights or None,
        stage2=stage2,
        stage2_opts=args.stage2_opts,
        finetune_opts=args.finetune_opts,
        finetune_loss=args.finetune_loss,
        subset_mode=args.subset_mode,
        num_gpus=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=dist_url(args),  # a free port by default on one machine
        eval_stage1=not args.no_eval_stage1,
        eval_finetunes=not args.no_eval_finetunes,
        stage2_baseline=args.stage2_baseline,
    )
    return out


if __name__ == "__main__":
    main()
