"""Balanced Training and Merging (BTM; docs/METHODS.md): the pipeline.

Between stage 1 and stage 2 of decoupled training, BTM fine-tunes the whole stage-1 detector on
``N_D`` class-balanced few-shot subsets (:mod:`balms_det.data.balanced_subsets`) and averages the
``N_D`` fine-tuned weight sets (:mod:`balms_det.engine.merging`), so the final model costs
nothing extra at inference.

:func:`run_btm_pipeline`: sample subsets, fine-tune on each (sequentially, each through
Detectron2's ``launch``, so a fine-tune may use several GPUs and machines), merge, optionally run
stage 2, evaluate every model and write a table. Resumable: every finished step is skipped on a
re-run. With several machines (a shared output directory), only machine 0 writes the shared
files (configs, subsets, the merged checkpoint, tables); the launched workers of the other
machines read them after Detectron2's rendezvous, which machine 0 joins only once it wrote them.
"""

import hashlib
import json
import logging
import os
import shlex
from collections import OrderedDict

import torch

from ..longtail import frequency_groups
from ..modeling.roi_heads import LOSS_FAMILIES
from ..utils import atomic_write, atomic_write_json, format_examples, markdown_table
from .merging import merge_checkpoints, normalize_weights

__all__ = [
    "plain_loss",
    "finetune_cfg",
    "run_btm_pipeline",
    "results_table",
    "format_results_table",
    "METRIC_KEYS",
]

logger = logging.getLogger("balms_det.btm")

METRIC_KEYS = ("AP", "APr", "APc", "APf", "hmean", "gmean", "min")

# ---------------------------------------------------------------------------------------------
# Configs of the pipeline's runs
# ---------------------------------------------------------------------------------------------


def plain_loss(loss):
    """The plain (not re-balanced) loss of the same classifier layout: ``sigmoid`` for the
    sigmoid family, ``softmax`` otherwise."""
    return "sigmoid" if LOSS_FAMILIES[loss] == "sigmoid" else "softmax"


def _resolve_finetune_loss(cfg, finetune_loss):
    loss = cfg.MODEL.ROI_BOX_HEAD.BALMS.LOSS
    if finetune_loss in ("plain", None, ""):
        return plain_loss(loss)
    if finetune_loss == "same":
        return loss
    if finetune_loss not in LOSS_FAMILIES:
        raise ValueError(
            f"finetune loss must be 'plain', 'same' or one of {list(LOSS_FAMILIES)}, got "
            f"'{finetune_loss}'"
        )
    return finetune_loss


def finetune_cfg(cfg, train_dataset, weights, output_dir, finetune_loss="plain", opts=()):
    """Config of one few-shot fine-tune, derived from the stage-1 (BTM) config ``cfg``.

    The whole model is trained (``BALMS.TRAINABLE_PARAMS`` emptied) from ``weights`` on
    ``train_dataset`` for ``BALMS.BTM.ITERS`` iterations at constant lr ``BALMS.BTM.BASE_LR``
    (no steps; warm-up ``min(SOLVER.WARMUP_ITERS, ITERS // 10)``), with the plain sampler
    (``TrainingSampler``: the subset is already balanced) and, by default, the plain loss of the
    classifier's layout (``finetune_loss="plain"``; ``"same"`` keeps stage 1's loss, whose prior
    then comes from the checkpoint's ``class_counts`` = the full training set's, or a loss name).
    No evaluation during training. ``opts`` are applied last.
    """
    c = cfg.clone()
    c.defrost()
    btm = cfg.BALMS.BTM
    c.MODEL.WEIGHTS = os.fspath(weights)
    c.DATASETS.TRAIN = (train_dataset,)
    c.DATASETS.TEST = ()
    c.TEST.EVAL_PERIOD = 0
    c.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    c.BALMS.TRAINABLE_PARAMS = []
    c.MODEL.ROI_BOX_HEAD.BALMS.LOSS = _resolve_finetune_loss(cfg, finetune_loss)
    c.SOLVER.BASE_LR = float(btm.BASE_LR)
    c.SOLVER.MAX_ITER = int(btm.ITERS)
    c.SOLVER.STEPS = ()
    c.SOLVER.WARMUP_ITERS = int(min(cfg.SOLVER.WARMUP_ITERS, btm.ITERS // 10))
    c.OUTPUT_DIR = os.fspath(output_dir)
    c.merge_from_list(list(opts))
    c.freeze()
    return c


def stage2_cfg(cfg2, weights, output_dir, opts=()):
    """Config of stage 2 (classifier re-training, the loss of ``cfg2``) from ``weights``."""
    c = cfg2.clone()
    c.defrost()
    c.MODEL.WEIGHTS = os.fspath(weights)
    c.DATASETS.TEST = ()
    c.TEST.EVAL_PERIOD = 0
    c.OUTPUT_DIR = os.fspath(output_dir)
    c.merge_from_list(list(opts))
    c.freeze()
    return c


def eval_cfg(model_cfg, test_cfg, train_datasets, output_dir):
    """``model_cfg`` (the config a model was trained with) set to evaluate on ``test_cfg``'s
    DATASETS.TEST, with the training datasets that define the frequency groups."""
    c = model_cfg.clone()
    c.defrost()
    c.DATASETS.TRAIN = tuple(train_datasets)
    c.DATASETS.TEST = tuple(test_cfg.DATASETS.TEST)
    c.OUTPUT_DIR = os.fspath(output_dir)
    c.freeze()
    return c


def _flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


# Config keys that change what an evaluation computes, not what a training learns: Detectron2's
# inference settings (TEST.*, DATASETS.TEST and the *_TEST keys such as
# MODEL.ROI_HEADS.SCORE_THRESH_TEST or INPUT.MIN_SIZE_TEST), the evaluator's (BALMS.EVAL.*) and
# the post-hoc logit adjustment. Changing only these re-evaluates a finished BTM step.
INFERENCE_ONLY_PREFIXES = ("TEST.", "BALMS.EVAL.")
INFERENCE_ONLY_KEYS = ("DATASETS.TEST", "MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU")


def inference_only(key):
    """True for a config key that only inference reads (see ``INFERENCE_ONLY_PREFIXES``)."""
    return (
        key.startswith(INFERENCE_ONLY_PREFIXES)
        or key in INFERENCE_ONLY_KEYS
        or key.rsplit(".", 1)[-1].endswith("_TEST")
    )


def _write_cfg(cfg, path, overwrite=False):
    """Write ``cfg`` to ``path``; when ``path`` exists with different values (and not
    ``overwrite``), return the differing ``(key, old, new)``, sorted by key (the file is left
    as is), else []."""
    import yaml

    text = cfg.dump()
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = _flatten(yaml.safe_load(f) or {})
        new = _flatten(yaml.safe_load(text))
        return [
            (k, old.get(k), new.get(k))
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
    atomic_write(path, lambda f: f.write(text))
    return []


def _training_done(output_dir):
    """A Detectron2 training is finished when its last checkpoint is model_final.pth (the
    ``last_checkpoint`` tag is written after the file)."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.exists(os.path.join(output_dir, "model_final.pth")) or not os.path.exists(tag):
        return False
    with open(tag) as f:
        return f.read().strip() == "model_final.pth"


# ---------------------------------------------------------------------------------------------
# Workers (run through detectron2.engine.launch: module-level, picklable)
# ---------------------------------------------------------------------------------------------


def _setup_worker(cfg_file, subsets_file, log_dir):
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from .trainer import setup_cfg

    rank = comm.get_rank()
    for name in ("fvcore", "detectron2", "balms_det"):
        setup_logger(log_dir, distributed_rank=rank, name=name)
    cfg = setup_cfg(cfg_file)
    if subsets_file:  # each subset from its own file: a fine-tune reads only its subset
        from ..data.balanced_subsets import register_subsets_file

        register_subsets_file(subsets_file)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    return cfg


def _train_worker(cfg_file, subsets_file, log_dir):
    from detectron2.utils import comm

    from .trainer import BalmsTrainer

    cfg = _setup_worker(cfg_file, subsets_file, log_dir)
    trainer = BalmsTrainer(cfg)
    trainer.resume_or_load(resume=True)  # continues an interrupted run from its last checkpoint
    trainer.train()
    comm.synchronize()  # model_final.pth is written (by rank 0) before any process returns


def _eval_worker(cfg_file, weights, result_file, log_dir, settings=""):
    from detectron2.utils import comm

    from .checkpoint import BalmsCheckpointer
    from .trainer import BalmsTrainer

    cfg = _setup_worker(cfg_file, None, log_dir)
    model = BalmsTrainer.build_model(cfg)
    BalmsCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load(weights)
    res = BalmsTrainer.test(cfg, model)
    if comm.is_main_process():
        atomic_write_json(
            {
                "weights": os.path.abspath(weights),
                "weights_mtime": os.path.getmtime(weights),
                "settings": settings,  # hash of the evaluation config
                "results": _per_dataset(res, cfg.DATASETS.TEST),
            },
            result_file,
        )
    comm.synchronize()


def _per_dataset(results, test_names):
    """DefaultTrainer.test returns one dataset's results unwrapped: wrap them back."""
    if isinstance(results, dict) and any(k in results for k in ("bbox", "segm")):
        return {test_names[0]: results}
    return dict(results)


# ---------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------


def results_table(rows, tasks=("segm", "bbox")):
    """Flatten ``[(label, per-dataset results)]`` to a list of dicts, one per label, dataset and
    task, with the metrics of :data:`METRIC_KEYS` (%)."""
    out = []
    for label, per_dataset in rows:
        for dataset, per_task in (per_dataset or {}).items():
            for task in tasks:
                m = (per_task or {}).get(task)
                if not isinstance(m, dict):
                    continue
                row = {"model": label, "dataset": dataset, "task": task}
                row.update({k: m.get(k) for k in METRIC_KEYS})
                out.append(row)
    return out


def format_results_table(table):
    """Markdown tables (one per task, a dataset column when several datasets)."""
    if not table:
        return "(no results)"
    blocks = []
    several = len({r["dataset"] for r in table}) > 1
    for task in dict.fromkeys(r["task"] for r in table):
        rows = [r for r in table if r["task"] == task]
        head = ["model"] + (["dataset"] if several else []) + list(METRIC_KEYS)
        cells = [
            [r["model"]] + ([r["dataset"]] if several else []) + [r.get(k) for k in METRIC_KEYS]
            for r in rows
        ]
        blocks.append(f"{task} (%):\n\n" + markdown_table(cells, head))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def _split_opts(opts):
    if isinstance(opts, str):
        return shlex.split(opts)
    return list(opts or ())


def _write_subsets_md(path, cfg, source, mode, stats, groups):
    from detectron2.data import MetadataCatalog

    from ..data.balanced_subsets import format_subset_statistics

    btm = cfg.BALMS.BTM
    n, K = len(stats), cfg.MODEL.ROI_HEADS.NUM_CLASSES
    names = MetadataCatalog.get(source[0]).get("thing_classes", None)
    rows = [
        [names[c] if names else str(c), groups[c], str(stats[0]["available_images"][c])]
        + [f"{s['selected_images'][c]}/{s['images'][c]}/{s['instances'][c]}" for s in stats]
        for c in range(K)
    ]
    text = (
        f"# BTM subsets of {source}: N_D={n}, N_C={btm.SHOTS}, seed={btm.SEED}, mode={mode}\n\n"
        "Achieved non-crowd instances per class (classes with training images), mean per "
        f"frequency group:\n\n{format_subset_statistics(stats, groups)}\n\n"
        "Per class (available / selected images / achieved images / achieved instances), one "
        "column per subset:\n\n"
        + markdown_table(rows, ["class", "group", "available"] + [f"s{i}" for i in range(n)])
        + "\n"
    )
    atomic_write(path, lambda f: f.write(text))


def _warn_short_classes(cfg, source, class_images, subsets):
    """Warn about classes with no more training images than BALMS.BTM.SHOTS: every subset takes
    all of them, so those classes are identical in every subset (all subsets, when all classes
    are short: N_D identical fine-tunes)."""
    from detectron2.data import MetadataCatalog

    shots = int(cfg.BALMS.BTM.SHOTS)
    names = MetadataCatalog.get(source[0]).get("thing_classes", None)
    short = [(c, len(imgs)) for c, imgs in enumerate(class_images) if 0 < len(imgs) <= shots]
    if not short:
        return
    logger.warning(
        "BTM: %d of %d classes have at most BALMS.BTM.SHOTS = %d training images, so every "
        "subset takes all of their images: %s",
        len(short),
        len(class_images),
        shots,
        format_examples([f"{names[c] if names else c} ({n})" for c, n in short], 30, sort=False),
    )
    if len({tuple(s.indices) for s in subsets}) == 1 and len(subsets) > 1:
        logger.warning(
            "BTM: all %d subsets are the same images (the data holds no more than SHOTS = %d "
            "images of each class): the fine-tunes will be identical; lower BALMS.BTM.SHOTS",
            len(subsets),
            shots,
        )


def _draw_subsets(cfg, mode, params, path, output_dir):
    from ..data.balanced_subsets import (
        _load_source,
        format_subset_statistics,
        images_per_class,
        sample_balanced_subsets,
        save_subsets,
        subset_statistics,
        write_subset_files,
    )

    btm, source, K = cfg.BALMS.BTM, params["source"], params["num_classes"]
    n = int(btm.NUM_SUBSETS)
    dicts = _load_source(source)
    class_images = images_per_class(dicts, K)  # one scan of the training set
    subsets = sample_balanced_subsets(dicts, K, n, btm.SHOTS, btm.SEED, mode, class_images)
    _warn_short_classes(cfg, source, class_images, subsets)
    stats = [subset_statistics(dicts, s, K, class_images) for s in subsets]
    groups = frequency_groups([len(c) for c in class_images])
    write_subset_files(path, source, subsets, dicts)  # before subsets.json names them
    save_subsets(path, source, K, subsets, stats, params)
    _write_subsets_md(os.path.join(output_dir, "subsets.md"), cfg, source, mode, stats, groups)
    logger.info(
        "BTM: %d subsets of %s written to %s:\n%s",
        n,
        source,
        path,
        format_subset_statistics(stats, groups),
    )
    return subsets, stats


def prepare_subsets(cfg, output_dir, mode="fill", main=True):
    """Draw (or reload) the ``BALMS.BTM.NUM_SUBSETS`` subsets of ``cfg.DATASETS.TRAIN``, write
    ``subsets.json``, ``subsets.md`` (achieved counts) and each subset's dicts
    (``subsets/subset_<i>.pkl``: the fine-tunes read only these) and register them. On a
    machine other than the main one (``main=False``) nothing is drawn or written: only the
    names are returned (the launched workers read ``subsets.json``).

    Returns (path of subsets.json, registered names, statistics).
    """
    from ..data.balanced_subsets import (
        load_subsets,
        register_balanced_subsets,
        subset_dataset_name,
        subset_file,
        write_subset_files,
    )

    btm = cfg.BALMS.BTM
    source = list(cfg.DATASETS.TRAIN)
    K = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    params = dict(seed=int(btm.SEED), shots=int(btm.SHOTS), mode=mode, source=source, num_classes=K)
    path = os.path.join(output_dir, "subsets.json")
    n = int(btm.NUM_SUBSETS)
    if not main:
        return path, [subset_dataset_name(source, int(btm.SEED), i) for i in range(n)], None
    subsets = stats = None
    if os.path.exists(path):
        data, saved = load_subsets(path)
        old = data.get("params", {})
        if old != params:
            diff = ", ".join(
                f"{k}: {old.get(k)!r} -> {params[k]!r}" for k in params if old.get(k) != params[k]
            )
            raise ValueError(
                f"{path} holds subsets drawn with other settings ({diff}); use another output "
                "directory (or delete it) to draw new subsets"
            )
        if len(saved) >= n:
            subsets, stats = saved[:n], data.get("statistics", [])[:n]
    if subsets is None:
        subsets, stats = _draw_subsets(cfg, mode, params, path, output_dir)
    files = [subset_file(path, s.index) for s in subsets]
    missing = [s for s, f in zip(subsets, files) if not os.path.exists(f)]
    if missing:  # drawn by an older version, or deleted: one read of the source writes them
        write_subset_files(path, source, missing)
    reg = register_balanced_subsets(source, subsets, files)
    return path, reg, stats


class _Pipeline:
    """The steps of :func:`run_btm_pipeline` (one object per run)."""

    def __init__(self, cfg, output_dir, launch_args, main):
        self.cfg, self.output_dir, self.launch_args, self.main = cfg, output_dir, launch_args, main
        self.results = OrderedDict()

    def run(self, fn, *args):
        from detectron2.engine import launch

        num_gpus, num_machines, machine_rank, dist_url = self.launch_args
        launch(
            fn,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )

    def train(self, run_cfg, subsets_file, what):
        out = run_cfg.OUTPUT_DIR
        cfg_file = os.path.join(out, "btm_config.yaml")
        done = _training_done(out)
        diffs = _write_cfg(run_cfg, cfg_file) if self.main else []
        trained = [d for d in diffs if not inference_only(d[0])]
        if trained:
            k, old, new = trained[0]
            if done:
                raise ValueError(
                    f"{what} in {out} was trained with {k} = {old!r}, the current settings give "
                    f"{new!r}: use another output directory (or delete {out}) to retrain it"
                )
            logger.warning("BTM: %s restarts with new settings (%s: %r -> %r)", what, k, old, new)
        elif diffs:
            logger.info(
                "BTM: %s: only inference settings changed (%s): %s",
                what,
                ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs),
                "kept, evaluated with the new ones" if done else "it continues with them",
            )
        if diffs:
            _write_cfg(run_cfg, cfg_file, overwrite=True)
        if done:
            logger.info("BTM: %s already done (%s), skipped", what, out)
            return
        logger.info("BTM: %s -> %s", what, out)
        self.run(_train_worker, cfg_file, subsets_file, self.output_dir)
        if not _training_done(out):
            raise RuntimeError(f"{what} finished without writing {out}/model_final.pth")

    def evaluate(self, label, model_cfg, weights):
        path = os.path.join(self.output_dir, "eval", f"{label}.json")
        out = os.path.join(self.output_dir, "eval", label)
        cfg_file = os.path.join(out, "btm_config.yaml")
        ecfg = eval_cfg(model_cfg, self.cfg, list(self.cfg.DATASETS.TRAIN), out)
        # a cached evaluation serves the same weights evaluated with the same settings
        settings = hashlib.sha1(ecfg.dump().encode()).hexdigest()
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            if (
                cached.get("weights") == os.path.abspath(weights)
                and cached.get("weights_mtime") == os.path.getmtime(weights)
                and cached.get("settings") == settings
            ):
                self.results[label] = cached["results"]
                logger.info("BTM: evaluation of %s cached (%s)", label, path)
                return
        if self.main:
            _write_cfg(ecfg, cfg_file, overwrite=True)
        logger.info("BTM: evaluating %s (%s)", label, weights)
        self.run(_eval_worker, cfg_file, os.path.abspath(weights), path, self.output_dir, settings)
        if self.main:
            with open(path) as f:
                self.results[label] = json.load(f)["results"]

    def merge(self, ft_weights):
        merged = os.path.join(self.output_dir, "merged.pth")
        if not self.main:
            return merged
        n = len(ft_weights)
        weights, total = normalize_weights(list(self.cfg.BALMS.BTM.MERGE_WEIGHTS), n)
        want = {
            "sources": [os.path.abspath(p) for p in ft_weights],
            "weights": [w / total for w in weights],
        }
        have = None
        if os.path.exists(merged):
            have = torch.load(merged, map_location="cpu").get("btm_merge")
        if have == want and all(
            os.path.getmtime(w) <= os.path.getmtime(merged) for w in ft_weights
        ):
            logger.info("BTM: %s is up to date, merge skipped", merged)
        else:
            logger.info(
                "BTM: merging %d checkpoints (weights %s) -> %s", n, want["weights"], merged
            )
            merge_checkpoints(ft_weights, weights, merged)
        return merged

    def stage2(self, stage2, label, src, stage2_opts):
        sub = "stage2" if label == "btm+stage2" else "stage2_from_stage1"
        out = os.path.join(self.output_dir, sub)
        c = stage2_cfg(stage2, src, out, stage2_opts)
        stamp = os.path.join(out, "btm_input.json")
        if _training_done(out) and os.path.exists(stamp):
            with open(stamp) as f:
                old = json.load(f)
            if old.get("mtime") != os.path.getmtime(src):
                raise ValueError(
                    f"{out} was trained from an older {src}: delete {out} to redo stage 2"
                )
        if not _training_done(out) and self.main:
            atomic_write_json({"weights": src, "mtime": os.path.getmtime(src)}, stamp)
        self.train(c, None, f"stage 2 ({label}) from {src}")
        return c, os.path.join(out, "model_final.pth")

    def write_table(self):
        table = results_table(list(self.results.items()))
        md = format_results_table(table)
        if self.main:
            out = self.output_dir
            atomic_write_json(
                {"table": table, "results": self.results}, os.path.join(out, "btm_results.json")
            )
            atomic_write(os.path.join(out, "btm_results.md"), lambda f: f.write(md + "\n"))
            print(f"\nBTM results ({out}):\n\n{md}\n", flush=True)
        return table, md


def run_btm_pipeline(
    cfg,
    output_dir,
    stage1_weights=None,
    stage2=None,
    stage2_opts=(),
    finetune_opts=(),
    finetune_loss="plain",
    subset_mode="fill",
    num_gpus=1,
    num_machines=1,
    machine_rank=0,
    dist_url="auto",
    eval_stage1=True,
    eval_finetunes=True,
    stage2_baseline=False,
):
    """Run BTM from a stage-1 checkpoint; every finished step is skipped on a re-run.

    Args:
        cfg: the stage-1 config with the ``BALMS.BTM`` settings (frozen CfgNode of
            :func:`balms_det.engine.trainer.setup_cfg`).
        output_dir: where everything goes: ``subsets.json``/``subsets.md``,
            ``finetune_<i>/model_final.pth``, ``merged.pth``, ``stage2/model_final.pth``,
            ``eval/<model>.json`` and the table ``btm_results.{md,json}``.
        stage1_weights: the stage-1 checkpoint (default ``cfg.MODEL.WEIGHTS``).
        stage2: a stage-2 config (CfgNode) or None to stop after merging.
        stage2_opts, finetune_opts: extra ``KEY VALUE`` overrides (list or one string).
        finetune_loss: ``"plain"`` (default), ``"same"`` or a loss name (see :func:`finetune_cfg`).
        subset_mode: ``"fill"`` or ``"independent"`` (see balanced_subsets).
        num_gpus, num_machines, machine_rank, dist_url: passed to Detectron2's ``launch`` for
            every fine-tune, stage 2 and evaluation (several machines need a shared output_dir).
        eval_stage1, eval_finetunes: evaluate the stage-1 model / each fine-tuned model.
        stage2_baseline: also run stage 2 from the stage-1 model (the control without BTM).

    Returns:
        dict with ``table`` (rows of :func:`results_table`), ``markdown``, and the paths (the
        table is empty on machines other than machine 0).
    """
    from detectron2.utils.logger import setup_logger

    output_dir = os.path.abspath(os.fspath(output_dir))
    main = machine_rank == 0
    os.makedirs(output_dir, exist_ok=True)
    for name in ("fvcore", "detectron2", "balms_det"):
        setup_logger(output_dir if main else None, distributed_rank=machine_rank, name=name)
    stage1_weights = os.fspath(stage1_weights or cfg.MODEL.WEIGHTS)
    if not stage1_weights or not os.path.exists(stage1_weights):
        raise FileNotFoundError(
            f"Stage-1 checkpoint '{stage1_weights}' does not exist (train stage 1 first, or pass "
            "--stage1-weights / MODEL.WEIGHTS)"
        )
    stage1_weights = os.path.abspath(stage1_weights)
    p = _Pipeline(cfg, output_dir, (num_gpus, num_machines, machine_rank, dist_url), main)
    finetune_opts, stage2_opts = _split_opts(finetune_opts), _split_opts(stage2_opts)

    # 1. subsets; 2. fine-tunes (sequential; each may use several GPUs)
    subsets_file, subset_names, _ = prepare_subsets(cfg, output_dir, subset_mode, main)
    ft_cfgs, ft_weights = [], []
    for i, name in enumerate(subset_names):
        out = os.path.join(output_dir, f"finetune_{i}")
        c = finetune_cfg(cfg, name, stage1_weights, out, finetune_loss, finetune_opts)
        p.train(c, subsets_file, f"fine-tune {i + 1}/{len(subset_names)} on {name}")
        ft_cfgs.append(c)
        ft_weights.append(os.path.join(out, "model_final.pth"))

    # 3. merge; 4. stage 2
    merged = p.merge(ft_weights)
    s2 = OrderedDict()
    if stage2 is not None:
        s2["btm+stage2"] = p.stage2(stage2, "btm+stage2", merged, stage2_opts)
        if stage2_baseline:
            s2["stage1+stage2"] = p.stage2(stage2, "stage1+stage2", stage1_weights, stage2_opts)

    # 5. evaluation
    if eval_stage1:
        p.evaluate("stage1", cfg, stage1_weights)
    if eval_finetunes:
        for i, (c, w) in enumerate(zip(ft_cfgs, ft_weights)):
            p.evaluate(f"finetune_{i}", c, w)
    p.evaluate("btm_merged", ft_cfgs[0], merged)
    for label, (c, w) in s2.items():
        p.evaluate(label, c, w)
    table, md = p.write_table()
    return dict(
        table=table,
        markdown=md,
        results=p.results,
        merged=merged,
        final=s2["btm+stage2"][1] if s2 else None,
        subsets=subsets_file,
        finetunes=ft_weights,
    )
