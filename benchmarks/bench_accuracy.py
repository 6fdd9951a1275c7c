#!/usr/bin/env python
"""Accuracy of every long-tail method side by side on the synthetic long-tailed dataset.

Every method trains with the same data, seed and iteration budget (``tools/train_net.py`` or
``tools/btm.py`` in a subprocess, one run at a time), then is evaluated with the LVIS protocol.
Decoupled methods start from the stage-1 run of the same seed and re-train the classifier for
``STAGE2_FRACTION`` of the stage-1 budget; ``decoupled_softmax`` and ``decoupled_sigmoid`` re-train
it with the stage-1 loss itself, the control that separates the effect of the balanced loss from
that of the extra iterations. ``btm`` fine-tunes the stage-1 softmax model on 3 balanced
few-shot subsets (``--btm-iters`` iterations each), averages them and runs the balanced-softmax stage 2.
Runs whose metrics exist are reused, so the command resumes where it stopped.

    python benchmarks/bench_accuracy.py --seeds 0 1 --out output/bench_accuracy   # this CPU
    python benchmarks/bench_accuracy.py --methods softmax decoupled_balanced_softmax --seeds 0 \
        --iters 2 --train-images 160 --classes 12 --max-images-per-class 130   # smoke
    python benchmarks/bench_accuracy.py --device cuda --num-gpus 8 --iters 20000 \
        --train-images 20000 --max-images-per-class 5000   # a GPU machine

Writes ``<out>/accuracy.md`` and ``<out>/accuracy.json``: per method, mean and spread (sample
std over seeds) of mask AP, APr, APc, APf, box AP, harmonic and geometric mean of per-class mask
AP, and the training time (every training of the method: stage 1, BTM fine-tunes, stage 2).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_outputs  # noqa: E402

SYN = os.path.join(REPO, "configs", "synthetic")

RFS = [
    "DATALOADER.SAMPLER_TRAIN",
    "RepeatFactorTrainingSampler",
    "DATALOADER.REPEAT_THRESHOLD",
    "0.1",
]
LOSS = "MODEL.ROI_BOX_HEAD.BALMS.LOSS"
META = ["BALMS.META.ENABLED", "True"]

# name -> (config, extra opts, stage-1 method or None). Stage-2 runs use STAGE2_FRACTION of the
# iteration budget on top of their stage-1 run.
METHODS = {
    "softmax": ("mask_rcnn_r18_softmax.yaml", [], None),
    "softmax_rfs": ("mask_rcnn_r18_softmax.yaml", RFS, None),
    "sigmoid_rfs": ("mask_rcnn_r18_sigmoid.yaml", RFS, None),
    "balanced_softmax_rfs": ("mask_rcnn_r18_balanced_softmax.yaml", RFS, None),
    # the field's peers in the same head
    "seesaw": ("mask_rcnn_r18_softmax.yaml", [LOSS, "seesaw"], None),
    "seesaw_rfs": ("mask_rcnn_r18_softmax.yaml", [LOSS, "seesaw", *RFS], None),
    "eqlv2": ("mask_rcnn_r18_sigmoid.yaml", [LOSS, "eqlv2"], None),
    "d2_sigmoid_ce": (
        "mask_rcnn_r18_softmax.yaml",
        ["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", "True"],
        None,
    ),
    "d2_fed_loss": (
        "mask_rcnn_r18_softmax.yaml",
        [
            "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE",
            "True",
            "MODEL.ROI_BOX_HEAD.USE_FED_LOSS",
            "True",
            "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES",
            "{fed_classes}",
        ],
        None,
    ),
    "sigmoid": ("mask_rcnn_r18_sigmoid.yaml", [], None),
    "balanced_softmax": ("mask_rcnn_r18_balanced_softmax.yaml", [], None),
    "balanced_sigmoid": ("mask_rcnn_r18_balanced_sigmoid.yaml", [], None),
    "balms": ("mask_rcnn_r18_balms_meta.yaml", [], None),
    # the softmax stage-1 model evaluated with post-hoc logit adjustment (no training): the
    # inference-time twin of balanced softmax, a check of the prior itself
    "softmax_posthoc": (
        "mask_rcnn_r18_softmax.yaml",
        ["--eval-only", "MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU", "1.0"],
        "softmax",
    ),
    "decoupled_softmax": (
        "stage2_balanced_softmax.yaml",
        ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", "softmax"],
        "softmax",
    ),
    "decoupled_balanced_softmax": ("stage2_balanced_softmax.yaml", [], "softmax"),
    "decoupled_sigmoid": (
        "stage2_balanced_sigmoid.yaml",
        ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", "sigmoid"],
        "sigmoid",
    ),
    "decoupled_balanced_sigmoid": ("stage2_balanced_sigmoid.yaml", [], "sigmoid"),
    "decoupled_los": ("stage2_label_over_smooth.yaml", [], "softmax"),
    "decoupled_los_fg": (
        "stage2_label_over_smooth.yaml",
        ["MODEL.ROI_BOX_HEAD.BALMS.LOS_FOREGROUND_ONLY", "True"],
        "softmax",
    ),
    "decoupled_balms": ("stage2_balanced_softmax.yaml", ["BALMS.META.ENABLED", "True"], "softmax"),
    "decoupled_balms_sigmoid": (
        "stage2_balanced_sigmoid.yaml",
        ["BALMS.META.ENABLED", "True"],
        "sigmoid",
    ),
    "decoupled_balanced_softmax_rfs": ("stage2_balanced_softmax.yaml", RFS, "softmax_rfs"),
    # the published BALMS recipe: stage 1 sigmoid + RFS; stage 2 balanced sigmoid + Meta
    # Reweigher + RFS; and its control, stage 2 plain sigmoid + RFS for the same iterations
    "balms_published": ("stage2_balanced_sigmoid.yaml", [*META, *RFS], "sigmoid_rfs"),
    "balms_published_control": (
        "stage2_balanced_sigmoid.yaml",
        [LOSS, "sigmoid", *RFS],
        "sigmoid_rfs",
    ),
    # tools/btm.py: fine-tunes (btm.yaml) on the softmax stage-1 model, merge, then stage 2
    "btm": ("btm.yaml", ["--stage2-config", "btm_stage2.yaml"], "softmax"),
}
BTM_LABEL = "btm+stage2"  # the row of tools/btm.py's results that is the method
STAGE2_FRACTION = 0.3
COLUMNS = ("AP", "APr", "APc", "APf", "AP_box", "hmean", "gmean", "train_min")


def run_dir(out, method, seed):
    return os.path.join(out, method, f"seed{seed}")


def metrics_path(d, method, dataset="synth_lt_val"):
    if method == "btm":
        d = os.path.join(d, "eval", BTM_LABEL)
    return os.path.join(d, "inference", dataset, "lvis_metrics.json")


def _train_seconds(log_file):
    """Sum of Detectron2's 'Total training time: H:MM:SS' lines of a log.txt (one per training;
    tools/btm.py writes one per fine-tune and one for stage 2; none after --eval-only)."""
    with open(log_file) as f:
        m = re.findall(r"Total training time: (\d+):(\d+):(\d+)", f.read())
    return sum(3600 * int(h) + 60 * int(mi) + int(s) for h, mi, s in m)


def _schedule(iters, stage2):
    if stage2:
        steps, warmup = (iters // 2, iters * 5 // 6), 0
    else:
        steps, warmup = (iters * 3 // 4, iters * 9 // 10), min(100, iters // 3)
    steps = sorted({s for s in steps if 0 < s < iters})
    return [
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.STEPS",
        "(" + "".join(f"{s}," for s in steps) + ")",
        "SOLVER.WARMUP_ITERS",
        str(warmup),
    ]


def run_method(args, method, seed):
    """Train and evaluate ``method`` with ``seed`` (its stage-1 run first); return its folder."""
    d = run_dir(args.out, method, seed)
    if os.path.exists(metrics_path(d, method)):
        return d
    config, opts, stage1 = METHODS[method]
    data = [
        "MODEL.DEVICE",
        args.device,
        "BALMS.SYNTHETIC.NUM_TRAIN_IMAGES",
        str(args.train_images),
        "BALMS.SYNTHETIC.NUM_CLASSES",
        str(args.classes),
        "MODEL.ROI_HEADS.NUM_CLASSES",
        str(args.classes),
        "BALMS.SYNTHETIC.SEED",
        str(args.data_seed),
        "BALMS.SYNTHETIC.MAX_IMAGES_PER_CLASS",
        str(args.max_images_per_class),
    ]
    if args.image_size:
        s = str(args.image_size)
        data += [
            "BALMS.SYNTHETIC.IMAGE_SIZE",
            s,
            "INPUT.MIN_SIZE_TRAIN",
            f"({s},)",
            "INPUT.MAX_SIZE_TRAIN",
            s,
            "INPUT.MIN_SIZE_TEST",
            s,
            "INPUT.MAX_SIZE_TEST",
            s,
        ]
    common = data + ["SEED", str(seed), "SOLVER.CHECKPOINT_PERIOD", str(10**7)] + args.opts
    tool = "train_net.py"
    if stage1 is None:
        opts = opts + common + ["OUTPUT_DIR", d] + _schedule(args.iters, False)
    else:
        s1 = os.path.join(run_method(args, stage1, seed), "model_final.pth")
        stage2 = common + _schedule(max(1, int(round(args.iters * STAGE2_FRACTION))), True)
        if method == "btm":
            tool = "btm.py"
            opts = [
                opts[0],
                os.path.join(SYN, opts[1]),
                "--stage1-weights",
                s1,
                "--output-dir",
                d,
                "--no-eval-stage1",
                "--no-eval-finetunes",
                "--stage2-opts",
                " ".join(stage2),
                *common,
                "BALMS.BTM.SEED",
                str(seed),
                "BALMS.BTM.ITERS",
                str(args.btm_iters),
            ]
        else:
            opts = opts + stage2 + ["MODEL.WEIGHTS", s1, "OUTPUT_DIR", d]
    # Detectron2's federated loss samples this many classes per batch (a quarter of them)
    opts = [o.format(fed_classes=max(1, args.classes // 4)) for o in opts]
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", tool),
        "--config-file",
        os.path.join(SYN, config),
        "--num-gpus",
        str(args.num_gpus),
        *opts,
    ]
    os.makedirs(d, exist_ok=True)
    if tool == "train_net.py" and os.path.exists(os.path.join(d, "log.txt")):
        # a fresh run (Detectron2 appends to log.txt; the training time is read from it).
        # tools/btm.py resumes its finished trainings, whose times stay in its log.
        os.remove(os.path.join(d, "log.txt"))
    print(f"[bench] {method} seed {seed}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(d, "stdout.txt"), "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0 or not os.path.exists(metrics_path(d, method)):
        raise SystemExit(f"[bench] {method} seed {seed} failed; see {d}/stdout.txt")
    print(f"[bench] {method} seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    return d


def collect(args, method, seed):
    """The row of one run: metrics, and the training minutes of the method's whole schedule."""
    d = run_dir(args.out, method, seed)
    with open(metrics_path(d, method)) as f:
        m = json.load(f)
    nan = float("nan")

    def get(task, key):
        v = m.get(task, {}).get(key)
        return nan if v is None else v

    seconds = _train_seconds(os.path.join(d, "log.txt"))
    stage1 = METHODS[method][2]
    if stage1 is not None:
        seconds += _train_seconds(os.path.join(run_dir(args.out, stage1, seed), "log.txt"))
    return dict(
        AP=get("segm", "AP"),
        APr=get("segm", "APr"),
        APc=get("segm", "APc"),
        APf=get("segm", "APf"),
        AP_box=get("bbox", "AP"),
        hmean=get("segm", "hmean"),
        gmean=get("segm", "gmean"),
        train_min=seconds / 60,
    )


def summarize(rows_by_method):
    out = {}
    for method, rows in rows_by_method.items():
        out[method] = {}
        for c in COLUMNS:
            vals = [r[c] for r in rows]
            mean = statistics.fmean(vals)
            spread = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            out[method][c] = {"mean": mean, "std": spread, "runs": vals}
    return out


def markdown(summary, seeds):
    head = "| method | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, cols in summary.items():
        cells = []
        for c in COLUMNS:
            m, s = cols[c]["mean"], cols[c]["std"]
            cells.append(f"{m:.2f}" if s != s else f"{m:.2f} ± {s:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    note = (
        f"\nMask AP columns unless named; mean ± sample std over seeds {list(seeds)}; "
        "train_min = Detectron2's total training time in minutes of every training the "
        "method needs (decoupled: stage 1 + stage 2; btm: stage 1 + fine-tunes + stage 2)."
    )
    return "\n".join(lines) + note


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=300, help="stage-1 iteration budget")
    p.add_argument(
        "--train-images",
        type=int,
        default=2000,
        help="training images of the synthetic set (the main job has 1000)",
    )
    p.add_argument("--classes", type=int, default=48)
    p.add_argument(
        "--max-images-per-class",
        type=int,
        default=800,
        help="training images of the most frequent class (the main job has 400)",
    )
    p.add_argument(
        "--btm-iters",
        type=int,
        default=40,
        help="iterations of each BTM fine-tune (BALMS.BTM.ITERS)",
    )
    p.add_argument(
        "--image-size", type=int, default=0, help="image side in pixels (0: the config's, 128)"
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per run (launch)")
    p.add_argument("--out", default=os.path.join(REPO, "output", "bench_accuracy"))
    p.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides appended to every run (after the benchmark's own), "
        "e.g. TEST.DETECTIONS_PER_IMAGE 100",
    )
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    rows, failed = {}, {}
    for method in args.methods:
        # a failed run is reported and the others go on (its dependants are skipped)
        stage1 = METHODS[method][2]
        if stage1 in failed:
            failed[method] = f"its stage 1 ({stage1}) failed"
            continue
        try:
            for s in args.seeds:
                run_method(args, method, s)
        except SystemExit as e:
            failed[method] = str(e)
            print(str(e), flush=True)
            continue
        rows[method] = [collect(args, method, s) for s in args.seeds]
    summary = summarize(rows)
    md = markdown(summary, args.seeds)
    if failed:
        md += "\n\nFailed: " + "; ".join(f"{m}: {why}" for m, why in failed.items())
    write_outputs(
        args.out, "accuracy", md, {"args": vars(args), "summary": summary, "failed": failed}
    )
    if failed:
        raise SystemExit(f"[bench] {len(failed)} method(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
