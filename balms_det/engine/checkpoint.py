"""Loading checkpoints with errors that name the file: ``BalmsCheckpointer``, and what a
checkpoint says about itself (its number of classes, its class names) without a model.

Detectron2's ``DetectionCheckpointer`` reports a truncated file with the unpickler's or the zip
reader's message alone, and loads NaN or infinite weights without a word (a diverged run's
checkpoint then evaluates to AP 0). ``BalmsCheckpointer`` is Detectron2's checkpointer with
both turned into errors naming the file.
"""

import logging
import os

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.roi_heads import decode_dataset_meta
from ..utils import format_examples
from .merging import load_model_state

__all__ = [
    "BalmsCheckpointer",
    "check_finite_state",
    "read_checkpoint",
    "checkpoint_num_classes",
    "checkpoint_dataset_meta",
]

logger = logging.getLogger(__name__)

_CLS_BIAS = "roi_heads.box_predictor.cls_score.bias"
_DATASET_META = "roi_heads.box_predictor.dataset_meta"


def check_finite_state(state_dict, filename):
    """Raise ValueError naming ``filename`` and the tensors holding NaN or infinite values."""
    bad = []
    for k, v in state_dict.items():
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
            finite = bool(np.isfinite(v).all())
        elif torch.is_tensor(v) and (v.is_floating_point() or v.is_complex()):
            finite = bool(torch.isfinite(v).all())
        else:
            continue
        if not finite:
            bad.append(k)
    if bad:
        raise ValueError(
            f"Checkpoint '{filename}' holds NaN or infinite values in {len(bad)} of "
            f"{len(state_dict)} tensors {format_examples(bad, sort=False)}: it was saved by a run "
            "that diverged. A model with these weights detects nothing (AP 0); use an earlier "
            "checkpoint of that run, or retrain with a gentler schedule (docs/OWN_DATA.md)"
        )


def _readable(filename, read):
    """``read()``, with any failure re-raised as a RuntimeError naming ``filename``."""
    try:
        return read()
    except Exception as e:
        raise RuntimeError(
            f"Checkpoint '{filename}' cannot be read ({type(e).__name__}: {e}). The file is "
            "damaged (truncated by an interrupted save or copy?) or not a checkpoint"
        ) from e


class BalmsCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` whose loading names the file when it cannot be
    read (truncated, zero-filled, not a checkpoint) and refuses weights that are not finite.
    Saving and everything else are Detectron2's."""

    def _load_file(self, filename):
        loaded = _readable(filename, lambda: super(BalmsCheckpointer, self)._load_file(filename))
        model = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model, dict):
            raise RuntimeError(f"Checkpoint '{filename}' holds no model state dict")
        check_finite_state(model, filename)
        return loaded


def read_checkpoint(path):
    """The model state dict of a checkpoint file (``.pth`` or Detectron2 ``.pkl``), with
    :class:`BalmsCheckpointer`'s checks."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist")
    state = _readable(path, lambda: load_model_state(path))
    check_finite_state(state, path)
    return state


def checkpoint_num_classes(path):
    """K of a balms-det (or Detectron2 Mask R-CNN) checkpoint: the rows of its classifier
    minus the background row; None when it has no ROI box classifier."""
    bias = read_checkpoint(path).get(_CLS_BIAS)
    return None if bias is None else int(bias.shape[0]) - 1


def checkpoint_dataset_meta(path):
    """``{"thing_classes": [...], "count_source": ...}`` saved in a checkpoint of the balms
    head (``{}`` for a checkpoint saved without them)."""
    meta = read_checkpoint(path).get(_DATASET_META)
    return {} if meta is None else decode_dataset_meta(torch.as_tensor(meta))
