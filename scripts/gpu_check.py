"""The GPU check of balms-det (``make gpu-check``; docs/GPU.md): the product on CUDA, in one run
that prints one table.

1. ``tiny``: the tiny synthetic config trained 3 iterations with BalmsTrainer for every LOSS,
   under AMP float16 and bfloat16 (SOLVER.AMP, BALMS.AMP_DTYPE): finite losses, state on CUDA.
2. ``meta``: the Meta Reweigher, plain and balanced meta loss; stage 2 (only ``cls_score``
   trained) with CACHE_FEATURES.
3. ``eval``: evaluation of a tiny checkpoint on the GPU (BalmsLVISEvaluator).
4. ``syncs``: host-device syncs of one training step per LOSS and of one meta step, counted by
   ``torch.cuda.set_sync_debug_mode("warn")`` and by ``SyncCounter``, balms-det's (0 expected)
   apart from Detectron2's and PyTorch's.
5. ``lvis``: at LVIS size (R50-FPN Mask R-CNN, 1,203 classes, 2 synthetic 800 x 1067 images per
   step, AMP float16, random weights at learning rate 0): the step time of BalmsROIHeads per LOSS
   over StandardROIHeads, and of a step with the Meta Reweigher over one without, measured side
   by side in this run, with the peak GPU memory of each.

``--device cpu`` (what ``scripts/gpu_check.sh --dry-run`` runs) does all of it on the CPU without
AMP, the LVIS-size part at 128 x 160 px: everything but the CUDA calls. Each part records a row
per setting and goes on after a failure; the parts stop starting new settings when the time
budget (``--budget-s``) is spent. Exit status 1 when a row failed.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
import types

import torch  # before Detectron2 and its compiled _C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "synthetic", "tiny.yaml")
LVIS_BASE = os.path.join(REPO, "configs", "Base-LVIS-R50.yaml")


class Check:
    """Rows of the table, the time budget and the settings of the run."""

    def __init__(self, args):
        self.args = args
        self.cuda = args.device == "cuda"
        self.dev = args.device
        self.start = time.perf_counter()
        self.rows = []
        self.failed = 0
        self.tmp = tempfile.mkdtemp(prefix="balms_gpu_check_")
        self.tiny_weights = None

    def left(self):
        return self.args.budget_s - (time.perf_counter() - self.start)

    def row(self, part, setting, ok, seconds, note):
        status = "ok" if ok else "FAIL"
        self.failed += not ok
        self.rows.append((part, setting, status, f"{seconds:.1f}", note))
        print(f"[{part}] {setting}: {status} ({seconds:.1f} s) {note}", flush=True)

    def run(self, part, setting, fn, min_left=10.0):
        """``fn() -> (ok, note)``, timed; skipped when the budget is spent, FAIL on error."""
        if self.left() < min_left:
            self.rows.append((part, setting, "skipped", "0.0", "time budget spent"))
            print(f"[{part}] {setting}: skipped (time budget)", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            ok, note = fn()
        except Exception as e:  # the table says what failed; the run goes on
            traceback.print_exc()
            ok, note = False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        self.sync()
        self.row(part, setting, ok, time.perf_counter() - t0, note)
        return ok

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def table(self):
        head = ("part", "setting", "result", "s", "notes")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Tiny config: training, Meta Reweigher, evaluation
# ------------------------------------------------------------------------------------------
def tiny_opts(ck, *opts, iters=3):
    return [
        "MODEL.DEVICE",
        ck.dev,
        "SOLVER.MAX_ITER",
        str(iters),
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
        "SEED",
        "0",
        *opts,
    ]


def train_tiny(ck, name, *opts, iters=3):
    from balms_det.engine.trainer import BalmsTrainer, setup_cfg

    out = os.path.join(ck.tmp, name)
    cfg = setup_cfg(TINY, tiny_opts(ck, *opts, "OUTPUT_DIR", out, iters=iters))
    trainer = BalmsTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    latest = {k: v[0] for k, v in trainer.storage.latest().items()}
    return trainer, latest, out


def amp_opts(dtype):
    return ["SOLVER.AMP.ENABLED", "True", "BALMS.AMP_DTYPE", dtype] if dtype else []


def part_tiny(ck):
    from balms_det.modeling.roi_heads import LOSS_FAMILIES

    dtypes = ["float16", "bfloat16"] if ck.cuda else [None]
    for loss in LOSS_FAMILIES:
        for dtype in dtypes:

            def fn(loss=loss, dtype=dtype):
                name = f"tiny_{loss}_{dtype}"
                opts = ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", loss, *amp_opts(dtype)]
                trainer, latest, out = train_tiny(ck, name, *opts)
                pred = trainer.model.roi_heads.box_predictor
                pred = getattr(pred, "module", pred)
                on_dev = all(
                    getattr(pred, b).device.type == ck.dev
                    for b in ("class_counts", "class_weights", "seesaw_counts")
                )
                finite = all(math.isfinite(latest[k]) for k in ("total_loss", "loss_cls"))
                if loss == "softmax" and dtype in (None, "float16"):
                    ck.tiny_weights = os.path.join(out, "model_final.pth")
                amp = type(trainer._trainer).__name__
                note = f"loss_cls {latest['loss_cls']:.4f}, {amp}, buffers on {ck.dev}: {on_dev}"
                return finite and on_dev, note

            ck.run("tiny", f"{loss} {dtype or 'float32'}", fn)


def meta_hook(trainer):
    return next(h for h in trainer._hooks if type(h).__name__ == "MetaReweigher")


def part_meta(ck):
    dtype = "float16" if ck.cuda else None
    for meta_loss in ("plain", "balanced"):

        def fn(meta_loss=meta_loss):
            opts = [
                "BALMS.META.ENABLED",
                "True",
                "BALMS.META.META_LOSS",
                meta_loss,
                "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
                "balanced_softmax",
                *amp_opts(dtype),
            ]
            trainer, latest, _ = train_tiny(ck, f"meta_{meta_loss}", *opts, iters=4)
            hook = meta_hook(trainer)
            w = hook.predictor.class_weights
            moved = bool((w != w[0]).any())
            ok = hook.meta_steps == 4 and hook.psi.device.type == ck.dev and moved
            ok = ok and math.isfinite(latest.get("meta/loss", float("nan")))
            note = (
                f"{hook.meta_steps} meta steps, psi on {hook.psi.device.type}, autocast "
                f"{hook.amp}, meta/loss {latest.get('meta/loss', float('nan')):.4f}"
            )
            return ok, note

        ck.run("meta", f"{meta_loss} meta loss", fn)

    def stage2():
        opts = [
            "BALMS.META.ENABLED",
            "True",
            "BALMS.META.CACHE_FEATURES",
            "True",
            "BALMS.TRAINABLE_PARAMS",
            "['cls_score']",
            "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
            "balanced_softmax",
            "MODEL.WEIGHTS",
            ck.tiny_weights or "",
            *amp_opts(dtype),
        ]
        trainer, latest, _ = train_tiny(ck, "meta_stage2_cache", *opts, iters=6)
        hook = meta_hook(trainer)
        ok = hook.meta_steps == 6 and len(hook.cache) > 0 and hook.psi.device.type == ck.dev
        from_ = "a tiny softmax model" if ck.tiny_weights else "random weights"
        return ok, f"{len(hook.cache)} meta images cached, from {from_}"

    ck.run("meta", "stage 2 CACHE_FEATURES", stage2)


def part_eval(ck):
    def fn():
        from detectron2.checkpoint import DetectionCheckpointer

        from balms_det.engine.trainer import BalmsTrainer, setup_cfg

        opts = ["MODEL.DEVICE", ck.dev, "OUTPUT_DIR", os.path.join(ck.tmp, "eval")]
        cfg = setup_cfg(TINY, opts)
        model = BalmsTrainer.build_model(cfg)
        if ck.tiny_weights:
            DetectionCheckpointer(model).load(ck.tiny_weights)
        res = BalmsTrainer.test(cfg, model)
        res = res.get(cfg.DATASETS.TEST[0], res)
        ok = {"bbox", "segm"} <= set(res) and all(math.isfinite(res[t]["AP"]) for t in res)
        on = next(model.parameters()).device.type
        ap = ", ".join(f"{t} AP {res[t]['AP']:.2f}" for t in ("bbox", "segm") if t in res)
        return ok and on == ck.dev, f"{ap} (model on {on}; 3-iteration weights: AP ~ 0)"

    ck.run("eval", "tiny val, BalmsLVISEvaluator", fn)


# ------------------------------------------------------------------------------------------
# Syncs
# ------------------------------------------------------------------------------------------
def part_syncs(ck):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from balms_det.engine.trainer import setup_cfg
    from balms_det.modeling.roi_heads import LOSS_FAMILIES
    from balms_det.sync_counter import SyncCounter, cuda_sync_warnings

    amp = torch.autocast("cuda", dtype=torch.float16) if ck.cuda else contextlib.nullcontext()

    def counted(step):
        with contextlib.ExitStack() as stack:
            warned = stack.enter_context(cuda_sync_warnings()) if ck.cuda else None
            counter = stack.enter_context(SyncCounter())
            step()
            ck.sync()
        return warned, counter

    def note_of(warned, counter):
        note = f"SyncCounter {counter.count}"
        if warned is not None:
            note += f"; sync_debug_mode: balms-det {len(warned['ours'])}, others {warned['others']}"
        sites = sorted({f"{os.path.basename(f)}:{n}" for f, n, _ in (warned or {}).get("ours", [])})
        return note + (f" at {', '.join(sites)}" if sites else "")

    cfg0 = setup_cfg(TINY, ["MODEL.DEVICE", ck.dev])
    mapper = DatasetMapper(cfg0, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(cfg0.DATASETS.TRAIN[0])[:2]]
    for loss in LOSS_FAMILIES:

        def fn(loss=loss):
            cfg = setup_cfg(TINY, ["MODEL.DEVICE", ck.dev, "MODEL.ROI_BOX_HEAD.BALMS.LOSS", loss])
            torch.manual_seed(0)
            model = build_model(cfg)

            def step(it=1):
                with EventStorage(it), amp:
                    losses = model(batch)
                sum(losses.values()).backward()

            step()
            step()  # warm: counts resolved, weights checked
            warned, counter = counted(step)
            ours = counter.count + (len(warned["ours"]) if warned else 0)
            return ours == 0, note_of(warned, counter)

        ck.run("syncs", f"training step {loss}", fn)

    def meta():
        from balms_det.engine.meta_reweigher import MetaReweigher

        cfg = setup_cfg(
            TINY, ["MODEL.DEVICE", ck.dev, "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax"]
        )
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        hook = MetaReweigher(
            model=model,
            meta_dataset=DatasetCatalog.get(cfg.DATASETS.TRAIN[0]),
            meta_mapper=DatasetMapper(cfg, is_train=True),
            optimizer=opt,
            seed=0,
            amp="float16" if ck.cuda else False,
            log_period=1000,
        )
        hook.trainer = types.SimpleNamespace(iter=0, max_iter=10**6)
        hook.before_train()
        hook.amp = torch.float16 if ck.cuda else None

        def train_and_meta(it):
            hook.trainer.iter = it
            with EventStorage(it):
                with amp:
                    losses = model(batch)
                sum(losses.values()).backward()
                opt.step()
                opt.zero_grad()
                return lambda: hook.after_step()

        with EventStorage(0):
            train_and_meta(0)()
        step = train_and_meta(1)
        with EventStorage(1):
            warned, counter = counted(step)
        ours = counter.count + (len(warned["ours"]) if warned else 0)
        return ours == 0, note_of(warned, counter) + " (Detectron2's meta-batch forward in others)"

    ck.run("syncs", "meta step (no log)", meta)


# ------------------------------------------------------------------------------------------
# LVIS size
# ------------------------------------------------------------------------------------------
K_LVIS = 1203


def lvis_cat_info(ck):
    path = os.path.join(ck.tmp, "lvis_like_cat_info.json")
    counts = torch.logspace(0, 4, K_LVIS).round().long().tolist()  # 1 .. 10,000 images
    cats = [
        {"id": i + 1, "name": f"c{i}", "image_count": c, "instance_count": 2 * c}
        for i, c in enumerate(counts)
    ]
    with open(path, "w") as f:
        json.dump({"num_images": 100000, "categories": cats}, f)
    return path


def synthetic_image(ck, seed, size):
    """One 800 x 1067 (or ``size``) image with 10 boxes of random LVIS classes and their masks,
    already on the device."""
    from detectron2.structures import BitMasks, Boxes, Instances

    h, w = size
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
    n = 10
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.1 + 0.2 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], 1)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes.to(ck.dev))
    inst.gt_classes = torch.randint(0, K_LVIS, (n,), generator=g).to(ck.dev)
    inst.gt_masks = BitMasks(masks.to(ck.dev))
    return {"image": img.to(ck.dev), "height": h, "width": w, "instances": inst}


LVIS_LIKE = "balms_gpu_check_lvis_like"  # a training set known by its counts file only


def lvis_model(ck, heads, loss, cat_info):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from balms_det.engine.trainer import setup_cfg
    from balms_det.modeling.roi_heads import resolve_class_counts

    opts = [
        "MODEL.WEIGHTS",
        "",
        "MODEL.DEVICE",
        ck.dev,
        "MODEL.ROI_HEADS.NAME",
        heads,
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        loss,
        "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO",
        cat_info,
        "DATASETS.TRAIN",
        f"('{LVIS_LIKE}',)",
        "DATASETS.TEST",
        "()",
    ]
    if LVIS_LIKE not in DatasetCatalog.list():
        DatasetCatalog.register(LVIS_LIKE, list)  # no images: the counts come from CAT_INFO
    cfg = setup_cfg(LVIS_BASE, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    resolve_class_counts(model)
    model.train()
    return cfg, model


def peak_note(ck, peak, base):
    if not ck.cuda:
        return "CPU, one step: a run check, not a timing"
    return f"peak {peak:.2f} / {base:.2f} GiB"


def timed_steps(ck, model, batch, n_warm, n, before=None, after=None):
    """Seconds per training step (AMP float16 on CUDA) and the peak memory in GiB;
    ``before(optimizer)`` runs before the first step, ``after(i)`` after each. Learning rate 0
    (as benchmarks/bench_cost.py): every operation of a step runs, the randomly initialised
    weights stay as they are (they would diverge on noise), and every setting sees the same
    proposals and sampled ROIs."""
    from detectron2.utils.events import EventStorage

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=ck.cuda)
    amp = torch.autocast("cuda", dtype=torch.float16) if ck.cuda else contextlib.nullcontext()
    if before is not None:
        before(opt)
    if ck.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for i in range(n_warm + n):
        if i == n_warm:
            ck.sync()
            t0 = time.perf_counter()
        with EventStorage(i):
            with amp:
                losses = model(batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()
            if after is not None:
                after(i)
    ck.sync()
    per_step = (time.perf_counter() - t0) / n
    peak = torch.cuda.max_memory_allocated() / 2**30 if ck.cuda else float("nan")
    return per_step, peak


def part_lvis(ck):
    from balms_det.modeling.roi_heads import LOSS_FAMILIES

    size = (800, 1067) if ck.cuda else (128, 160)
    n_warm, n = (3, 10) if ck.cuda else (0, 1)
    rounds = 2 if ck.cuda else 1
    cat_info = lvis_cat_info(ck)
    batch = [synthetic_image(ck, s, size) for s in (0, 1)]
    settings = [("StandardROIHeads", "softmax")] + [("BalmsROIHeads", x) for x in LOSS_FAMILIES]
    best = {}
    for r in range(rounds):  # side by side, each setting once per round; the best round counts
        for heads, loss in settings:
            if ck.left() < 30:
                break

            def fn(heads=heads, loss=loss):
                _, model = lvis_model(ck, heads, loss, cat_info)
                t, peak = timed_steps(ck, model, batch, n_warm, n)
                prev = best.get((heads, loss))
                best[(heads, loss)] = (min(t, prev[0]) if prev else t, peak)
                del model
                if ck.cuda:
                    torch.cuda.empty_cache()
                return math.isfinite(t), f"round {r + 1}: {t * 1000:.1f} ms/step"

            ck.run("lvis", f"{heads} {loss}", fn, min_left=30)
    base = best.get(("StandardROIHeads", "softmax"))
    for (heads, loss), (t, peak) in best.items():
        if heads == "BalmsROIHeads" and base:
            ratio = t / base[0]
            ck.rows.append(
                (
                    "lvis ratio",
                    f"Balms {loss} / Standard",
                    "ok",
                    "-",
                    f"{ratio:.3f} ({t * 1000:.1f} / {base[0] * 1000:.1f} ms), "
                    + peak_note(ck, peak, base[1]),
                )
            )

    def meta():
        from balms_det.engine.meta_reweigher import MetaReweigher

        _, model = lvis_model(ck, "BalmsROIHeads", "balanced_softmax", cat_info)
        plain, peak_plain = timed_steps(ck, model, batch, n_warm, n)
        meta_set = [
            {
                "file_name": f"synthetic_{i}",
                "image_id": i,
                "height": size[0],
                "width": size[1],
                "annotations": [{"category_id": (i * 10 + j) % K_LVIS} for j in range(10)],
            }
            for i in range(128)
        ]

        def mapper(d):
            return synthetic_image(ck, 1000 + d["image_id"], size)

        hook = MetaReweigher(
            model=model,
            meta_dataset=meta_set,
            meta_mapper=mapper,
            meta_batch_size=2,
            seed=0,
            log_period=20,
        )
        hook.trainer = types.SimpleNamespace(iter=0, max_iter=10**6)

        def before(opt):
            hook.optimizer = opt
            hook.before_train()
            hook.amp = torch.float16 if ck.cuda else None  # the AMP of timed_steps

        def after(i):
            hook.trainer.iter = i
            hook.after_step()

        with_meta, peak_meta = timed_steps(ck, model, batch, n_warm, n, before, after)
        note = (
            f"{with_meta / plain:.3f} ({with_meta * 1000:.1f} / {plain * 1000:.1f} ms), "
            f"{peak_note(ck, peak_meta, peak_plain)}, {hook.meta_steps} meta steps"
        )
        return hook.meta_steps == n_warm + n, note

    ck.run("lvis ratio", "Meta Reweigher step / plain step", meta, min_left=30)


# ------------------------------------------------------------------------------------------
PARTS = {
    "tiny": part_tiny,
    "meta": part_meta,
    "eval": part_eval,
    "syncs": part_syncs,
    "lvis": part_lvis,
}


def environment(ck):
    import detectron2
    import numpy

    try:
        from detectron2 import _C  # noqa: F401

        d2c = "built"
    except ImportError as e:
        d2c = f"missing ({e})"
    gpu = torch.cuda.get_device_name(0) if ck.cuda else "none (CPU run)"
    return (
        f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"detectron2 {detectron2.__version__} (_C {d2c}), GPU {gpu}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=480.0, help="time for the parts (8 min)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--out", default="", help="folder for gpu_check.md (the table)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "gpu_check: no CUDA device visible to torch "
            f"{torch.__version__}; this is the first CUDA call. On a machine without a GPU run "
            "`scripts/gpu_check.sh --dry-run` (the same check on the CPU)"
        )
    torch.backends.cuda.matmul.allow_tf32 = True
    ck = Check(args)
    env = environment(ck)
    print(env, flush=True)
    try:
        for name in args.parts:
            PARTS[name](ck)
    finally:
        elapsed = time.perf_counter() - ck.start
        text = (
            f"balms-det GPU check ({args.device}), {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{elapsed:.0f} s\n{env}\n\n{ck.table()}\n"
        )
        print("\n" + text, flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
                f.write(text)
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
