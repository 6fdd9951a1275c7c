"""Balanced Training and Merging (BTM, REFERENCE.md section 6): weight merging and the pipeline.

Between stage 1 and stage 2 of decoupled training, BTM fine-tunes the whole stage-1 detector on
``N_D`` class-balanced few-shot subsets (:mod:`balms_det.data.balanced_subsets`) and averages the
``N_D`` fine-tuned weight sets, so the final model costs nothing extra at inference.

* :func:`merge_state_dicts` / :func:`merge_checkpoints`: parameter-by-parameter (weighted)
  average of checkpoints. Floating-point tensors (weights and BatchNorm running statistics) are
  averaged in float64 and cast back to the first checkpoint's dtype; tensors that are not
  floating point (``num_batches_tracked``, integer counters) and non-tensor entries are taken
  from the first checkpoint. Checkpoints whose keys or shapes differ are refused with an error
  naming the first mismatch.
* :func:`run_btm_pipeline`: sample subsets, fine-tune on each (sequentially, each through
  Detectron2's ``launch``, so a fine-tune may use several GPUs), merge, optionally run stage 2,
  evaluate every model and write a table. Resumable: every finished step is skipped on a re-run.
"""

import copy
import json
import logging
import os
import pickle
import shlex
from collections import OrderedDict

import numpy as np
import torch

from ..config import LOSSES, SIGMOID_LOSSES

__all__ = [
    "load_model_state",
    "merge_state_dicts",
    "merge_checkpoints",
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
# Merging
# ---------------------------------------------------------------------------------------------


def load_model_state(path_or_checkpoint):
    """The model state dict of a checkpoint file (``.pth`` of Detectron2's checkpointer, a plain
    state dict, or a Detectron2 ``.pkl`` with numpy arrays) or of an already loaded dict."""
    ckpt = path_or_checkpoint
    if isinstance(ckpt, (str, os.PathLike)):
        path = os.fspath(ckpt)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint '{path}' does not exist")
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                ckpt = pickle.load(f, encoding="latin1")
        else:
            ckpt = torch.load(path, map_location="cpu")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path_or_checkpoint!r} is not a state dict or a checkpoint dict")
    return OrderedDict(
        (k, torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in ckpt.items()
    )


def _describe(v):
    if torch.is_tensor(v):
        return f"tensor of shape {tuple(v.shape)} ({v.dtype})"
    return type(v).__name__


def _check_compatible(ref, ref_name, sd, name):
    for k, v in ref.items():
        if k not in sd:
            raise ValueError(
                f"Cannot merge: {name} lacks key '{k}' that {ref_name} has (first mismatch)"
            )
        w = sd[k]
        if torch.is_tensor(v) != torch.is_tensor(w):
            raise ValueError(
                f"Cannot merge: key '{k}' is a {_describe(v)} in {ref_name} but a "
                f"{_describe(w)} in {name} (first mismatch)"
            )
        if torch.is_tensor(v):
            if tuple(v.shape) != tuple(w.shape):
                raise ValueError(
                    f"Cannot merge: key '{k}' has shape {tuple(v.shape)} in {ref_name} but "
                    f"{tuple(w.shape)} in {name} (first mismatch)"
                )
            if v.is_floating_point() != w.is_floating_point():
                raise ValueError(
                    f"Cannot merge: key '{k}' is {v.dtype} in {ref_name} but {w.dtype} in "
                    f"{name} (first mismatch)"
                )
    extra = [k for k in sd if k not in ref]
    if extra:
        raise ValueError(
            f"Cannot merge: {name} has key '{extra[0]}' that {ref_name} lacks (first mismatch"
            f"{'' if len(extra) == 1 else f'; {len(extra)} extra keys'})"
        )


def _normalize_weights(weights, n):
    if weights is None or len(weights) == 0:
        return [1.0] * n, float(n)
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} merge weights given for {n} checkpoints")
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Merge weights must be finite, >= 0 and not all 0, got {weights}")
    return weights, float(sum(weights))


class _Merger:
    """Streaming weighted average: add state dicts one by one, then ``result()``."""

    def __init__(self, n, weights=None):
        self.n = n
        self.weights, self.total = _normalize_weights(weights, n)
        self.count = 0
        self.ref = None
        self.ref_name = None
        self.acc = None

    def add(self, sd, name):
        i = self.count
        if i >= self.n:
            raise ValueError(f"More than the announced {self.n} checkpoints")
        w = self.weights[i]
        if self.ref is None:
            self.ref, self.ref_name = sd, name
            self.acc = OrderedDict()
            for k, v in sd.items():
                if torch.is_tensor(v) and v.is_floating_point():
                    self.acc[k] = v.detach().to("cpu", torch.float64) * w
        else:
            _check_compatible(self.ref, self.ref_name, sd, name)
            for k, acc in self.acc.items():
                acc.add_(sd[k].detach().to("cpu", torch.float64), alpha=w)
        self.count += 1

    def result(self):
        if self.count != self.n:
            raise ValueError(f"Got {self.count} checkpoints, expected {self.n}")
        if self.n == 1:
            return OrderedDict(
                (k, v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                for k, v in self.ref.items()
            )
        out = OrderedDict()
        for k, v in self.ref.items():
            if k in self.acc:
                out[k] = (self.acc[k] / self.total).to(v.dtype)
            else:  # non-float buffers (counters) and non-tensors: from the first checkpoint
                out[k] = v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
        return out


def merge_state_dicts(state_dicts, weights=None, names=None):
    """Parameter-by-parameter average of model state dicts.

    Args:
        state_dicts (list[dict]): state dicts (or Detectron2 checkpoint dicts with a ``model``
            entry) with identical keys and shapes.
        weights (list[float]): optional non-negative weights, normalised by their sum; empty or
            None = uniform (1/N each).
        names (list[str]): names of the inputs used in error messages.

    Returns:
        OrderedDict: floating-point tensors are ``sum_i w_i x_i / sum_i w_i`` computed in float64
        and cast to the first input's dtype (exactly the mean for uniform weights, up to that
        final rounding); other tensors and entries come from the first input. One input is
        returned unchanged (as a copy).

    Raises:
        ValueError: keys or shapes differ (the message names the first mismatching key).
    """
    if not state_dicts:
        raise ValueError("Nothing to merge: no state dicts given")
    names = names or [f"checkpoint {i}" for i in range(len(state_dicts))]
    merger = _Merger(len(state_dicts), weights)
    for sd, name in zip(state_dicts, names):
        merger.add(load_model_state(sd), name)
    return merger.result()


def merge_checkpoints(paths, weights=None, output=None):
    """Average checkpoint files one at a time (memory: two model copies, float64).

    Returns the checkpoint dict ``{"model": merged state dict, "btm_merge": {"sources",
    "weights"}}`` and writes it to ``output`` (atomically) when given. Detectron2's checkpointer
    loads it.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("Nothing to merge: no checkpoint paths given")
    merger = _Merger(len(paths), weights)
    for p in paths:
        merger.add(load_model_state(p), f"'{p}'")
        logger.info("BTM merge: added %s", p)
    ckpt = {
        "model": merger.result(),
        "btm_merge": {
            "sources": [os.path.abspath(p) for p in paths],
            "weights": [w / merger.total for w in merger.weights],
        },
    }
    if output:
        _atomic_torch_save(ckpt, output)
    return ckpt


def _atomic_torch_save(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Configs of the pipeline's runs
# ---------------------------------------------------------------------------------------------


def plain_loss(loss):
    """The plain (not re-balanced) loss of the same classifier layout: ``sigmoid`` for the
    sigmoid family, ``softmax`` otherwise."""
    return "sigmoid" if loss in SIGMOID_LOSSES else "softmax"


def _resolve_finetune_loss(cfg, finetune_loss):
    loss = cfg.MODEL.ROI_BOX_HEAD.BALMS.LOSS
    if finetune_loss in ("plain", None, ""):
        return plain_loss(loss)
    if finetune_loss == "same":
        return loss
    if finetune_loss not in LOSSES:
        raise ValueError(
            f"finetune loss must be 'plain', 'same' or one of {list(LOSSES)}, got '{finetune_loss}'"
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


def _write_cfg(cfg, path, overwrite=False):
    """Write ``cfg`` to ``path``; when ``path`` exists with different values (and not
    ``overwrite``), return the first differing key (the file is left as is) else None."""
    import yaml

    text = cfg.dump()
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = _flatten(yaml.safe_load(f) or {})
        new = _flatten(yaml.safe_load(text))
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return k, old.get(k), new.get(k)
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return None


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
    if subsets_file:
        from ..data.balanced_subsets import load_subsets, register_balanced_subsets

        data, subsets = load_subsets(subsets_file)
        register_balanced_subsets(data["source"], subsets)
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


def _eval_worker(cfg_file, weights, result_file, log_dir):
    from detectron2.utils import comm

    from .trainer import BalmsCheckpointer, BalmsTrainer

    cfg = _setup_worker(cfg_file, None, log_dir)
    model = BalmsTrainer.build_model(cfg)
    BalmsCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load(weights)
    res = BalmsTrainer.test(cfg, model)
    if comm.is_main_process():
        _atomic_json(
            {
                "weights": os.path.abspath(weights),
                "weights_mtime": os.path.getmtime(weights),
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
    datasets = sorted({r["dataset"] for r in table})
    for task in dict.fromkeys(r["task"] for r in table):
        rows = [r for r in table if r["task"] == task]
        head = ["model"] + (["dataset"] if len(datasets) > 1 else []) + list(METRIC_KEYS)
        lines = [f"{task} (%):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["model"]] + ([r["dataset"]] if len(datasets) > 1 else [])
            cells += ["-" if r.get(k) is None else f"{r[k]:.2f}" for k in METRIC_KEYS]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def _split_opts(opts):
    if isinstance(opts, str):
        return shlex.split(opts)
    return list(opts or ())


def prepare_subsets(cfg, output_dir, mode="fill"):
    """Draw (or reload) the ``BALMS.BTM.NUM_SUBSETS`` subsets of ``cfg.DATASETS.TRAIN``, write
    ``subsets.json`` and ``subsets.md`` (achieved counts) and register them.

    Returns (path of subsets.json, registered names, statistics).
    """
    from ..class_counts import frequency_groups
    from ..data.balanced_subsets import (
        _load_source,
        format_subset_statistics,
        images_per_class,
        load_subsets,
        register_balanced_subsets,
        sample_balanced_subsets,
        save_subsets,
        subset_statistics,
    )

    btm = cfg.BALMS.BTM
    source = list(cfg.DATASETS.TRAIN)
    K = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    params = dict(seed=int(btm.SEED), shots=int(btm.SHOTS), mode=mode, source=source, num_classes=K)
    path = os.path.join(output_dir, "subsets.json")
    n = int(btm.NUM_SUBSETS)
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
        dicts = _load_source(source)
        class_images = images_per_class(dicts, K)  # one scan of the training set
        subsets = sample_balanced_subsets(dicts, K, n, btm.SHOTS, btm.SEED, mode, class_images)
        stats = [subset_statistics(dicts, s, K, class_images) for s in subsets]
        groups = frequency_groups([len(c) for c in class_images])
        save_subsets(path, source, K, subsets, stats, params)
        from detectron2.data import MetadataCatalog

        names = MetadataCatalog.get(source[0]).get("thing_classes", None)
        with open(os.path.join(output_dir, "subsets.md"), "w") as f:
            f.write(
                f"# BTM subsets of {source}: N_D={n}, N_C={btm.SHOTS}, seed={btm.SEED}, "
                f"mode={mode}\n\nAchieved non-crowd instances per class (classes with "
                f"training images), mean per frequency group:\n\n"
            )
            f.write(format_subset_statistics(stats, groups) + "\n\n")
            f.write(
                "Per class (available / selected images / achieved images / achieved "
                "instances), one column per subset:\n\n"
            )
            head = ["class", "group", "available"] + [f"s{i}" for i in range(n)]
            f.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
            for c in range(K):
                cells = [
                    names[c] if names else str(c),
                    groups[c],
                    str(stats[0]["available_images"][c]),
                ]
                cells += [
                    f"{s['selected_images'][c]}/{s['images'][c]}/{s['instances'][c]}" for s in stats
                ]
                f.write("| " + " | ".join(cells) + " |\n")
        logger.info(
            "BTM: %d subsets of %s written to %s:\n%s",
            n,
            source,
            path,
            format_subset_statistics(stats, groups),
        )
    reg = register_balanced_subsets(source, subsets)
    return path, reg, stats


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
        dict with ``table`` (rows of :func:`results_table`), ``markdown``, and the paths.
    """
    from detectron2.engine import launch
    from detectron2.utils.logger import setup_logger

    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    for name in ("fvcore", "detectron2", "balms_det"):
        setup_logger(output_dir, distributed_rank=0, name=name)
    stage1_weights = os.fspath(stage1_weights or cfg.MODEL.WEIGHTS)
    if not stage1_weights or not os.path.exists(stage1_weights):
        raise FileNotFoundError(
            f"Stage-1 checkpoint '{stage1_weights}' does not exist (train stage 1 first, or pass "
            "--stage1-weights / MODEL.WEIGHTS)"
        )
    stage1_weights = os.path.abspath(stage1_weights)
    btm = cfg.BALMS.BTM
    n = int(btm.NUM_SUBSETS)
    train_names = list(cfg.DATASETS.TRAIN)
    finetune_opts, stage2_opts = _split_opts(finetune_opts), _split_opts(stage2_opts)
    main = machine_rank == 0

    def run(fn, *args):
        launch(
            fn,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )

    def train(run_cfg, subsets_file, what):
        out = run_cfg.OUTPUT_DIR
        changed = _write_cfg(run_cfg, os.path.join(out, "btm_config.yaml"))
        done = _training_done(out)
        if changed:
            k, old, new = changed
            if done:
                raise ValueError(
                    f"{what} in {out} was trained with {k} = {old!r}, the current settings give "
                    f"{new!r}: use another output directory (or delete {out}) to retrain it"
                )
            logger.warning("BTM: %s restarts with new settings (%s: %r -> %r)", what, k, old, new)
            _write_cfg(run_cfg, os.path.join(out, "btm_config.yaml"), overwrite=True)
        if done:
            logger.info("BTM: %s already done (%s), skipped", what, out)
            return
        logger.info("BTM: %s -> %s", what, out)
        run(_train_worker, os.path.join(out, "btm_config.yaml"), subsets_file, output_dir)
        if not _training_done(out):
            raise RuntimeError(f"{what} finished without writing {out}/model_final.pth")

    results = OrderedDict()

    def evaluate(label, model_cfg, weights):
        path = os.path.join(output_dir, "eval", f"{label}.json")
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            if cached.get("weights") == os.path.abspath(weights) and cached.get(
                "weights_mtime"
            ) == os.path.getmtime(weights):
                results[label] = cached["results"]
                logger.info("BTM: evaluation of %s cached (%s)", label, path)
                return
        ecfg = eval_cfg(model_cfg, cfg, train_names, os.path.join(output_dir, "eval", label))
        cfg_file = os.path.join(output_dir, "eval", label, "btm_config.yaml")
        _write_cfg(ecfg, cfg_file, overwrite=True)
        logger.info("BTM: evaluating %s (%s)", label, weights)
        run(_eval_worker, cfg_file, os.path.abspath(weights), path, output_dir)
        with open(path) as f:
            results[label] = json.load(f)["results"]

    # 1. subsets
    subsets_file, subset_names, _ = prepare_subsets(cfg, output_dir, subset_mode)

    # 2. fine-tunes (sequential; each may use several GPUs)
    ft_cfgs, ft_weights = [], []
    for i, name in enumerate(subset_names):
        out = os.path.join(output_dir, f"finetune_{i}")
        c = finetune_cfg(cfg, name, stage1_weights, out, finetune_loss, finetune_opts)
        train(c, subsets_file, f"fine-tune {i + 1}/{n} on {name}")
        ft_cfgs.append(c)
        ft_weights.append(os.path.join(out, "model_final.pth"))

    # 3. merge
    merged = os.path.join(output_dir, "merged.pth")
    weights, total = _normalize_weights(list(btm.MERGE_WEIGHTS), n)
    want = {
        "sources": [os.path.abspath(p) for p in ft_weights],
        "weights": [w / total for w in weights],
    }
    have = None
    if os.path.exists(merged):
        have = torch.load(merged, map_location="cpu").get("btm_merge")
    if have == want and all(os.path.getmtime(p) <= os.path.getmtime(merged) for p in ft_weights):
        logger.info("BTM: %s is up to date, merge skipped", merged)
    else:
        logger.info("BTM: merging %d checkpoints (weights %s) -> %s", n, want["weights"], merged)
        merge_checkpoints(ft_weights, weights, merged)

    # 4. stage 2
    final = None
    s2_cfgs = {}
    if stage2 is not None:
        for label, src in (("btm+stage2", merged),) + (
            (("stage1+stage2", stage1_weights),) if stage2_baseline else ()
        ):
            sub = "stage2" if label == "btm+stage2" else "stage2_from_stage1"
            out = os.path.join(output_dir, sub)
            c = stage2_cfg(stage2, src, out, stage2_opts)
            stamp = os.path.join(out, "btm_input.json")
            if _training_done(out) and os.path.exists(stamp):
                with open(stamp) as f:
                    old = json.load(f)
                if old.get("mtime") != os.path.getmtime(src):
                    raise ValueError(
                        f"{out} was trained from an older {src}: delete {out} to redo stage 2"
                    )
            train_started = not _training_done(out)
            if train_started and main:
                _atomic_json({"weights": src, "mtime": os.path.getmtime(src)}, stamp)
            train(c, None, f"stage 2 ({label}) from {src}")
            s2_cfgs[label] = (c, os.path.join(out, "model_final.pth"))
        final = s2_cfgs["btm+stage2"][1]

    # 5. evaluation
    if eval_stage1:
        evaluate("stage1", cfg, stage1_weights)
    if eval_finetunes:
        for i, (c, w) in enumerate(zip(ft_cfgs, ft_weights)):
            evaluate(f"finetune_{i}", c, w)
    evaluate("btm_merged", ft_cfgs[0], merged)
    for label, (c, w) in s2_cfgs.items():
        evaluate(label, c, w)

    table = results_table(list(results.items()))
    md = format_results_table(table)
    if main:
        _atomic_json(
            {"table": table, "results": results}, os.path.join(output_dir, "btm_results.json")
        )
        with open(os.path.join(output_dir, "btm_results.md"), "w") as f:
            f.write(md + "\n")
        print(f"\nBTM results ({output_dir}):\n\n{md}\n", flush=True)
    return dict(
        table=table,
        markdown=md,
        results=results,
        merged=merged,
        final=final,
        subsets=subsets_file,
        finetunes=ft_weights,
    )
