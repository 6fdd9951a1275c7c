"""Softmax-family losses: K + 1 logit columns, background column last (Detectron2's layout)."""

from numbers import Number
from typing import Optional

import torch
import torch.nn.functional as F

from ._common import (
    _as_float_counts,
    _check_inputs,
    _check_min_count,
    _check_reduction,
    _counts_dtype,
    _weight_and_reduce,
)


def balanced_softmax_shift(class_counts, tau: float = 1.0, min_count: float = 1.0) -> torch.Tensor:
    """Balanced Softmax shift of the foreground logits.

    ``shift_j = tau * log(K * n_j / sum_k n_k)`` with counts clamped to ``>= min_count`` (so a
    class with no training sample gives a finite shift). Invariant to scaling all counts; zero
    for equal counts or ``tau = 0``.

    Args:
        class_counts: (K,) training counts of the foreground classes (int or float, any device).
        tau: exponent of the prior (1: Balanced Softmax, 0.25: "Balanced Softmax 1/4", 0: none).
        min_count: counts below it are clamped to it (must be > 0).

    Returns:
        (K,) float64 shift, on the counts' device. The background column (not included) is
        never shifted.

    TorchScript-compatible (the predictor's ``posthoc_tau`` calls it at inference): compiled,
    ``class_counts`` must be a tensor and the input checks are left out.
    """
    if not torch.jit.is_scripting():
        _check_min_count(min_count)
        class_counts = _as_float_counts(class_counts)
    counts = class_counts.to(_counts_dtype(class_counts.device)).clamp(min=min_count)
    return tau * torch.log(counts / counts.mean())


def softmax_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain cross-entropy (Detectron2's softmax classification loss) with weighting.

    Args:
        logits: (R, K+1) logits, background column last.
        labels: (R,) integer labels in [0, K], K = background.
        reduction: "mean" (sum_i w_i l_i / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).

    Returns:
        Scalar, or (R,) for reduction "none".
    """
    _check_reduction(reduction)
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] < 2:
        raise ValueError(
            "softmax_loss expects K+1 >= 2 logit columns (background last), got "
            f"{logits.shape[1]}"
        )
    K = logits.shape[1] - 1 if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    logits, labels = _check_inputs(logits, labels, K, "softmax_loss")
    loss = F.cross_entropy(logits, labels, reduction="none")
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)


def balanced_softmax_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_counts,
    tau: float = 1.0,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    min_count: float = 1.0,
) -> torch.Tensor:
    """Balanced Softmax cross-entropy for detection (training only).

    ``z'_ij = z_ij + tau * log(K * n_j / sum_k n_k)`` for the foreground columns ``j < K``,
    background column unchanged, then cross-entropy. Equal counts or ``tau = 0`` give plain
    cross-entropy; scaling all counts by a constant changes nothing.

    Args:
        logits: (R, K+1) logits, background column last.
        labels: (R,) integer labels in [0, K], K = background.
        class_counts: (K,) training counts of the foreground classes (int or float, any
            device), clamped to ``>= min_count``.
        tau: exponent of the prior (1.0 Balanced Softmax, 0.25 "Balanced Softmax 1/4").
        reduction: "mean" (sum_i w_i l_i / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).
        min_count: lower clamp of the counts (> 0).

    Returns:
        Scalar, or (R,) for reduction "none".
    """
    fn = "balanced_softmax_loss"
    _check_reduction(reduction)
    counts = _as_float_counts(class_counts)
    K = counts.shape[0]
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != K + 1:
        C = logits.shape[1]
        hint = ""
        if C == K:
            hint = (
                ": the logits have no background column (a sigmoid-style K-logit "
                "classifier?); the softmax losses expect the background column last"
            )
        raise ValueError(
            f"{fn} expects K+1 = {K + 1} logit columns (K = {K} foreground "
            f"classes + a background column last) for {K} class counts, got "
            f"{C} columns{hint}"
        )
    logits, labels = _check_inputs(logits, labels, K, fn)
    shift = balanced_softmax_shift(counts, tau=tau, min_count=min_count)
    shift = shift.to(device=logits.device, dtype=logits.dtype)
    shift = torch.cat([shift, shift.new_zeros(1)])  # background column unshifted
    loss = F.cross_entropy(logits + shift, labels, reduction="none")
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)


def label_over_smooth_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    delta: float,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    foreground_only: bool = False,
) -> torch.Tensor:
    """Label Over-Smoothing cross-entropy.

    Soft targets ``y~_j = 1 - delta + delta / C`` for the true class and ``delta / C`` for the
    others; ``loss_i = -sum_j y~_ij * log_softmax(z_i)_j``. ``delta = 0`` is plain
    cross-entropy.

    With ``foreground_only`` (a detection adaptation): a foreground ROI's targets are smoothed
    over the K foreground classes only (``1 - delta + delta / K`` true class, ``delta / K`` the
    other foreground classes, 0 background) and a background ROI keeps its one-hot background
    target, so the foreground/background balance of the classifier is untouched.

    Args:
        logits: (R, C) logits; in detection C = K+1 with the background column last.
        labels: (R,) integer labels in [0, C-1] (C-1 = background in detection).
        delta: smoothing strength in [0, 1] (over-smoothing: close to 1).
        reduction: "mean" (sum_i w_i l_i / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (C-1,) per-foreground-class weights (background ROIs: 1).
        foreground_only: smooth among the foreground classes of foreground ROIs only (above).

    Returns:
        Scalar, or (R,) for reduction "none".
    """
    fn = "label_over_smooth_loss"
    _check_reduction(reduction)
    if not (isinstance(delta, (Number, torch.Tensor)) and 0.0 <= float(delta) <= 1.0):
        raise ValueError(f"{fn}: delta must be in [0, 1], got {delta}")
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] < 2:
        raise ValueError(f"{fn} expects C >= 2 logit columns, got {logits.shape[1]}")
    K = logits.shape[1] - 1 if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    logits, labels = _check_inputs(logits, labels, K, fn)
    C = K + 1
    log_p = F.log_softmax(logits, dim=1)
    if foreground_only:
        fg = (labels < K).to(log_p.dtype)[:, None]
        targets = torch.zeros_like(log_p)
        targets[:, :K] = fg * (float(delta) / max(K, 1))
        on_true = fg * (1.0 - float(delta)) + (1.0 - fg)  # background rows: one-hot
        targets.scatter_add_(1, labels[:, None], on_true)
    else:
        targets = torch.full_like(log_p, float(delta) / C)
        targets.scatter_add_(1, labels[:, None], torch.full_like(log_p[:, :1], 1.0 - float(delta)))
    loss = -(targets * log_p).sum(dim=1)
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)
