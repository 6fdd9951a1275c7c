"""balms-det's training procedures in a LazyConfig (Python config): the ``train.balms`` entry.

``tools/lazy_train_net.py`` reads it; a LazyConfig training script of your own can call the
same two functions (:func:`freeze_trainable` after the model is built and before the optimizer,
:func:`balms_hooks` for the hooks to register first)::

    train.balms = dict(
        # decoupled training: regular expressions (re.search) over parameter names; only the
        # matching parameters train, the rest is frozen with its normalisation layers in eval
        # mode. [] trains everything; stage 2 of the published schedule: ["cls_score"]
        trainable_params=[],
        # the Meta Reweigher: `enabled`, then keyword arguments of
        # balms_det.engine.meta_reweigher.MetaReweigher (values may be L(...) calls)
        meta=dict(enabled=False, lr=0.01, period=1, meta_batch_size=2),
        # your own COCO/LVIS-format files, registered before anything is instantiated (the
        # yacs key BALMS.DATASETS.REGISTER): [[name, annotation_json, image_root], ...]
        datasets=[],
        # frozen parameters with an empty train.init_checkpoint are refused unless True
        allow_frozen_random_init=False,
        # the yacs BALMS.DATASETS.CHECK_ANNOTATIONS: False leaves the training and test sets
        # unchecked by the input rules (data you trust)
        check_annotations=True,
    )

Defaults of the Meta Reweigher's arguments taken from the rest of the config (each may be
given in ``train.balms.meta`` instead): ``model`` and ``optimizer`` are the trainer's (never
given); ``meta_dataset`` is ``dataloader.train.dataset`` instantiated (the training set, drawn
class-balanced; with ``L(training_set)(...)`` and ``tools/lazy_train_net.py``, the loader's own
``TrainingSet``: no second read, no second copy); ``meta_mapper`` is
``dataloader.train.mapper`` without instance masks; ``num_workers`` is
``dataloader.train.num_workers``; ``seed`` is ``train.seed`` (when >= 0); ``amp`` is
``train.amp.enabled``; ``class_names`` are the ``thing_classes`` of the first training
dataset. The yacs keys of the same settings are ``BALMS.TRAINABLE_PARAMS``, ``BALMS.META``,
``BALMS.DATASETS.REGISTER`` and ``BALMS.ALLOW_FROZEN_RANDOM_INIT``.

Your own data in a LazyConfig script: :func:`register_lazy_datasets` (right after the config
is loaded, in every process) registers ``train.balms.datasets``; :func:`preflight_lazy` (after
the model is built) runs the data checks of ``balms_det/engine/preflight.py``.
"""

import copy
import inspect
import logging

from detectron2.config import instantiate
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data.annotation_checks import trust_datasets
from ..data.datasets import register_file_datasets
from ..data.resumable import build_resumable_train_loader
from ..data.training_set import training_set
from .decoupled import FrozenNormHook, freeze_except
from .meta_reweigher import MetaReweigher
from .preflight import check_frozen_start, preflight_datasets

__all__ = [
    "BALMS_TRAIN_DEFAULTS",
    "balms_train_settings",
    "freeze_trainable",
    "meta_reweigher_from_config",
    "balms_hooks",
    "meta_mapper_from_train_mapper",
    "register_lazy_datasets",
    "preflight_lazy",
    "optimizer_with_gradient_clipping",
    "resumable_train_loader",
]

logger = logging.getLogger(__name__)

BALMS_TRAIN_DEFAULTS = {
    "trainable_params": [],
    "meta": {"enabled": False},
    "datasets": [],
    "allow_frozen_random_init": False,
    "check_annotations": True,
}
_FROM_TRAINER = ("model", "optimizer")


def _plain(v):
    if isinstance(v, (DictConfig, ListConfig)):
        return OmegaConf.to_container(v, resolve=True)
    return v


def _get(cfg, path, default=None):
    v = OmegaConf.select(cfg, path, default=default) if isinstance(cfg, DictConfig) else default
    return v


def balms_train_settings(cfg):
    """``train.balms`` of a LazyConfig over :data:`BALMS_TRAIN_DEFAULTS`, as
    ``(trainable_params list, meta node)``; a missing ``train.balms`` means neither procedure.

    Raises:
        ValueError: an unknown key under ``train.balms`` (named), or a ``meta`` that is not a
            dict.
    """
    balms = _get(cfg, "train.balms", None)
    if balms is None:
        return [], {"enabled": False}
    unknown = sorted(set(balms.keys()) - set(BALMS_TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(
            f"train.balms.{unknown[0]} is not a balms-det setting; known: "
            + ", ".join(f"train.balms.{k}" for k in BALMS_TRAIN_DEFAULTS)
        )
    patterns = _plain(balms.get("trainable_params", None)) or []
    if isinstance(patterns, str):
        patterns = [patterns]
    meta = balms.get("meta", None)
    if meta is None:
        meta = {"enabled": False}
    if not isinstance(meta, (dict, DictConfig)):
        raise ValueError(
            f"train.balms.meta must be a dict (enabled=..., MetaReweigher arguments), got {meta!r}"
        )
    return list(patterns), meta


def register_lazy_datasets(cfg):
    """Register the ``[name, annotation_json, image_root]`` entries of ``train.balms.datasets``
    (COCO- or LVIS-format files; :func:`~balms_det.data.datasets.register_file_dataset`), and
    with ``train.balms.check_annotations`` False leave the loader's datasets unchecked.
    Returns the names registered."""
    balms_train_settings(cfg)  # unknown keys are named
    entries = _plain(_get(cfg, "train.balms.datasets", None)) or []
    names = register_file_datasets(entries, key="train.balms.datasets")
    if not _get(cfg, "train.balms.check_annotations", True):
        trust_datasets(
            _names(_get(cfg, "dataloader.train.dataset.names", None))
            + _names(_get(cfg, "dataloader.test.dataset.names", None))
        )
    return names


def _names(v):
    v = _plain(v)
    if v is None:
        return []
    return [v] if isinstance(v, str) else [str(n) for n in v]


def preflight_lazy(cfg, model):
    """The checks of a training run before its first iteration, for a LazyConfig: the
    model's number of classes against the categories of ``dataloader.train.dataset.names``,
    every image file of the training and test sets, and frozen parameters with an empty
    ``train.init_checkpoint`` (see ``balms_det/engine/preflight.py``)."""
    inner = getattr(model, "module", model)
    num_classes = getattr(getattr(inner, "roi_heads", None), "num_classes", None)
    train = _names(_get(cfg, "dataloader.train.dataset.names", None))
    test = _names(_get(cfg, "dataloader.test.dataset.names", None))
    if num_classes is not None and train:
        # an L(training_set)(...) dataset: the checks read the loader's own (shared) set
        node = _get(cfg, "dataloader.train.dataset", None)
        train_set = (lambda: instantiate(node)) if _target(node) is training_set else None
        _preflight_then_name(inner, train, test, int(num_classes), train_set)
    check_frozen_start(
        model,
        _get(cfg, "train.init_checkpoint", ""),
        bool(_get(cfg, "train.balms.allow_frozen_random_init", False)),
        key="train.balms.allow_frozen_random_init",
        weights_key="train.init_checkpoint",
    )


def _preflight_then_name(model, train, test, num_classes, train_set=None):
    """The data checks, then the training set's class names given to the balms predictors
    that have none (saved in checkpoints, for serving)."""
    from detectron2.data import MetadataCatalog

    from ..modeling.roi_heads import BalmsFastRCNNOutputLayers

    preflight_datasets(
        num_classes,
        train,
        test,
        keys=dict(
            num_classes="model.roi_heads.num_classes",
            train="dataloader.train.dataset.names",
            test="dataloader.test.dataset.names",
        ),
        train_set=train_set,
    )
    names = MetadataCatalog.get(train[0]).get("thing_classes", None)
    for m in model.modules():
        if isinstance(m, BalmsFastRCNNOutputLayers) and names is not None:
            if not m.get_dataset_meta().get("thing_classes") and len(names) == m.num_classes:
                m.set_dataset_meta(thing_classes=names)


def optimizer_with_gradient_clipping(
    optimizer, params, *, clip_type="norm", clip_value=1.0, norm_type=2.0, **kwargs
):
    """``optimizer(params, **kwargs)`` with Detectron2's gradient clipping, for a LazyConfig
    (the yacs keys ``SOLVER.CLIP_GRADIENTS.{CLIP_TYPE, CLIP_VALUE, NORM_TYPE}``; Detectron2's
    Python configs have no such setting)::

        optimizer = L(optimizer_with_gradient_clipping)(
            optimizer=torch.optim.SGD,
            params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
            lr=0.01, momentum=0.9, weight_decay=1e-4, clip_type="norm", clip_value=1.0,
        )
    """
    import torch
    from detectron2.config import CfgNode
    from detectron2.solver.build import maybe_add_gradient_clipping

    if isinstance(optimizer, str):
        optimizer = locate(optimizer)
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise ValueError(
            f"optimizer_with_gradient_clipping(optimizer=...) takes an optimizer class such as "
            f"torch.optim.SGD, got {optimizer!r}"
        )
    clip = dict(ENABLED=True, CLIP_TYPE=clip_type, CLIP_VALUE=float(clip_value))
    clip["NORM_TYPE"] = float(norm_type)
    solver = CfgNode({"SOLVER": {"CLIP_GRADIENTS": clip}})
    return maybe_add_gradient_clipping(solver, optimizer)(params, **kwargs)


def freeze_trainable(cfg, model):
    """Decoupled training: freeze what ``train.balms.trainable_params`` does not match (call it
    before the optimizer is built). Returns the trainable names, or None when the setting is
    empty (nothing frozen)."""
    patterns, _ = balms_train_settings(cfg)
    if not patterns:
        return None
    return freeze_except(model, patterns, key="train.balms.trainable_params")


def meta_mapper_from_train_mapper(mapper_cfg):
    """The meta images' mapper: a LazyConfig training mapper (``L(DatasetMapper)(...)``)
    instantiated without instance masks and box recomputation (the Meta Reweigher uses boxes
    and classes only); another mapper type is instantiated as it is."""
    node = (
        OmegaConf.to_container(mapper_cfg, resolve=True)
        if isinstance(mapper_cfg, DictConfig)
        else dict(mapper_cfg)
    )
    target = node.get("_target_")
    target = locate(target) if isinstance(target, str) else target
    if isinstance(target, type) and issubclass(target, DatasetMapper):
        node.update(use_instance_mask=False, recompute_boxes=False)
    return instantiate(node)


def _meta_arguments():
    params = inspect.signature(MetaReweigher.__init__).parameters
    return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def meta_reweigher_from_config(cfg, model, optimizer):
    """The Meta Reweigher of ``train.balms.meta`` (None when not ``enabled``), with the
    defaults of the module doc for the arguments not given.

    Raises:
        ValueError: an unknown argument, or ``model`` / ``optimizer`` given in the config (they
            are the trainer's); the hook's own errors otherwise.
    """
    _, meta = balms_train_settings(cfg)
    if not bool(meta.get("enabled", False)):
        return None
    known = _meta_arguments()
    kwargs = {}
    for k in meta.keys():
        if k == "enabled":
            continue
        if k in _FROM_TRAINER:
            raise ValueError(
                f"train.balms.meta.{k} is set by the training script (the trainer's {k}); "
                "remove it from the config"
            )
        if k not in known:
            raise ValueError(
                f"train.balms.meta.{k} is not an argument of MetaReweigher; known: "
                + ", ".join(a for a in known if a not in _FROM_TRAINER)
            )
        kwargs[k] = _plain(instantiate(meta[k]))
    train_loader = _get(cfg, "dataloader.train", None)
    if "meta_dataset" not in kwargs:
        if train_loader is None or "dataset" not in train_loader:
            raise ValueError(
                "train.balms.meta needs meta_dataset= (no dataloader.train.dataset to default to)"
            )
        kwargs["meta_dataset"] = instantiate(train_loader.dataset)
        kwargs.setdefault("meta_set_name", "dataloader.train.dataset")
    if "meta_mapper" not in kwargs:
        if train_loader is None or "mapper" not in train_loader:
            raise ValueError(
                "train.balms.meta needs meta_mapper= (no dataloader.train.mapper to default to)"
            )
        kwargs["meta_mapper"] = meta_mapper_from_train_mapper(train_loader.mapper)
    if "num_workers" not in kwargs and train_loader is not None:
        kwargs["num_workers"] = int(train_loader.get("num_workers", 0) or 0)
    seed = _get(cfg, "train.seed", None)
    if "seed" not in kwargs and seed is not None and int(seed) >= 0:
        kwargs["seed"] = int(seed)
    if "amp" not in kwargs:
        kwargs["amp"] = bool(_get(cfg, "train.amp.enabled", False))
    if "class_names" not in kwargs:
        names = _get(cfg, "dataloader.train.dataset.names", None)
        names = [names] if isinstance(names, str) else list(names or [])
        if names:
            kwargs["class_names"] = MetadataCatalog.get(names[0]).get("thing_classes", None)
    return MetaReweigher(model=model, optimizer=optimizer, **kwargs)


def balms_hooks(cfg, model, optimizer):
    """The hooks ``train.balms`` asks for, to register before every other hook: the Meta
    Reweigher (its ``after_step`` then runs before the timer stops and before the checkpointer
    saves its state) and, with ``trainable_params``, ``FrozenNormHook``."""
    hooks = []
    meta = meta_reweigher_from_config(cfg, model, optimizer)
    if meta is not None:
        hooks.append(meta)
    patterns, _ = balms_train_settings(cfg)
    if patterns:
        hooks.append(FrozenNormHook(model))
    return hooks


def resumable_train_loader(cfg):
    """``dataloader.train`` instantiated; when its target is Detectron2's
    ``build_detection_train_loader``, balms-det's ``build_resumable_train_loader`` (the same
    arguments, and ``seed=train.seed`` when >= 0) is built instead, so that ``--resume``
    continues the data stream where it stopped. Another target is instantiated as it is."""
    node = cfg.dataloader.train
    if _target(node) is build_detection_train_loader:
        node = copy.deepcopy(node)
        node._target_ = build_resumable_train_loader
        seed = _get(cfg, "train.seed", None)
        if "seed" not in node and seed is not None and int(seed) >= 0:
            node.seed = int(seed)
    return instantiate(node)


def _target(node):
    """The callable a LazyConfig node instantiates (its ``_target_``, located), or None."""
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    return locate(target) if isinstance(target, str) else target
