#!/usr/bin/env python
"""Cost of each classification head, side by side in one process on the same batches.

Variants: Detectron2's stock head (``StandardROIHeads`` + ``FastRCNNOutputLayers``), the balms
head with each loss (Seesaw and EQLv2 included), the balms head (balanced softmax) with the Meta
Reweigher at PERIOD 1 and at a larger period, and the decoupled stage-2 step (classifier only)
without the hook, with it, and with it on cached meta features, the cache filled with every meta
image before timing (compare the stage-2 rows with ``stage2_classifier_only``, not with the
stock head). Every variant has its own model (same initialisation seed) and trainer;
all run the same pool of training batches (mapped once, so data loading is outside the timing;
the meta loader is inside the hook's time). Steps are interleaved round-robin with the variant
order rotating every round, so drift on a shared machine hits all variants alike; warm-up rounds
are not timed. By default the learning rate is 0 (``--lr``): every operation of a step still
runs, but the weights stay at their common initialisation, so every variant gets the same
proposals and sampled ROIs and the mask head does the same work; with a live learning rate the
variants' trajectories drift apart and the number of foreground ROIs (hence the mask-head cost)
differs for reasons that have nothing to do with the classification loss. Reported: median step
time, ratio to the stock head, the mean step time (the throughput of a variant whose hook runs
every P-th step: give ``--steps`` a multiple of P), and the median over steps of
the peak resident memory during a step (sampled every 0.5 ms) and its increment over the memory
before the step, with the ratios.

    .venv/bin/python benchmarks/bench_cost.py --steps 30 --out output/bench_cost

Another recipe and class count: ``--config-file`` (the model, input and meta-loss settings of
every variant; each variant sets its own loss, ``BALMS.META.*`` and ``BALMS.TRAINABLE_PARAMS``)
and ``--num-classes K`` (the synthetic set is generated with K classes: the head, the counts
and the Meta Reweigher's K weights at that size). ``--loss`` is the loss of the Meta Reweigher
and stage-2 variants; variants ``[stage2_]meta_p<P>_m<M>`` (a meta step every P iterations on
M meta images) sweep the hook's settings; trailing ``KEY VALUE`` pairs override every variant.
The LVIS recipe (R50-FPN, 1,203 classes, balanced sigmoid, the balanced meta loss, 1 meta image
per 2 training images), on 320-px batches of 2::

    .venv/bin/python benchmarks/bench_cost.py \
        --config-file configs/lvis/stage2_balms_meta_r50.yaml --num-classes 1203 \
        --loss balanced_sigmoid --steps 24 --variants stage2_classifier_only \
        stage2_meta_p1_m1 stage2_meta_p4_m1 stage2_meta_p8_m1 --out output/bench_cost_lvis \
        SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(320,)" INPUT.MAX_SIZE_TRAIN 320 \
        DATALOADER.NUM_WORKERS 0 MODEL.WEIGHTS "" MODEL.DEVICE cpu
"""

import argparse
import os
import re
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PeakRSS, pin_mmap_threshold, write_outputs  # noqa: E402

BASE = os.path.join(REPO, "configs", "synthetic", "Base-Synthetic-R18.yaml")
_LOSS = "MODEL.ROI_BOX_HEAD.BALMS.LOSS"


_STAGE2 = ["BALMS.TRAINABLE_PARAMS", "['cls_score']"]
# what every variant sets itself, so that any config can be the base
_PLAIN = ["BALMS.META.ENABLED", "False", "BALMS.TRAINABLE_PARAMS", "[]"]
_SWEEP = re.compile(r"^(stage2_)?meta_p(\d+)_m(\d+)$")  # [stage2_]meta_p<PERIOD>_m<IMAGES>


def _meta(period, meta_images=None, loss="balanced_softmax"):
    """``loss`` with the Meta Reweigher every ``period`` steps."""
    opts = [_LOSS, loss, "BALMS.META.ENABLED", "True", "BALMS.META.PERIOD", period]
    return opts + (["BALMS.META.IMS_PER_BATCH", meta_images] if meta_images else [])


def named_variants(loss="balanced_softmax"):
    """The named variants; the Meta Reweigher and stage-2 ones train ``loss``."""
    return {
        "stock_d2_head": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
        **{
            name: [_LOSS, name]
            for name in (
                "softmax",
                "balanced_softmax",
                "sigmoid",
                "balanced_sigmoid",
                "label_over_smooth",
                "seesaw",
                "eqlv2",
            )
        },
        "balms_meta_p1": _meta("1", loss=loss),
        "balms_meta_p1_meta4img": _meta("1", "4", loss),
        "balms_meta_p10": _meta("10", loss=loss),
        # decoupled stage 2 (classifier only), without and with the Meta Reweigher
        "stage2_classifier_only": [_LOSS, loss, *_STAGE2],
        "stage2_meta": _meta("1", loss=loss) + _STAGE2,
        "stage2_meta_cached": _meta("1", loss=loss)
        + _STAGE2
        + ["BALMS.META.CACHE_FEATURES", "True"],
    }


VARIANTS = named_variants()


def variant_opts(name, loss="balanced_softmax"):
    """Overrides of a named variant or of a sweep name ``[stage2_]meta_p<P>_m<M>``."""
    named = named_variants(loss)
    if name in named:
        return _PLAIN + named[name]
    m = _SWEEP.match(name)
    if m is None:
        raise SystemExit(
            f"unknown variant '{name}': one of {sorted(named)} or [stage2_]meta_p<P>_m<M>"
        )
    return _PLAIN + _meta(m.group(2), m.group(3), loss) + (_STAGE2 if m.group(1) else [])


def class_count_opts(num_classes):
    """The synthetic set with ``num_classes`` classes as the training set: 50 down to 1
    training images per class, 6 objects per image at most, so about 2.5 images per class
    (3,000 images at 1,203 classes); one validation instance per class."""
    k = int(num_classes)
    return [
        "MODEL.ROI_HEADS.NUM_CLASSES",
        str(k),
        "DATASETS.TRAIN",
        "('synth_lt_train',)",
        "DATASETS.TEST",
        "()",
        "BALMS.SYNTHETIC.NUM_CLASSES",
        str(k),
        "BALMS.SYNTHETIC.NUM_TRAIN_IMAGES",
        str(max(1000, (5 * k) // 2)),
        "BALMS.SYNTHETIC.MAX_IMAGES_PER_CLASS",
        "50",
        "BALMS.SYNTHETIC.MIN_IMAGES_PER_CLASS",
        "1",
        "BALMS.SYNTHETIC.VAL_INSTANCES_PER_CLASS",
        "1",
    ]


class Variant:
    def __init__(self, name, opts, out, lr, config=BASE):
        import torch

        from balms_det.engine.meta_reweigher import MetaReweigher
        from balms_det.engine.trainer import BalmsTrainer, setup_cfg

        extra = [
            "TEST.EVAL_PERIOD",
            "0",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            os.path.join(out, name),
        ]
        if lr is not None:
            extra += ["SOLVER.BASE_LR", str(lr)]
        cfg = setup_cfg(config, opts + extra)
        torch.manual_seed(0)
        self.name = name
        self.trainer = BalmsTrainer(cfg)
        self.simple = self.trainer._trainer
        self.hook = next((h for h in self.trainer._hooks if isinstance(h, MetaReweigher)), None)

    def warm_meta_cache(self):
        """Fill a cached Meta Reweigher's feature cache with every image of its meta set: the
        steady state of a stage 2 longer than one pass over the meta set (a cold cache runs the
        detector on every new meta image, which is the uncached step)."""
        from balms_det.data.meta_sampler import meta_mapper

        meta = self.hook.meta_set  # the training set, shared with the train loader
        mapper = meta_mapper(self.trainer.cfg)
        for i in range(0, len(meta), 8):
            self.hook.meta_features([mapper(meta[j]) for j in range(i, min(i + 8, len(meta)))])
        return len(self.hook.cache)

    def feed(self, batch_ref):
        class _Feed:
            def __next__(self):
                return batch_ref["batch"]

        self.simple._data_loader_iter_obj = _Feed()

    def step(self, i, storage):
        self.trainer.iter = self.simple.iter = i
        self.simple.storage = self.trainer.storage = storage
        if self.hook is not None:
            self.hook.before_step()
            self.simple.run_step()
            self.hook.after_step()
        else:
            self.simple.run_step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        help=f"any of {list(VARIANTS)} or [stage2_]meta_p<PERIOD>_m<META IMAGES>",
    )
    ap.add_argument("--config-file", default=BASE, help="base config of every variant")
    ap.add_argument(
        "--num-classes",
        type=int,
        default=0,
        help="train on the synthetic set generated with this many classes (0: the config's "
        "own training set and classes)",
    )
    ap.add_argument(
        "--loss",
        default="balanced_softmax",
        help="MODEL.ROI_BOX_HEAD.BALMS.LOSS of the Meta Reweigher and stage-2 variants",
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (>= 20)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--pool", type=int, default=4, help="distinct training batches")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="SOLVER.BASE_LR of every variant (default 0: the weights stay at their "
        "common initialisation, every operation of the step still runs, so all "
        "variants get the same proposals and ROIs and the same mask-head work; "
        "a negative value keeps the config's lr)",
    )
    ap.add_argument("--out", default=os.path.join(REPO, "output", "bench_cost"))
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every variant")
    args = ap.parse_args()

    import torch
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)
    lr = None if args.lr < 0 else args.lr
    common = (class_count_opts(args.num_classes) if args.num_classes else []) + list(args.opts)
    variants = [
        Variant(n, variant_opts(n, args.loss) + common, args.out, lr, args.config_file)
        for n in args.variants
    ]
    loader = iter(variants[0].trainer.data_loader)
    pool = [next(loader) for _ in range(args.pool)]
    current = {"batch": pool[0]}
    for v in variants:
        v.feed(current)
    times = {v.name: [] for v in variants}
    mem = {v.name: [] for v in variants}
    n = len(variants)
    with EventStorage(1) as storage:
        for v in variants:
            if v.hook is not None:
                v.simple.storage = v.trainer.storage = storage
                v.hook.before_train()
                if v.hook.cache is not None:
                    print(f"{v.name}: {v.warm_meta_cache()} meta images cached", flush=True)
        for r in range(args.warmup + args.steps + args.mem_steps):
            current["batch"] = pool[r % len(pool)]
            order = variants[r % n :] + variants[: r % n]
            timed = args.warmup <= r < args.warmup + args.steps
            for v in order:
                if r >= args.warmup + args.steps:
                    if r == args.warmup + args.steps and v is order[0]:
                        pin_mmap_threshold()
                    with PeakRSS() as m:
                        v.step(r, storage)
                    mem[v.name].append((m.peak, m.peak - m.start))
                    continue
                t0 = time.perf_counter()
                v.step(r, storage)
                if timed:
                    times[v.name].append(time.perf_counter() - t0)
            print(f"round {r}", flush=True)
    stock = "stock_d2_head" if "stock_d2_head" in times else variants[0].name
    med = {k: statistics.median(t) for k, t in times.items()}
    # the mean is the throughput: a hook running every P-th step costs its mean, while the
    # median of P > 2 is a step without it (use --steps a multiple of every P)
    mean = {k: statistics.fmean(t) for k, t in times.items()}
    peak = {k: statistics.median(a for a, _ in m) / 2**20 for k, m in mem.items()}
    incr = {k: statistics.median(b for _, b in m) / 2**20 for k, m in mem.items()}
    rows = []
    for k in times:
        ref = "stage2_classifier_only" if k.startswith("stage2_") and k in med else stock
        ref = ref if ref in med else stock
        rows.append(
            dict(
                variant=k,
                median_step_s=med[k],
                time_ratio=med[k] / med[stock],
                reference=ref,
                ref_ratio=med[k] / med[ref],
                mean_step_s=mean[k],
                mean_ref_ratio=mean[k] / mean[ref],
                peak_rss_mib=peak[k],
                peak_ratio=peak[k] / peak[stock],
                step_increment_mib=incr[k],
            )
        )
    lines = [
        "| variant | median step (s) | vs stock | vs reference | mean step (s) | mean vs "
        "reference | peak RSS (MiB) | vs stock | step peak increment (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['median_step_s']:.3f} | {r['time_ratio']:.3f}x | "
            f"{r['ref_ratio']:.3f}x ({r['reference']}) | {r['mean_step_s']:.3f} | "
            f"{r['mean_ref_ratio']:.3f}x | {r['peak_rss_mib']:.0f} | {r['peak_ratio']:.3f}x | "
            f"{r['step_increment_mib']:.0f} |"
        )
    c0 = variants[0].trainer.cfg
    md = "\n".join(lines) + (
        f"\n\n{args.steps} timed steps per variant (after {args.warmup} warm-up rounds), "
        f"{os.path.relpath(args.config_file, REPO)}, {c0.MODEL.ROI_HEADS.NUM_CLASSES} classes, "
        f"batch {c0.SOLVER.IMS_PER_BATCH} images (meta batch: the variant's, default "
        f"{c0.BALMS.META.IMS_PER_BATCH}), {args.threads} torch thread(s), "
        f"SOLVER.BASE_LR {c0.SOLVER.BASE_LR:g}."
    )
    write_outputs(args.out, "cost", md, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
