"""Classification losses of balms-det, as pure functions (no config, no Detectron2 import).

Conventions (Detectron2's layout): ``R`` ROIs, ``K`` foreground classes, ``labels`` is an
``(R,)`` integer tensor with values in ``[0, K]`` where ``K`` means background.

Softmax family (``K + 1`` logit columns, background column last):

* :func:`softmax_loss`: plain cross-entropy.
* :func:`balanced_softmax_loss`: Balanced Softmax (Ren et al. 2020), cross-entropy on logits
  shifted by ``tau * log(K * n_j / sum_k n_k)`` on the foreground columns; the background
  column is not shifted, so the foreground/background balance is kept (REFERENCE.md section 1).
* :func:`label_over_smooth_loss`: Label Over-Smoothing, cross-entropy against soft targets
  ``1 - delta + delta / C`` (true class) and ``delta / C`` (every other class).

Sigmoid family (``K`` logit columns, no background column; background ROIs have all-zero
targets):

* :func:`sigmoid_loss`: per-class binary logistic loss.
* :func:`balanced_sigmoid_loss`: the published BALMS detection loss: foreground rows only are
  shifted by the log prior odds ``log(pi_j / (1 - pi_j))``, ``pi_j = n_j / num_images``
  (REFERENCE.md section 2).

Every loss takes the same weighting interface: ``weights`` (``(R,)`` per-ROI weights) and
``class_weights`` (``(K,)`` per-foreground-class weights; background ROIs get 1), both
multiplying the per-ROI loss and both kept differentiable (the Meta Reweigher differentiates
the loss w.r.t. the class weights). ``reduction="mean"`` is ``sum_i w_i * loss_i / R``, NOT
divided by the sum of the weights (REFERENCE.md section 3); ``"sum"`` is ``sum_i w_i * loss_i``;
``"none"`` returns the ``(R,)`` vector of weighted per-ROI losses. An empty batch (``R = 0``)
gives a zero loss that is still connected to the logits' graph.

The shifts are training-time only: inference uses the raw logits.
"""

from numbers import Number
from typing import Optional, Union

import torch
import torch.nn.functional as F

__all__ = [
    "SIGMOID_PRIOR_EPS",
    "balanced_softmax_shift",
    "sigmoid_prior_shift",
    "expand_class_weights",
    "softmax_loss",
    "balanced_softmax_loss",
    "label_over_smooth_loss",
    "sigmoid_loss",
    "balanced_sigmoid_loss",
]

# The sigmoid prior pi_j = n_j / num_images is clamped to at most 1 - SIGMOID_PRIOR_EPS, so that
# the log-odds log(pi / (1 - pi)) stay finite (at most about 13.8) for a class present in every
# training image (or for counts larger than num_images, e.g. instance counts).
SIGMOID_PRIOR_EPS = 1e-6

_REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _as_float_counts(class_counts, name: str = "class_counts") -> torch.Tensor:
    """Return ``class_counts`` as a 1-D float64 tensor (float32 on devices without float64).

    The shifts are computed in float64 and cast to the logits' dtype when applied.
    """
    counts = torch.as_tensor(class_counts)
    if counts.dim() != 1:
        raise ValueError(f"{name} must be 1-D (K,), got shape {tuple(counts.shape)}")
    if counts.numel() == 0:
        raise ValueError(f"{name} is empty: at least one foreground class is needed")
    dtype = torch.float32 if counts.device.type == "mps" else torch.float64
    return counts.detach().to(dtype)


def _check_min_count(min_count: float) -> None:
    if not min_count > 0:
        raise ValueError(
            f"min_count must be > 0 (counts are clamped to it before a log), got {min_count}"
        )


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {_REDUCTIONS}")


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, fn: str):
    """Validate ``logits`` (R, C) and ``labels`` (R,) with values in [0, num_classes].

    Returns ``labels`` as int64.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"{fn}: logits must be a 2-D tensor (R, C), got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"{fn}: logits must be floating point, got {logits.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise ValueError(f"{fn}: labels must be a 1-D tensor (R,), got {shape}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{fn}: labels has {labels.shape[0]} entries but logits has {logits.shape[0]} rows"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{fn}: labels must be an integer tensor, got {labels.dtype}")
    labels = labels.to(device=logits.device, dtype=torch.int64)
    if labels.numel() > 0:
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
        if lo < 0 or hi > num_classes:
            raise ValueError(
                f"{fn}: labels must lie in [0, {num_classes}] ({num_classes} = "
                f"background), got values in [{lo}, {hi}]"
            )
    return labels


def expand_class_weights(
    labels: torch.Tensor, class_weights: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-ROI weights from per-foreground-class weights.

    Args:
        labels: (R,) integer labels in [0, K], K = ``num_classes`` = background.
        class_weights: (K,) weights of the foreground classes (kept differentiable).
        num_classes: K, the number of foreground classes.

    Returns:
        (R,) tensor: ``class_weights[y_i]`` for a foreground ROI, 1 for a background ROI.
    """
    if not isinstance(class_weights, torch.Tensor):
        class_weights = torch.as_tensor(class_weights, dtype=torch.get_default_dtype())
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},) (one weight per "
            f"foreground class), got {tuple(class_weights.shape)}"
        )
    class_weights = class_weights.to(labels.device)
    padded = torch.cat([class_weights, class_weights.new_ones(1)])  # background weight 1
    return padded[labels.long()]


def _weight_and_reduce(
    loss: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    reduction: str,
    weights: Optional[torch.Tensor],
    class_weights: Optional[torch.Tensor],
) -> torch.Tensor:
    """Apply per-ROI and per-class weights to the (R,) loss and reduce it.

    "mean" divides by R (max(R, 1)), not by the sum of the weights.
    """
    R = loss.shape[0]
    if class_weights is not None:
        loss = loss * expand_class_weights(labels, class_weights, num_classes)
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            weights = torch.as_tensor(weights, dtype=loss.dtype)
        if weights.shape != (R,):
            raise ValueError(
                f"weights must have shape ({R},) (one weight per ROI), got "
                f"{tuple(weights.shape)}"
            )
        loss = loss * weights.to(loss.device)
    if reduction == "none":
        return loss
    total = loss.sum()  # 0 with a grad_fn connected to the logits when R = 0
    if reduction == "sum":
        return total
    return total / max(R, 1)


# ------------------------------------------------------------------------------------------
# Prior shifts
# ------------------------------------------------------------------------------------------
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
    """
    _check_min_count(min_count)
    counts = _as_float_counts(class_counts).clamp(min=min_count)
    return tau * torch.log(counts / counts.mean())


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
    if not float(n_img) > 0:
        raise ValueError(f"num_images must be > 0, got {float(n_img)}")
    pi = (counts / n_img).clamp(max=1.0 - eps)
    return torch.log(pi) - torch.log1p(-pi)


# ------------------------------------------------------------------------------------------
# Softmax family (K + 1 logits, background last)
# ------------------------------------------------------------------------------------------
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
    labels = _check_inputs(logits, labels, K, "softmax_loss")
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
    labels = _check_inputs(logits, labels, K, fn)
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
    labels = _check_inputs(logits, labels, K, fn)
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


# ------------------------------------------------------------------------------------------
# Sigmoid family (K logits, no background column)
# ------------------------------------------------------------------------------------------
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
    labels = _check_inputs(logits, labels, K, "sigmoid_loss")
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
    labels = _check_inputs(logits, labels, K, fn)
    shift = sigmoid_prior_shift(counts, num_images, min_count=min_count)
    shift = shift.to(device=logits.device, dtype=logits.dtype)
    fg = (labels < K).to(logits.dtype)
    shifted = logits + fg[:, None] * shift[None, :]  # background rows unshifted
    loss = _sigmoid_per_roi(shifted, labels, K)
    return _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)
