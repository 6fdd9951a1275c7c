"""balms-det: Balanced Meta-Softmax for long-tailed instance segmentation, on Detectron2.

Importing the package registers its ROI head (``BalmsROIHeads``) with Detectron2 and the
synthetic long-tailed datasets (``synth_lt_train``/``synth_lt_val`` and the tiny
``synth_lt_tiny_train``/``synth_lt_tiny_val``) with the DatasetCatalog.
"""

from . import _check  # noqa: F401  (clear error when Detectron2 is missing)
from . import losses
from .class_counts import ClassCounts, class_counts_from_cfg, load_cat_info, write_cat_info
from .config import add_balms_config
from .data.balanced_subsets import (
    register_balanced_subsets,
    sample_balanced_subsets,
    subset_statistics,
)
from .data.datasets import register_synthetic_lt
from .data.meta_sampler import build_meta_loader, class_balanced_repeat_factors
from .data.synthetic import SyntheticLTConfig, generate_synthetic_lt
from .engine.btm import merge_checkpoints, merge_state_dicts, run_btm_pipeline
from .engine.decoupled import FrozenNormHook, freeze_except
from .engine.meta_reweigher import MetaReweigher, lookahead_meta_loss, meta_gradient
from .evaluation.longtail import worst_class_metrics
from .evaluation.lvis_evaluator import BalmsLVISEvaluator
from .modeling.roi_heads import BalmsFastRCNNOutputLayers, BalmsROIHeads

__version__ = "0.1.0"

__all__ = [
    "add_balms_config",
    "losses",
    "BalmsROIHeads",
    "BalmsFastRCNNOutputLayers",
    "BalmsLVISEvaluator",
    "ClassCounts",
    "class_counts_from_cfg",
    "load_cat_info",
    "write_cat_info",
    "freeze_except",
    "FrozenNormHook",
    "MetaReweigher",
    "meta_gradient",
    "lookahead_meta_loss",
    "class_balanced_repeat_factors",
    "build_meta_loader",
    "sample_balanced_subsets",
    "subset_statistics",
    "register_balanced_subsets",
    "merge_state_dicts",
    "merge_checkpoints",
    "run_btm_pipeline",
    "SyntheticLTConfig",
    "generate_synthetic_lt",
    "register_synthetic_lt",
    "worst_class_metrics",
]
