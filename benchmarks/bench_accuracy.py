#!/usr/bin/env python
"""Accuracy of every long-tail method side by side on the synthetic long-tailed dataset.

Every method trains with the same data, seed and iteration budget (``tools/train_net.py`` in a
subprocess, one run at a time), then is evaluated with the LVIS protocol. Decoupled methods start
from the stage-1 run of the same seed. Runs whose metrics exist are reused (the command resumes).

    python benchmarks/bench_accuracy.py --seeds 0 1 --iters 1000 --out output/bench_accuracy
    python benchmarks/bench_accuracy.py --methods softmax decoupled_balanced_softmax --seeds 0 \
        --iters 2 --train-images 160 --classes 12 --max-images-per-class 130   # smoke

Writes ``<out>/accuracy.md`` and ``<out>/accuracy.json``: per method, mean and spread (sample
std over seeds) of mask AP, APr, APc, APf, box AP, harmonic and geometric mean of per-class mask
AP, and the training time.
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
SYN = os.path.join(REPO, "configs", "synthetic")

# name -> (config, extra opts, stage-1 method or None). Stage-2 runs use STAGE2_FRACTION of the
# iteration budget on top of their stage-1 run.
METHODS = {
    "softmax": ("mask_rcnn_r18_softmax.yaml", [], None),
    "softmax_rfs": (
        "mask_rcnn_r18_softmax.yaml",
        ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
         "DATALOADER.REPEAT_THRESHOLD", "0.1"],
        None,
    ),
    "d2_sigmoid_ce": ("mask_rcnn_r18_softmax.yaml", ["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", "True"], None),
    "d2_fed_loss": (
        "mask_rcnn_r18_softmax.yaml",
        ["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", "True", "MODEL.ROI_BOX_HEAD.USE_FED_LOSS", "True",
         "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "{fed_classes}"],
        None,
    ),
    "sigmoid": ("mask_rcnn_r18_sigmoid.yaml", [], None),
    "balanced_softmax": ("mask_rcnn_r18_balanced_softmax.yaml", [], None),
    "balanced_sigmoid": ("mask_rcnn_r18_balanced_sigmoid.yaml", [], None),
    "balms": ("mask_rcnn_r18_balms_meta.yaml", [], None),
    "decoupled_balanced_softmax": ("stage2_balanced_softmax.yaml", [], "softmax"),
    "decoupled_balanced_sigmoid": ("stage2_balanced_sigmoid.yaml", [], "sigmoid"),
    "decoupled_los": ("stage2_label_over_smooth.yaml", [], "softmax"),
    "decoupled_balms": ("stage2_balanced_softmax.yaml", ["BALMS.META.ENABLED", "True"], "softmax"),
    "decoupled_balms_sigmoid": (
        "stage2_balanced_sigmoid.yaml", ["BALMS.META.ENABLED", "True"], "sigmoid"),
}
STAGE2_FRACTION = 0.3
COLUMNS = ("AP", "APr", "APc", "APf", "AP_box", "hmean", "gmean", "train_min")


def run_dir(out, method, seed):
    return os.path.join(out, method, f"seed{seed}")


def metrics_path(d, dataset="synth_lt_val"):
    return os.path.join(d, "inference", dataset, "lvis_metrics.json")


def _train_seconds(log_file):
    """Detectron2's 'Total training time: H:MM:SS' line of log.txt."""
    with open(log_file) as f:
        m = re.findall(r"Total training time: (\d+):(\d+):(\d+)", f.read())
    if not m:
        return float("nan")
    h, mi, s = map(int, m[-1])
    return 3600 * h + 60 * mi + s


def run_method(args, method, seed):
    d = run_dir(args.out, method, seed)
    if os.path.exists(metrics_path(d)):
        return d
    config, opts, stage1 = METHODS[method]
    iters = args.iters
    common = [
        "SEED", str(seed), "OUTPUT_DIR", d, "MODEL.DEVICE", args.device,
        "BALMS.SYNTHETIC.NUM_TRAIN_IMAGES", str(args.train_images),
        "BALMS.SYNTHETIC.NUM_CLASSES", str(args.classes),
        "MODEL.ROI_HEADS.NUM_CLASSES", str(args.classes),
        "BALMS.SYNTHETIC.SEED", str(args.data_seed),
        "BALMS.SYNTHETIC.MAX_IMAGES_PER_CLASS", str(args.max_images_per_class),
    ]
    if stage1:
        s1 = run_method(args, stage1, seed)
        iters = max(1, int(round(args.iters * STAGE2_FRACTION)))
        common += ["MODEL.WEIGHTS", os.path.join(s1, "model_final.pth")]
        steps, warmup = (iters // 2, iters * 5 // 6), 0
    else:
        steps, warmup = (iters * 3 // 4, iters * 9 // 10), min(100, iters // 3)
    steps = sorted({s for s in steps if 0 < s < iters})
    sched = ["SOLVER.STEPS", "(" + "".join(f"{s}," for s in steps) + ")",
             "SOLVER.WARMUP_ITERS", str(warmup)]
    # Detectron2's federated loss samples this many classes per batch (a quarter of them)
    opts = [o.format(fed_classes=max(1, args.classes // 4)) for o in opts]
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(SYN, config), "--num-gpus", str(args.num_gpus), *opts, *common,
           "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(10 ** 7), *sched]
    os.makedirs(d, exist_ok=True)
    print(f"[bench] {method} seed {seed}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(d, "stdout.txt"), "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise SystemExit(f"[bench] {method} seed {seed} failed; see {d}/stdout.txt")
    print(f"[bench] {method} seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    return d


def collect(d):
    with open(metrics_path(d)) as f:
        m = json.load(f)
    nan = float("nan")

    def get(task, key):
        v = m.get(task, {}).get(key)
        return nan if v is None else v

    return dict(
        AP=get("segm", "AP"), APr=get("segm", "APr"), APc=get("segm", "APc"),
        APf=get("segm", "APf"), AP_box=get("bbox", "AP"), hmean=get("segm", "hmean"),
        gmean=get("segm", "gmean"), train_min=_train_seconds(os.path.join(d, "log.txt")) / 60,
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
    note = (f"\nMask AP columns unless named; mean ± sample std over seeds {list(seeds)}; "
            "train_min = Detectron2's total training time in minutes (stage 2 only for "
            "decoupled methods).")
    return "\n".join(lines) + note


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=1000, help="stage-1 iteration budget")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--classes", type=int, default=48)
    p.add_argument("--max-images-per-class", type=int, default=400)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per run (launch)")
    p.add_argument("--out", default=os.path.join(REPO, "output", "bench_accuracy"))
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    rows = {}
    for method in args.methods:
        rows[method] = [collect(run_method(args, method, s)) for s in args.seeds]
    summary = summarize(rows)
    md = markdown(summary, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "accuracy.json"), "w") as f:
        json.dump({"args": vars(args), "summary": summary}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
