"""Weight merging of Balanced Training and Merging (BTM; docs/METHODS.md).

:func:`merge_state_dicts` / :func:`merge_checkpoints`: parameter-by-parameter (weighted) average
of checkpoints. Floating-point tensors (weights and BatchNorm running statistics) are averaged in
float64 and cast back to the first checkpoint's dtype; tensors that are not floating point
(``num_batches_tracked``, integer counters) and non-tensor entries are taken from the first
checkpoint. Checkpoints whose keys or shapes differ are refused with an error naming the first
mismatch.
"""

import copy
import logging
import os
import pickle
from collections import OrderedDict

import numpy as np
import torch

from ..utils import atomic_torch_save

__all__ = ["load_model_state", "merge_state_dicts", "merge_checkpoints", "normalize_weights"]

logger = logging.getLogger("balms_det.btm")


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


def normalize_weights(weights, n):
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
        self.weights, self.total = normalize_weights(weights, n)
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
        atomic_torch_save(ckpt, output)
    return ckpt
