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

``--methods`` takes method names and groups of them: ``main`` (the default: the table every seed
runs), ``los_sweep`` (Label Over-Smoothing deltas, foreground-only or not, and their control),
``meta_study`` (the Meta Reweigher at longer stage 2 and a faster meta learning rate),
``meta_period`` (the Meta Reweigher every 8th step against every step and without it) and
``all``.

    python benchmarks/bench_accuracy.py --seeds 0 1 2 --out output/bench_accuracy   # this CPU
    python benchmarks/bench_accuracy.py --seeds 0 --methods los_sweep --report los_sweep \
        --baselines decoupled_softmax
    python benchmarks/bench_accuracy.py --methods softmax decoupled_balanced_softmax --seeds 0 \
        --iters 2 --train-images 160 --classes 12 --max-images-per-class 130   # smoke
    python benchmarks/bench_accuracy.py --device cuda --num-gpus 8 --iters 20000 \
        --train-images 20000 --max-images-per-class 5000   # a GPU machine

Writes ``<out>/accuracy.md`` and ``<out>/accuracy.json``: per method, mean and spread (sample
std over seeds) of mask AP, APr, APc, APf, box AP, harmonic and geometric mean of per-class mask
AP, and the training time (every training of the method: stage 1, BTM fine-tunes, stage 2);
with several seeds, the "which method should I use" rows and the paired differences against the
baselines (per seed, 95% t-interval); the per-class paired differences (over classes, also for
one seed); the learned class weights of the Meta Reweigher runs.
"""

import argparse
import glob
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
# the prior as the sampler delivers it (MODEL.ROI_BOX_HEAD.BALMS.PRIOR)
SAMPLER_PRIOR = ["MODEL.ROI_BOX_HEAD.BALMS.PRIOR", "sampler"]

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
    # the recipe without the Meta Reweigher (stage 2 balanced sigmoid + RFS): separates the
    # hook's effect from that of the balanced loss
    "balms_published_no_meta": ("stage2_balanced_sigmoid.yaml", RFS, "sigmoid_rfs"),
    # tools/btm.py: fine-tunes (btm.yaml) on the softmax stage-1 model, merge, then stage 2
    "btm": ("btm.yaml", ["--stage2-config", "btm_stage2.yaml"], "softmax"),
    # the balanced losses with the prior of the sampler (RFS) instead of the dataset's
    "balanced_softmax_rfs_sampler_prior": (
        "mask_rcnn_r18_balanced_softmax.yaml",
        [*RFS, *SAMPLER_PRIOR],
        None,
    ),
    "decoupled_balanced_softmax_rfs_sampler_prior": (
        "stage2_balanced_softmax.yaml",
        [*RFS, *SAMPLER_PRIOR],
        "softmax_rfs",
    ),
    "balms_published_sampler_prior": (
        "stage2_balanced_sigmoid.yaml",
        [*META, *RFS, *SAMPLER_PRIOR],
        "sigmoid_rfs",
    ),
    "balms_published_sampler_prior_no_meta": (
        "stage2_balanced_sigmoid.yaml",
        [*RFS, *SAMPLER_PRIOR],
        "sigmoid_rfs",
    ),
}
# a weaker dataset prior, the cheap alternative to the sampler prior: balanced softmax + RFS
# with TAU 0.25 and 0.5 (TAU 1 is balanced_softmax_rfs)
TAUS = ("0.25", "0.5")
for _t in TAUS:
    METHODS[f"balanced_softmax_rfs_tau{_t}"] = (
        "mask_rcnn_r18_balanced_softmax.yaml",
        [*RFS, "MODEL.ROI_BOX_HEAD.BALMS.TAU", _t],
        None,
    )
# The Meta Reweigher at longer stage 2 (published recipe and its control) and a faster meta
# learning rate; the Label Over-Smoothing sweep (delta, foreground-only or not) from softmax.
STAGE2_ITERS = {}
for _n in (300, 900):
    METHODS[f"balms_published_it{_n}"] = METHODS["balms_published"]
    for _v in ("", "_control", "_no_meta", "_sampler_prior", "_sampler_prior_no_meta"):
        METHODS[f"balms_published{_v}_it{_n}"] = METHODS[f"balms_published{_v}"]
        STAGE2_ITERS[f"balms_published{_v}_it{_n}"] = _n
METHODS["balms_published_it300_mlr0.1"] = (
    "stage2_balanced_sigmoid.yaml",
    [*META, "BALMS.META.LR", "0.1", *RFS],
    "sigmoid_rfs",
)
STAGE2_ITERS["balms_published_it300_mlr0.1"] = 300
# the Meta Reweigher every 8th step, the setting that brings its cost on the LVIS recipe's
# stage-2 step under 1.1x (1.06x, docs/RESULTS.md): what does it cost in accuracy?
METHODS["balms_published_p8_it300"] = (
    "stage2_balanced_sigmoid.yaml",
    [*META, "BALMS.META.PERIOD", "8", *RFS],
    "sigmoid_rfs",
)
STAGE2_ITERS["balms_published_p8_it300"] = 300
LOS_DELTAS = ("0.1", "0.3", "0.5", "0.7", "0.9")
for _d in LOS_DELTAS:
    for _fg in ("False", "True"):
        METHODS[f"decoupled_los_d{_d}" + ("_fg" if _fg == "True" else "")] = (
            "stage2_label_over_smooth.yaml",
            [
                "MODEL.ROI_BOX_HEAD.BALMS.LOS_DELTA",
                _d,
                "MODEL.ROI_BOX_HEAD.BALMS.LOS_FOREGROUND_ONLY",
                _fg,
            ],
            "softmax",
        )
# Named groups of methods (``--methods main``): "main" is the table every seed runs; the two
# studies run from the same stage-1 models (a seed is enough for their per-class intervals).
METHOD_GROUPS = {
    "main": [
        "softmax",
        "softmax_rfs",
        "sigmoid_rfs",
        "balanced_softmax",
        "balanced_softmax_rfs",
        "balanced_sigmoid",
        "seesaw",
        "seesaw_rfs",
        "eqlv2",
        "decoupled_softmax",
        "decoupled_balanced_softmax",
        "decoupled_balanced_softmax_rfs",
        "balms_published",
        "balms_published_control",
        "balms_published_no_meta",
        "softmax_posthoc",
        "btm",
    ],
    "los_sweep": ["decoupled_softmax"]
    + [f"decoupled_los_d{d}{fg}" for d in LOS_DELTAS for fg in ("", "_fg")],
    "meta_study": [
        f"balms_published{v}{n}"
        for n in ("", "_it300", "_it900")
        for v in ("", "_control", "_no_meta")
    ]
    + ["balms_published_it300_mlr0.1"],
    # the sampler prior against the dataset prior, in every place a count-based loss meets RFS
    "sampler_prior": [
        "softmax_rfs",
        "balanced_softmax_rfs",
        "balanced_softmax_rfs_sampler_prior",
        "decoupled_balanced_softmax_rfs",
        "decoupled_balanced_softmax_rfs_sampler_prior",
        "balms_published_control",
        "balms_published",
        "balms_published_no_meta",
        "balms_published_sampler_prior",
        "balms_published_sampler_prior_no_meta",
    ],
    # does the Meta Reweigher help once the loss no longer corrects twice (300-iteration stage 2)
    "meta_sampler_prior": [
        "balms_published_control_it300",
        "balms_published_sampler_prior_no_meta_it300",
        "balms_published_sampler_prior_it300",
    ],
    # the Meta Reweigher at PERIOD 8 against PERIOD 1 and without it (300-iteration stage 2)
    "meta_period": [
        "balms_published_no_meta_it300",
        "balms_published_it300",
        "balms_published_p8_it300",
    ],
    "tau_sweep": [
        "softmax_rfs",
        "balanced_softmax_rfs",
        *(f"balanced_softmax_rfs_tau{t}" for t in TAUS),
        "balanced_softmax_rfs_sampler_prior",
    ],
    "all": list(METHODS),
}
BTM_LABEL = "btm+stage2"  # the row of tools/btm.py's results that is the method
STAGE2_FRACTION = 0.3
COLUMNS = ("AP", "APr", "APc", "APf", "AP_box", "hmean", "gmean", "train_min")


def expand_methods(names):
    """Method names with group names replaced by their members, each once, in order."""
    out = []
    for name in names:
        for m in METHOD_GROUPS.get(name, [name]):
            if m not in out:
                out.append(m)
    return out


def run_dir(out, method, seed):
    return os.path.join(out, method, f"seed{seed}")


def metrics_path(d, method, dataset=None):
    """``lvis_metrics.json`` of a run: of ``dataset``, else of the one dataset the run evaluated
    (a user's DATASETS.TEST passed through), else where the synthetic set's would be."""
    if method == "btm":
        d = os.path.join(d, "eval", BTM_LABEL)
    if dataset is None:
        found = sorted(glob.glob(os.path.join(d, "inference", "*", "lvis_metrics.json")))
        if found:
            return found[0]
        dataset = "synth_lt_val"
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
        "BALMS.SYNTHETIC.VAL_INSTANCES_PER_CLASS",
        str(args.val_instances_per_class),
        "TEST.DETECTIONS_PER_IMAGE",
        str(args.dets_per_image),
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
        n2 = STAGE2_ITERS.get(method) or max(1, int(round(args.iters * STAGE2_FRACTION)))
        stage2 = common + _schedule(n2, True)
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


# two-sided 95% quantiles of Student's t by degrees of freedom (n - 1 for n paired seeds)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
T975.update({9: 2.262, 10: 2.228, 12: 2.179, 14: 2.145, 16: 2.120, 18: 2.101, 20: 2.086})
T975.update({25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980})
PAIRED_METRICS = ("APr", "AP", "gmean")


def t975(df):
    """Student's t quantile for ``df``, from the largest tabulated df <= ``df`` (conservative)."""
    return T975[max(k for k in T975 if k <= df)]


def paired_interval(diffs):
    """(mean, low, high) of the 95% t-interval of paired differences (NaN for fewer than 2)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = t975(n - 1) * statistics.stdev(diffs) / n**0.5
    return mean, mean - half, mean + half


def paired_difference(rows_by_method, method, other, metric):
    """{mean, low, high, diffs}: per-seed differences of ``metric``, method minus other, with
    their 95% t-interval."""
    d = [a[metric] - b[metric] for a, b in zip(rows_by_method[method], rows_by_method[other])]
    mean, lo, hi = paired_interval(d)
    return dict(mean=mean, low=lo, high=hi, diffs=d)


def paired_differences(rows_by_method, baselines=("softmax", "softmax_rfs")):
    """{baseline: {method: {metric: {mean, low, high, diffs}}}}: per-seed differences of each
    method against each baseline (same seed = same stage-1 data order and initialisation)."""
    out = {}
    for base in baselines:
        if base not in rows_by_method:
            continue
        out[base] = {}
        for method, rows in rows_by_method.items():
            if method in baselines[: baselines.index(base) + 1]:
                continue
            out[base][method] = {}
            for k in PAIRED_METRICS:
                out[base][method][k] = paired_difference(rows_by_method, method, base, k)
    return out


def interval_text(v):
    """'+d [lo, hi]' of a paired difference {mean, low, high}, ' *' when the interval excludes
    0; the mean alone when there is no interval (one pair)."""
    if v["low"] != v["low"]:
        return f"{v['mean']:+.2f}"
    mark = " *" if v["low"] > 0 or v["high"] < 0 else ""
    return f"{v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]{mark}"


def _paired_cell(rows_by_method, method, other, metric):
    """:func:`paired_difference` with its table text."""
    v = paired_difference(rows_by_method, method, other, metric)
    return dict(v, text=interval_text(v))


def recommendations(rows_by_method, baselines=("softmax", "softmax_rfs")):
    """The "which method should I use" rows: for APr, AP and gmean, the method of the best mean
    with its paired difference (per seed, 95% t-interval) against the runner-up and against each
    baseline; then the cheapest method (training minutes) whose APr gain over the first
    baseline has an interval above 0. A claim holds where its interval excludes 0."""
    if len(rows_by_method) < 2:
        return []

    def mean(m, k):
        return statistics.fmean(r[k] for r in rows_by_method[m])

    bases = [b for b in baselines if b in rows_by_method]
    out = []
    for metric in ("APr", "AP", "gmean"):
        best, second = sorted(rows_by_method, key=lambda m: -mean(m, metric))[:2]
        vs = {second: _paired_cell(rows_by_method, best, second, metric)}
        vs.update({b: _paired_cell(rows_by_method, best, b, metric) for b in bases if b != best})
        out.append(dict(question=f"best {metric}", metric=metric, method=best, vs=vs))
    if bases:
        base = bases[0]
        gains = [
            m
            for m in rows_by_method
            if m != base and _paired_cell(rows_by_method, m, base, "APr")["low"] > 0
        ]
        row = dict(question=f"cheapest resolved APr gain over {base}", metric="APr", vs={})
        row["method"] = min(gains, key=lambda m: mean(m, "train_min")) if gains else None
        if row["method"] is not None:
            row["vs"] = {b: _paired_cell(rows_by_method, row["method"], b, "APr") for b in bases}
        out.append(row)
    return out


def recommendations_markdown(recs, summary):
    if not recs:
        return ""
    lines = [
        "",
        "| question | method | its value | train min | difference (paired by seed, 95% interval) |",
        "|---|---|---|---|---|",
    ]
    for r in recs:
        m = r["method"]
        if m is None:
            lines.append(f"| {r['question']} | none | | | no interval excludes 0 |")
            continue
        val, t = summary[m][r["metric"]], summary[m]["train_min"]
        vs = "; ".join(f"{r['metric']} vs {o}: {c['text']}" for o, c in r["vs"].items())
        lines.append(
            f"| {r['question']} | {m} | {r['metric']} {val['mean']:.2f} ± {val['std']:.2f} | "
            f"{t['mean']:.1f} | {vs} |"
        )
    lines.append(
        "\nWhich method should I use: the best mean of each metric, with its paired difference "
        "(per seed, method minus the other, mean and 95% t-interval; * = excludes 0) against "
        "the runner-up and the baselines; a best whose interval against the runner-up includes 0 "
        "is tied with it."
    )
    return "\n".join(lines)


def per_class_ap(args, method, seed):
    """{category id: (group, mask AP %)} of one run from its ``per_class_ap.json`` (None when
    the run has no such file)."""
    d = os.path.dirname(metrics_path(run_dir(args.out, method, seed), method))
    path = os.path.join(d, "per_class_ap.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = json.load(f)
    return {
        r["category_id"]: (r.get("group"), r["AP_segm"])
        for r in rows
        if r.get("AP_segm") is not None
    }


def per_class_differences(args, methods, baselines):
    """{baseline: {method: {"APr": ..., "AP": ...}}}: per-class paired differences of mask AP
    (method minus baseline, averaged over seeds), mean and 95% t-interval over the classes (rare
    classes for APr, all for AP). The unit is the class: this resolves a difference within one
    data set and schedule, not across seeds of training."""
    out = {}
    for base in baselines:
        if base not in methods:
            continue
        b = [per_class_ap(args, base, s) for s in args.seeds]
        if None in b:
            continue
        out[base] = {}
        for method in methods:
            if method in baselines[: baselines.index(base) + 1]:
                continue
            m = [per_class_ap(args, method, s) for s in args.seeds]
            if None in m:
                continue
            diff, group = {}, {}
            for ms, bs in zip(m, b):
                for c in set(ms) & set(bs):
                    diff.setdefault(c, []).append(ms[c][1] - bs[c][1])
                    group[c] = bs[c][0]
            d = {c: statistics.fmean(v) for c, v in diff.items()}
            res = {}
            for k, keep in (("APr", lambda c: group[c] == "r"), ("AP", lambda c: True)):
                v = [d[c] for c in d if keep(c)]
                mean, lo, hi = paired_interval(v) if v else (float("nan"),) * 3
                res[k] = dict(mean=mean, low=lo, high=hi, classes=len(v))
            out[base][method] = res
    return out


def paired_markdown(paired, metrics=PAIRED_METRICS, note=None):
    lines = []
    for base, methods in paired.items():
        cols = [f"{k} - {base}" for k in metrics]
        lines += ["", f"| method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        for method, by_metric in methods.items():
            cells = [interval_text(by_metric[k]) for k in metrics]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if lines:
        lines.append(
            note
            or "\nPaired difference per seed (method minus baseline, same seed), mean and 95% "
            "t-interval over seeds; * = the interval excludes 0."
        )
    return "\n".join(lines)


def meta_weights(args, method, seed):
    """Range and LVIS-group means of the learned class weights WEIGHT_FN(psi) of a Meta
    Reweigher run (the predictor's ``class_weights`` buffer in ``model_final.pth``), or None."""
    if "BALMS.META.ENABLED" not in METHODS[method][1]:
        return None
    import torch

    sys.path.insert(0, REPO)
    from balms_det.longtail import frequency_group
    from balms_det.evaluation.report import read_per_class_table

    d = run_dir(args.out, method, seed)
    state = torch.load(os.path.join(d, "model_final.pth"), map_location="cpu")["model"]
    w = state["roi_heads.box_predictor.class_weights"].double().tolist()
    rows = read_per_class_table(os.path.dirname(metrics_path(d, method)))
    groups = [frequency_group(r.get("train_image_count") or 0) for r in rows]
    out = dict(min=min(w), max=max(w))
    for g in ("r", "c", "f"):
        v = [x for x, gg in zip(w, groups) if gg == g]
        out[g] = statistics.fmean(v) if v else float("nan")
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
    p.add_argument(
        "--methods",
        nargs="+",
        default=["main"],
        choices=list(METHODS) + list(METHOD_GROUPS),
        help="methods, or groups of them: " + ", ".join(METHOD_GROUPS) + " (default: main)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=200, help="stage-1 iteration budget")
    p.add_argument(
        "--dets-per-image",
        type=int,
        default=100,
        help="TEST.DETECTIONS_PER_IMAGE of every evaluation (inference of 300 masks per image "
        "costs more than a stage-2 training here; the images hold a few objects each)",
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=2000,
        help="training images of the synthetic set (the main job has 1000)",
    )
    p.add_argument("--classes", type=int, default=48)
    p.add_argument(
        "--val-instances-per-class",
        type=int,
        default=20,
        help="instances of every class in the balanced validation split (the main job has 8)",
    )
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
        "--report", default="accuracy", help="name of the <out>/<report>.md/.json tables"
    )
    p.add_argument(
        "--baselines",
        nargs="+",
        default=["softmax", "softmax_rfs"],
        help="methods every other is compared with, paired by seed",
    )
    p.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides appended to every run (after the benchmark's own), "
        "e.g. TEST.DETECTIONS_PER_IMAGE 100",
    )
    args = p.parse_args()
    args.methods = expand_methods(args.methods)
    args.out = os.path.abspath(args.out)
    failed = {}
    # seed-major order: an interrupted benchmark has every method at the first seeds
    for s in args.seeds:
        for method in args.methods:
            # a failed run is reported and the others go on (its dependants are skipped)
            stage1 = METHODS[method][2]
            if method in failed:
                continue
            if stage1 in failed:
                failed[method] = f"its stage 1 ({stage1}) failed"
                continue
            try:
                run_method(args, method, s)
            except SystemExit as e:
                failed[method] = str(e)
                print(str(e), flush=True)
    rows = {m: [collect(args, m, s) for s in args.seeds] for m in args.methods if m not in failed}
    summary = summarize(rows)
    paired = paired_differences(rows, args.baselines) if len(args.seeds) > 1 else {}
    by_class = per_class_differences(args, list(rows), args.baselines)
    weights = {
        m: [meta_weights(args, m, s) for s in args.seeds]
        for m in rows
        if "BALMS.META.ENABLED" in METHODS[m][1]
    }
    recs = recommendations(rows, args.baselines) if len(args.seeds) > 1 else []
    md = markdown(summary, args.seeds) + "\n" + recommendations_markdown(recs, summary)
    md += "\n" + paired_markdown(paired)
    md += "\n" + paired_markdown(
        by_class,
        ("APr", "AP"),
        "\nPer-class paired difference of mask AP (method minus baseline, mean over seeds per "
        "class), mean and 95% t-interval over classes (rare classes for APr); * = excludes 0.",
    )
    if weights:
        md += "\n\nLearned class weights WEIGHT_FN(psi) of the Meta Reweigher runs (mean over seeds):\n"
        md += "\n| method | stage-2 iters | min | max | mean r | mean c | mean f |\n|---|---|---|---|---|---|---|"
        for m, ws in weights.items():
            n2 = STAGE2_ITERS.get(m) or max(1, int(round(args.iters * STAGE2_FRACTION)))
            avg = {k: statistics.fmean(w[k] for w in ws) for k in ws[0]}
            md += (
                f"\n| {m} | {n2} | "
                + " | ".join(f"{avg[k]:.3f}" for k in ("min", "max", "r", "c", "f"))
                + " |"
            )
    if failed:
        md += "\n\nFailed: " + "; ".join(f"{m}: {why}" for m, why in failed.items())
    payload = {"args": vars(args), "summary": summary, "paired": paired, "by_class": by_class}
    payload["meta_weights"] = weights
    payload["recommendations"] = recs
    write_outputs(args.out, args.report, md, {**payload, "failed": failed})
    if failed:
        raise SystemExit(f"[bench] {len(failed)} method(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
