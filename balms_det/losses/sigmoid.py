"""Sigmoid-family losses: per-class binary logistic losses on the K foreground logits."""

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ._common import (
    _as_float_counts,
    _check_inputs,
    _check_min_count,
    _check_reduction,
    _weight_and_reduce,
    check_on_device,
)

# The sigmoid prior pi_j = n_j / num_images is clamped to at most 1 - SIGMOID_PRIOR_EPS, so that
# the log-odds log(pi / (1 - pi)) stay finite (at most about 13.8) for a class present in every
# training image (or for counts larger than num_images, e.g. instance counts).
SIGMOID_PRIOR_EPS = 1e-6


def sigmoid_prior_shift(
    class_counts, num_images, min_count: float = 1.0, eps: float = SIGMOID_PRIOR_EPS
) -> torch.Tensor:
    """Log prior odds of the balanced sigmoid loss.

    ``pi_j = clamp(n_j, min=min_count) / num_images``, then clamped to ``<= 1 - eps`` so the
    log-odds stay finite; ``shift_j = log(pi_j / (1 - pi_j))``.

    Args:
        class_counts: (K,) image counts of the foreground classes (int or float, any device).
        num_images: number of training images (python number or 0-d tensor), > 0.
        min_count: counts below it are clamped to it (must be > 0).
        eps: upper clamp margin of pi (default 1e-6, shift at most ~13.8).

    Returns:
        (K,) float64 shift, on the counts' device.
    """
    _check_min_count(min_count)
    counts = _as_float_counts(class_counts).clamp(min=min_count)
    n_img = torch.as_tensor(num_images, dtype=counts.dtype, device=counts.device).detach()
    if n_img.dim() != 0:
        raise ValueError(
            f"num_images must be a number or a 0-d tensor, got shape {tuple(n_img.shape)}"
        )
    if isinstance(num_images, torch.Tensor):  # checked on its device: no sync
        check_on_device(n_img > 0, "num_images must be > 0", lambda: f", got {float(n_img)}")
    elif not num_images > 0:
        raise ValueError(f"num_images must be > 0, got {float(num_images)}")
    pi = (counts / n_img).clamp(max=1.0 - eps)
    return torch.log(pi) - torch.log1p(-pi)


def _sigmoid_per_roi(logits: torch.Tensor, labels: torch.Tensor, K: int) -> torch.Tensor:
    """(R,) sum over the K classes of BCE-with-logits against one-hot / all-zero targets."""
    # one-hot over K + 1 columns, background column dropped: background rows are all zeros
    targets = logits.new_zeros(logits.shape[0], K + 1).scatter_(1, labels[:, None], 1.0)[:, :K]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


def sigmoid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-class binary logistic loss on K logits (no background column).

    Target ``t_ij = 1`` if ``j == y_i`` else 0 (background rows: all zeros);
    ``loss_i = sum_j BCEWithLogits(z_ij, t_ij)``; "mean" divides by R, as Detectron2's sigmoid
    loss does.

    Args:
        logits: (R, K) logits, NO background column.
        labels: (R,) integer labels in [0, K], K = background.
        reduction: "mean" (sum_i w_i l_i / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).

    Returns:
        Scalar, or (R,) for reduction "none".
    """
    _check_reduction(reduction)
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] < 1:
        raise ValueError("sigmoid_loss expects K >= 1 logit columns, got 0")
    K = logits.shape[1] if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    logits, labels = _check_inputs(logits, labels, K, "sigmoid_loss")
    loss = _sigmoid_per_roi(logits, labels, K)
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)


def balanced_sigmoid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_counts,
    num_images: Union[int, float, torch.Tensor],
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    min_count: float = 1.0,
) -> torch.Tensor:
    """Balanced sigmoid loss, as the published BALMS detection code computes it.

    ``pi_j = clamp(n_j, min=min_count) / num_images`` clamped to ``<= 1 - SIGMOID_PRIOR_EPS``;
    ``z'_ij = z_ij + log(pi_j / (1 - pi_j))`` ONLY for rows whose label is foreground
    (``y_i < K``), background rows unshifted; targets one-hot (background rows all zeros);
    ``loss_i = sum_j BCEWithLogits(z'_ij, t_ij)``; "mean" divides by R.

    Args:
        logits: (R, K) logits, NO background column.
        labels: (R,) integer labels in [0, K], K = background.
        class_counts: (K,) image counts of the foreground classes (int or float, any device).
        num_images: number of training images (python number or 0-d tensor).
        reduction: "mean" (sum_i w_i l_i / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).
        min_count: lower clamp of the counts (> 0).

    Returns:
        Scalar, or (R,) for reduction "none".
    """
    fn = "balanced_sigmoid_loss"
    _check_reduction(reduction)
    counts = _as_float_counts(class_counts)
    K = counts.shape[0]
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != K:
        C = logits.shape[1]
        if C == K + 1:
            raise ValueError(
                f"{fn}: got K+1 = {C} logit columns for K = {K} class counts: the sigmoid "
                "losses take K logits with no background column (a softmax-shaped classifier "
                "with a background column was passed; drop that column or use a softmax loss)"
            )
        raise ValueError(
            f"{fn} expects K = {K} logit columns (no background column) for {K} "
            f"class counts, got {C}"
        )
    logits, labels = _check_inputs(logits, labels, K, fn)
    shift = sigmoid_prior_shift(counts, num_images, min_count=min_count)
    shift = shift.to(device=logits.device, dtype=logits.dtype)
    fg = (labels < K).to(logits.dtype)
    shifted = logits + fg[:, None] * shift[None, :]  # background rows unshifted
    loss = _sigmoid_per_roi(shifted, labels, K)
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)
