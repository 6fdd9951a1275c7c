"""Equalization Loss v2 (Tan et al., CVPR 2021): gradient-guided reweighting of sigmoid BCE.

Loss. Per-class binary logistic loss on the K foreground logits, target ``t_rj = 1[y_r == j]``
(background ROIs: all zeros), every element weighted by

    w_rj = r_j * t_rj + q_j * (1 - t_rj),   q_j = f(g_j) = 1 / (1 + exp(-gamma (g_j - mu))),
                                            r_j = 1 + alpha * (1 - q_j),

``loss_r = sum_j w_rj * BCEWithLogits(z_rj, t_rj)``, ``reduction="mean"`` divides by R (the
published code divides by the number of ROIs, like this project's sigmoid loss). The weights are
constants (no gradient flows through them). Defaults ``gamma = 12``, ``mu = 0.8``,
``alpha = 4``.

State. ``g_j = pos_j / (neg_j + 1e-10)`` is the ratio of the accumulated positive and negative
gradient magnitudes of class j. For BCE-with-logits ``dL/dz = sigmoid(z) - t``, and the published
code accumulates the REWEIGHTED magnitudes of each step, with the weights of that step:

    pos_j += sum_r |sigmoid(z_rj) - t_rj| * t_rj * w_rj
    neg_j += sum_r |sigmoid(z_rj) - t_rj| * (1 - t_rj) * w_rj

(unnormalised: no 1/R), all-reduced (summed) over ranks before being added. The order within a
step is: weights from the state BEFORE the step, loss, then the state update.
:func:`eqlv2_grad_stats` returns the increments (detached, from the same float32 logits);
:func:`eqlv2_loss_and_stats` returns the loss and the increments from one validation pass.

Details of the published code, kept here:

* before any statistic has been collected (the very first step) every weight is 1; here that is
  the case ``pos_grad`` and ``neg_grad`` all zero (a freshly zero-initialised buffer), decided on
  the device without a sync. From the second step on, a class never seen as a positive has
  ``g = 0``: ``q = f(0) ~ 6.8e-5`` and ``r ~ 5``.
* the 1e-10 in the ratio; the map ``f``; the positive weight ``1 + alpha (1 - f)``.
* the background column: the published model keeps K+1 sigmoid outputs and also trains the last
  one as an objectness logit (BCE against ``1[y == K]``, weight 1, no statistics), and scores
  classes at test time as ``sigmoid(z_j) * (1 - sigmoid(z_K))``. By default this module follows
  Detectron2's ``USE_SIGMOID_CE`` instead and IGNORES the background column of ``(R, K+1)``
  logits (it takes ``(R, K)`` logits too); ``objectness=True`` gives the published variant, and
  :func:`eqlv2_probs` its scores.
"""

from numbers import Number
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._common import _check_inputs, _check_reduction, _weight_and_reduce, expand_class_weights

__all__ = [
    "EQLV2_ALPHA",
    "EQLV2_GAMMA",
    "EQLV2_MU",
    "eqlv2_grad_stats",
    "eqlv2_loss",
    "eqlv2_loss_and_stats",
    "eqlv2_probs",
    "eqlv2_weights",
]

EQLV2_GAMMA = 12.0
EQLV2_MU = 0.8
EQLV2_ALPHA = 4.0
_RATIO_EPS = 1e-10  # g = pos / (neg + 1e-10), as published


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------
def _check_stats(pos_grad, neg_grad, fn: str) -> int:
    for name, t in (("pos_grad", pos_grad), ("neg_grad", neg_grad)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)
            raise ValueError(f"{fn}: {name} must be a 1-D tensor (K,), got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a float tensor, got {t.dtype}")
    if pos_grad.shape != neg_grad.shape:
        raise ValueError(
            f"{fn}: pos_grad {tuple(pos_grad.shape)} and neg_grad {tuple(neg_grad.shape)} "
            "must have the same shape (K,)"
        )
    if pos_grad.numel() == 0:
        raise ValueError(f"{fn}: pos_grad is empty: at least one foreground class is needed")
    return pos_grad.shape[0]


def _check_hyper(gamma, mu, alpha, fn: str) -> None:
    for name, value in (("gamma", gamma), ("mu", mu), ("alpha", alpha)):
        if not isinstance(value, (Number, torch.Tensor)):
            raise ValueError(f"{fn}: {name} must be a number, got {value!r}")


def _check_layout(logits, K: int, objectness: bool, fn: str) -> None:
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
        return  # _check_inputs raises the shape error
    C = logits.shape[1]
    if objectness and C != K + 1:
        raise ValueError(
            f"{fn}: objectness=True needs K+1 = {K + 1} logit columns (objectness / background "
            f"column last) for K = {K} gradient statistics, got {C}"
        )
    if C not in (K, K + 1):
        raise ValueError(
            f"{fn} expects K+1 = {K + 1} (background column last, ignored) or K = {K} logit "
            f"columns for K = {K} gradient statistics, got {C}"
        )


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------
def eqlv2_weights(
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class positive and negative weights of EQLv2 from the accumulated gradients.

    ``g_j = pos_j / (neg_j + 1e-10)``, ``q_j = 1 / (1 + exp(-gamma (g_j - mu)))``,
    ``r_j = 1 + alpha (1 - q_j)``. When ``pos_grad`` and ``neg_grad`` are all zero (no
    statistic collected yet) both weights are 1, as in the published code's first step.

    Args:
        pos_grad: (K,) accumulated positive gradient magnitudes.
        neg_grad: (K,) accumulated negative gradient magnitudes.
        gamma, mu, alpha: the map's slope, centre and the positive-weight scale.

    Returns:
        ``(pos_w, neg_w)``: two (K,) float32 tensors (``r`` and ``q``), on the device of
        ``pos_grad``, detached.
    """
    fn = "eqlv2_weights"
    _check_stats(pos_grad, neg_grad, fn)
    _check_hyper(gamma, mu, alpha, fn)
    pos = pos_grad.detach().double() if pos_grad.device.type != "mps" else pos_grad.detach()
    neg = neg_grad.detach().to(device=pos.device, dtype=pos.dtype)
    g = pos / (neg + _RATIO_EPS)
    neg_w = torch.sigmoid(float(gamma) * (g - float(mu)))  # = 1 / (1 + exp(-gamma (g - mu)))
    pos_w = 1.0 + float(alpha) * (1.0 - neg_w)
    fresh = (pos.abs().sum() + neg.abs().sum()) == 0  # no statistics yet: unit weights
    pos_w = torch.where(fresh, torch.ones_like(pos_w), pos_w)
    neg_w = torch.where(fresh, torch.ones_like(neg_w), neg_w)
    return pos_w.float(), neg_w.float()


# ------------------------------------------------------------------------------------------
# Loss and statistics
# ------------------------------------------------------------------------------------------
def eqlv2_loss_and_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    objectness: bool = False,
    stats_with_roi_weights: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EQLv2 loss and this step's gradient-statistic increments, from one validation pass.

    Args: as :func:`eqlv2_loss`, plus

        stats_with_roi_weights: also multiply the accumulated magnitudes by ``weights`` and
            ``class_weights`` (the gradient of the weighted per-ROI loss); False (default)
            accumulates with the EQLv2 weights only, as published (it has no ROI weights).

    Returns:
        ``(loss, pos_inc, neg_inc)``: the loss (as :func:`eqlv2_loss`) and two detached (K,)
        float32 increments (see :func:`eqlv2_grad_stats`).
    """
    fn = "eqlv2_loss"
    _check_reduction(reduction)
    K = _check_stats(pos_grad, neg_grad, fn)
    _check_layout(logits, K, objectness, fn)
    logits, labels = _check_inputs(logits, labels, K, fn)
    z = logits[:, :K]
    targets = z.new_zeros(z.shape[0], K + 1).scatter_(1, labels[:, None], 1.0)
    t = targets[:, :K]  # background rows: all zeros
    pos_w, neg_w = eqlv2_weights(pos_grad, neg_grad, gamma=gamma, mu=mu, alpha=alpha)
    pos_w = pos_w.to(z.device)
    neg_w = neg_w.to(z.device)
    w = neg_w + t * (pos_w - neg_w)  # r_j t + q_j (1 - t): constants
    loss = F.binary_cross_entropy_with_logits(z, t, weight=w, reduction="none").sum(dim=1)
    if objectness:
        loss = loss + F.binary_cross_entropy_with_logits(
            logits[:, K], targets[:, K], reduction="none"
        )
    reduced = _weight_and_reduce(loss, labels, K, reduction, weights, class_weights)
    # |dL/dz| = |sigmoid(z) - t| of the unweighted BCE, times the element weight of this step
    with torch.no_grad():
        mag = torch.sigmoid(z.detach()).sub_(t).abs_().mul_(w)
        if stats_with_roi_weights:
            roi_w = torch.ones_like(mag[:, 0])
            if class_weights is not None:
                roi_w = roi_w * expand_class_weights(labels, class_weights, K).detach().to(mag)
            if weights is not None:
                roi_w = roi_w * torch.as_tensor(weights).detach().to(mag)
            mag.mul_(roi_w[:, None])
        on_pos = mag * t
        pos_inc = on_pos.sum(dim=0)
        neg_inc = mag.sub_(on_pos).sum(dim=0)  # exact: mag - mag = 0 on the positives
    return reduced, pos_inc, neg_inc


def eqlv2_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    objectness: bool = False,
) -> torch.Tensor:
    """EQLv2: per-class BCE on the K foreground logits with gradient-guided weights.

    ``loss_r = sum_{j<K} w_rj * BCEWithLogits(z_rj, t_rj)`` with ``w = r t + q (1 - t)`` from
    :func:`eqlv2_weights` (module doc); "mean" divides by R. With ``g`` huge (``q = r = 1``) or
    all-zero statistics it is this project's plain ``sigmoid_loss`` on the K columns. Computed
    in float32 whatever the logits' dtype.

    Args:
        logits: (R, K+1) logits with the background column last (ignored unless
            ``objectness``), or (R, K) logits.
        labels: (R,) integer labels in [0, K], K = background.
        pos_grad: (K,) accumulated positive gradient magnitudes (state before this step).
        neg_grad: (K,) accumulated negative gradient magnitudes (state before this step).
        gamma, mu, alpha: 12, 0.8, 4 as published.
        reduction: "mean" (sum_r w_r l_r / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights.
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).
        objectness: also train column K as an objectness logit, BCE against ``1[y == K]`` with
            weight 1 (the published variant; needs (R, K+1) logits).

    Returns:
        Scalar, or (R,) for reduction "none"; float32.
    """
    return eqlv2_loss_and_stats(
        logits,
        labels,
        pos_grad,
        neg_grad,
        gamma=gamma,
        mu=mu,
        alpha=alpha,
        reduction=reduction,
        weights=weights,
        class_weights=class_weights,
        objectness=objectness,
    )[0]


def eqlv2_grad_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    stats_with_roi_weights: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """This step's increments of EQLv2's accumulated gradient magnitudes.

    ``pos_inc_j = sum_r |sigmoid(z_rj) - t_rj| * t_rj * w_rj`` and
    ``neg_inc_j = sum_r |sigmoid(z_rj) - t_rj| * (1 - t_rj) * w_rj``, ``w`` the element
    weights of this step (from ``pos_grad`` / ``neg_grad`` BEFORE the update), from the float32
    foreground logits. The head all-reduces both and adds them to its buffers after the loss.

    Args:
        logits: (R, K+1) logits (background column last, not used) or (R, K).
        labels: (R,) integer labels in [0, K], K = background.
        pos_grad, neg_grad: (K,) state before this step.
        gamma, mu, alpha: as :func:`eqlv2_loss`.
        weights, class_weights, stats_with_roi_weights: see :func:`eqlv2_loss_and_stats`
            (the ROI weights enter only with ``stats_with_roi_weights``).

    Returns:
        ``(pos_inc, neg_inc)``: two (K,) float32 tensors, detached, on the logits' device.
    """
    _, pos_inc, neg_inc = eqlv2_loss_and_stats(
        logits,
        labels,
        pos_grad,
        neg_grad,
        gamma=gamma,
        mu=mu,
        alpha=alpha,
        reduction="sum",
        weights=weights,
        class_weights=class_weights,
        stats_with_roi_weights=stats_with_roi_weights,
    )
    return pos_inc, neg_inc


# ------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------
def eqlv2_probs(logits: torch.Tensor, objectness: bool = False) -> torch.Tensor:
    """Inference scores of an EQLv2-trained classifier.

    Args:
        logits: (R, K+1) logits, background column last.
        objectness: the model was trained with ``objectness=True``: scores
            ``sigmoid(z_j) * (1 - sigmoid(z_K))`` and background ``sigmoid(z_K)``, as published.
            Otherwise ``sigmoid(z_j)`` and a background score of 0 (Detectron2's sigmoid
            inference, and this project's sigmoid layout).

    Returns:
        (R, K+1) float32 scores.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"eqlv2_probs expects (R, K+1) logits with K >= 1, got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"eqlv2_probs: logits must be floating point, got {logits.dtype}")
    probs = torch.sigmoid(logits.float())
    if objectness:
        return torch.cat([probs[:, :-1] * (1.0 - probs[:, -1:]), probs[:, -1:]], dim=1)
    probs[:, -1] = 0.0
    return probs
