"""balms-det: long-tailed instance segmentation on Detectron2 (Balanced Softmax, its sigmoid
variant, the Meta Reweigher, decoupled training, Label Over-Smoothing, BTM, LVIS evaluation).

Use in a Detectron2 project::

    from balms_det import add_balms_config
    add_balms_config(cfg)                       # the BALMS keys; registers BalmsROIHeads
    cfg.MODEL.ROI_HEADS.NAME = "BalmsROIHeads"

The public names below are imported on first use (PEP 562), so ``import balms_det`` and the
evaluation engine (``balms_det.lvis_eval``) load neither torch nor Detectron2.
``add_balms_config`` (or importing ``balms_det.modeling``) registers the ROI head with
Detectron2; ``register_datasets_from_cfg`` / ``setup_cfg`` register the datasets.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # configuration and datasets
    "add_balms_config": "config",
    "setup_cfg": "engine.trainer",
    "register_datasets_from_cfg": "data.datasets",
    "register_synthetic_lt": "data.datasets",
    "ClassCounts": "class_counts",
    "write_cat_info": "class_counts",
    "CountSource": "class_counts",
    "lazy_class_counts": "class_counts",
    "lazy_num_train_images": "class_counts",
    "sampled_class_counts": "class_counts",
    # the head and its losses
    "BalmsROIHeads": "modeling.roi_heads",
    "BalmsFastRCNNOutputLayers": "modeling.roi_heads",
    "losses": "losses",
    # training: trainer and hooks
    "BalmsTrainer": "engine.trainer",
    "MetaReweigher": "engine.meta_reweigher",
    "FrozenNormHook": "engine.decoupled",
    "freeze_except": "engine.decoupled",
    "merge_checkpoints": "engine.merging",
    "run_btm_pipeline": "engine.btm",
    # evaluation
    "BalmsLVISEvaluator": "evaluation.lvis_evaluator",
    "evaluate_detections_file": "evaluation.offline",
    "evaluate_lvis": "lvis_eval",
    "worst_class_metrics": "longtail",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'balms_det' has no attribute '{name}'")
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if name == module else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
