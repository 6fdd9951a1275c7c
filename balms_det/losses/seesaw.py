"""Seesaw loss (Wang et al., CVPR 2021) in Detectron2's single K+1-column classifier layout.

Layout. The classifier keeps Detectron2's ``(R, K+1)`` logits, background column last. Column
``K`` is read as the *objectness* logit ``z_K``: ``sigmoid(z_K)`` is the probability that the ROI
is background. mmdetection's Seesaw head has K+2 outputs instead (K class logits and two
objectness logits ``(a, b)`` = (foreground, background) trained with a 2-way softmax
cross-entropy). A 2-way softmax only depends on the logit difference,
``softmax(a, b)[1] = sigmoid(b - a)``, so its cross-entropy against ``t = 1[y == K]`` equals the
binary cross-entropy ``BCE(sigmoid(z_K), t)`` with ``z_K = b - a``: the single column loses
nothing (a K+2 checkpoint maps onto K+1 columns with ``W_K = W_b - W_a``, ``b_K = b_b - b_a``).

Loss of ROI ``r`` with label ``y_r`` (``i = y_r`` its class when foreground):

* objectness term, every ROI: ``BCEWithLogits(z_rK, 1[y_r == K])``;
* class term, foreground ROIs only (0 for background ROIs): cross-entropy over the K
  foreground columns of ``z~_rj = z_rj + log S_ij`` (``j != i``; ``S_ii = 1``), with
  ``S_ij = M_ij * C_ij``:

  - mitigation ``M_ij = (N_j / N_i)^p`` if ``N_j < N_i`` else 1, ``N`` the cumulative
    foreground counts seen so far in training, clamped to ``>= 1`` (a class not seen yet counts
    as 1, as mmdetection does);
  - compensation ``C_ij = (sigma_j / max(sigma_i, eps))^q`` if that ratio is > 1 else 1, with
    ``sigma = softmax`` of the raw K foreground logits of the ROI, DETACHED (no gradient flows
    through ``C``).

  Both factors are computed in log space: ``log M_ij = p * min(0, log N_j - log N_i)`` and
  ``log C_ij = q * max(0, log sigma_j - max(log sigma_i, log eps))``.

Per-ROI loss = class term + objectness term; ``reduction="mean"`` divides the (weighted) sum by
R (mmdetection's ``avg_factor`` is the number of sampled ROIs, so both of its terms are also
divided by R). Defaults ``p = 0.8``, ``q = 2.0``, ``eps = 1e-2`` as published.

State. ``N`` is the caller's state (a ``(K,)`` buffer of the head, float64 recommended so that
counts beyond 2^24 stay exact). mmdetection adds the current batch to ``N`` BEFORE computing the
loss of that batch, so every foreground ROI's class has ``N_i >= 1``; do the same:
``counts = seesaw_update_counts(counts, labels)`` (or, across ranks, all-reduce
``seesaw_batch_counts(labels, K)`` and add it), then ``seesaw_loss(logits, labels, counts)``.
mmdetection keeps per-GPU counts; all-reducing them gives every rank the global counts.

Inference: :func:`seesaw_probs` (``p(j) = softmax_K(z)_j * (1 - sigmoid(z_K))``,
``p(bg) = sigmoid(z_K)``). ``balms_det.modeling.normed_linear.NormedLinear`` is the optional cosine classifier (temperature
20 in the published LVIS recipe).
"""

import math
from numbers import Number
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._common import (
    _as_float_counts,
    _check_inputs,
    _check_reduction,
    _weight_and_reduce,
    check_label_range,
)

__all__ = [
    "SEESAW_P",
    "SEESAW_Q",
    "SEESAW_EPS",
    "seesaw_batch_counts",
    "seesaw_class_term",
    "seesaw_log_factors",
    "seesaw_loss",
    "seesaw_loss_terms",
    "seesaw_probs",
    "seesaw_update_counts",
]

SEESAW_P = 0.8
SEESAW_Q = 2.0
SEESAW_EPS = 1e-2


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------
def _check_hyper(p: float, q: float, eps: float, fn: str) -> None:
    for name, value in (("p", p), ("q", q)):
        if not (isinstance(value, (Number, torch.Tensor)) and float(value) >= 0.0):
            raise ValueError(f"{fn}: {name} must be a number >= 0, got {value}")
    if not (isinstance(eps, (Number, torch.Tensor)) and float(eps) > 0.0):
        raise ValueError(f"{fn}: eps must be > 0 (it clamps sigma_i before a log), got {eps}")


def _check_layout(logits, K: int, fn: str) -> None:
    """Logits must have K+1 columns, the last one the objectness / background logit."""
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
        return  # _check_inputs raises the shape error
    C = logits.shape[1]
    if C == K + 1:
        return
    hint = ""
    if C == K + 2:
        hint = (
            " (mmdetection's Seesaw layout, K classes + 2 objectness logits: here the "
            "objectness is the single background column, z_K = z_bg - z_fg)"
        )
    elif C == K:
        hint = " (no background column: a sigmoid-style K-logit classifier?)"
    raise ValueError(
        f"{fn} expects K+1 = {K + 1} logit columns (K = {K} foreground classes + the "
        f"objectness / background column last) for {K} cumulative counts, got {C}{hint}"
    )


def _counts_and_k(cum_counts, fn: str) -> Tuple[torch.Tensor, int]:
    try:
        counts = _as_float_counts(cum_counts, name="cum_counts")
    except ValueError as err:
        raise ValueError(f"{fn}: {err}") from None
    return counts, counts.shape[0]


def _check_labels(labels, fn: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise ValueError(f"{fn}: labels must be a 1-D tensor (R,), got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{fn}: labels must be an integer tensor, got {labels.dtype}")


# ------------------------------------------------------------------------------------------
# State: cumulative foreground counts
# ------------------------------------------------------------------------------------------
def seesaw_batch_counts(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Foreground counts of one batch, the increment of Seesaw's cumulative counts ``N``.

    Args:
        labels: (R,) integer labels in [0, K], K = ``num_classes`` = background.
        num_classes: K, the number of foreground classes (>= 1).
        dtype: dtype of the result (float64 by default: exact, and all-reducible with NCCL).

    Returns:
        (K,) tensor on the labels' device: ``n_j = #{r : y_r == j}``; background ROIs are not
        counted. The head all-reduces it (sum over ranks) before adding it to its buffer.
    """
    fn = "seesaw_batch_counts"
    _check_labels(labels, fn)
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"{fn}: num_classes must be an int >= 1, got {num_classes!r}")
    labels = labels.long()
    check_label_range(labels, num_classes, fn)
    counts = torch.zeros(num_classes + 1, dtype=dtype, device=labels.device)
    counts.index_add_(0, labels, torch.ones(labels.shape, dtype=dtype, device=labels.device))
    return counts[:num_classes]


def seesaw_update_counts(cum_counts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cumulative counts after this batch: ``cum_counts + seesaw_batch_counts(labels, K)``.

    Out of place: ``cum_counts`` is not modified; the result has its dtype and device (keep the
    buffer in float64; a float32 buffer stops counting exactly past 2^24). A buffer is updated
    with ``buf.copy_(seesaw_update_counts(buf, labels))``, or, across ranks, with
    ``buf += all_reduce(seesaw_batch_counts(labels, K))``. Call it BEFORE :func:`seesaw_loss`
    of the same batch (mmdetection's order).

    Args:
        cum_counts: (K,) cumulative foreground counts (float tensor).
        labels: (R,) integer labels in [0, K], K = background (not counted).

    Returns:
        (K,) new cumulative counts.
    """
    fn = "seesaw_update_counts"
    if not isinstance(cum_counts, torch.Tensor) or cum_counts.dim() != 1:
        shape = tuple(cum_counts.shape) if isinstance(cum_counts, torch.Tensor) else cum_counts
        raise ValueError(f"{fn}: cum_counts must be a 1-D tensor (K,), got {shape}")
    if cum_counts.numel() == 0:
        raise ValueError(f"{fn}: cum_counts is empty: at least one foreground class is needed")
    dtype = cum_counts.dtype if cum_counts.is_floating_point() else torch.float64
    batch = seesaw_batch_counts(labels, cum_counts.shape[0], dtype=dtype)
    return cum_counts.to(dtype) + batch.to(cum_counts.device)


# ------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------
def seesaw_log_factors(
    fg_logits: torch.Tensor,
    labels: torch.Tensor,
    cum_counts,
    p: float = SEESAW_P,
    q: float = SEESAW_Q,
    eps: float = SEESAW_EPS,
) -> torch.Tensor:
    """``log S_ij = log M_ij + log C_ij`` of Seesaw, detached, in the dtype of ``fg_logits``.

    Args:
        fg_logits: (R, K) foreground logits (the background / objectness column removed).
        labels: (R,) int64 foreground labels in [0, K-1] (``i``, the true class of each row).
        cum_counts: (K,) cumulative foreground counts ``N`` (clamped to >= 1).
        p, q: exponents of the mitigation and compensation factors (0 switches one off).
        eps: lower clamp of ``sigma_i`` in the compensation ratio.

    Returns:
        (R, K) tensor, no gradient; ``<= 0`` from the mitigation, ``>= 0`` from the
        compensation, exactly 0 on the true class (``S_ii = 1``).
    """
    fg_logits = fg_logits.detach()
    if fg_logits.shape[0] == 0 or (float(p) == 0 and float(q) == 0):
        return fg_logits.new_zeros(fg_logits.shape)
    labels = labels[:, None]
    log_s = None
    if float(p) > 0:
        counts = _as_float_counts(cum_counts, name="cum_counts").clamp(min=1.0)
        log_n = counts.log().to(device=fg_logits.device, dtype=fg_logits.dtype)
        # M_ij = (N_j / N_i)^p where N_j < N_i, else 1  <=>  p * min(0, log N_j - log N_i)
        log_s = (log_n[None, :] - log_n[labels]).clamp_(max=0.0).mul_(float(p))
    if float(q) > 0:
        log_sigma = F.log_softmax(fg_logits, dim=1)
        log_si = log_sigma.gather(1, labels).clamp_(min=math.log(float(eps)))
        # C_ij = (sigma_j / max(sigma_i, eps))^q where that ratio > 1, else 1
        log_c = log_sigma.sub_(log_si).clamp_(min=0.0).mul_(float(q))
        log_s = log_c if log_s is None else log_s.add_(log_c)
    return log_s


def seesaw_class_term(
    fg_logits: torch.Tensor, labels: torch.Tensor, log_factors: torch.Tensor
) -> torch.Tensor:
    """Seesaw's class term, cross-entropy of ``fg_logits + log_factors``, per row.

    In the dtype of its inputs (the losses call it in float32; a float64 call is what
    ``torch.autograd.gradcheck`` needs). The factors are constants here, so the gradient is
    ``softmax(z~)_j - 1[j == i]``.

    Args:
        fg_logits: (R, K) foreground logits.
        labels: (R,) int64 labels in [0, K-1].
        log_factors: (R, K) ``log S`` from :func:`seesaw_log_factors`.

    Returns:
        (R,) per-row cross-entropy.
    """
    return F.cross_entropy(fg_logits + log_factors, labels, reduction="none")


def seesaw_loss_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cum_counts,
    p: float = SEESAW_P,
    q: float = SEESAW_Q,
    eps: float = SEESAW_EPS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two unweighted per-ROI terms of :func:`seesaw_loss` (for logging them apart).

    Args:
        logits: (R, K+1) logits, objectness / background column last.
        labels: (R,) integer labels in [0, K], K = background.
        cum_counts: (K,) cumulative foreground counts ``N`` (this batch included).
        p, q, eps: see :func:`seesaw_loss`.

    Returns:
        ``(class_term, objectness_term)``, two (R,) float32 tensors; ``class_term`` is 0 on
        background ROIs.
    """
    fn = "seesaw_loss"
    _check_hyper(p, q, eps, fn)
    counts, K = _counts_and_k(cum_counts, fn)
    _check_layout(logits, K, fn)
    logits, labels = _check_inputs(logits, labels, K, fn)
    is_bg = labels == K
    objectness = F.binary_cross_entropy_with_logits(
        logits[:, K], is_bg.to(logits.dtype), reduction="none"
    )
    # Class term on every row (no data-dependent shapes, no device sync), masked to the
    # foreground rows; background rows use class 0 as a placeholder.
    fg_logits = logits[:, :K]
    fg_labels = labels.masked_fill(is_bg, 0)
    log_s = seesaw_log_factors(fg_logits, fg_labels, counts, p=p, q=q, eps=eps)
    cls = seesaw_class_term(fg_logits, fg_labels, log_s)
    cls = cls.masked_fill(is_bg, 0.0)
    return cls, objectness


def seesaw_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cum_counts,
    p: float = SEESAW_P,
    q: float = SEESAW_Q,
    eps: float = SEESAW_EPS,
    reduction: str = "mean",
    weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Seesaw loss: class term (foreground ROIs) + objectness term (all ROIs), per ROI.

    See the module doc for the formulas. Uniform counts make the mitigation 1; ``q = 0`` turns
    the compensation off; both together give plain cross-entropy over the K foreground columns
    (plus the objectness BCE). Computed in float32 whatever the logits' dtype.

    Args:
        logits: (R, K+1) logits, objectness / background column last (``sigmoid(z_K)`` =
            P(background)).
        labels: (R,) integer labels in [0, K], K = background.
        cum_counts: (K,) cumulative foreground counts ``N`` seen so far, this batch included
            (see :func:`seesaw_update_counts`); any numeric dtype / device; clamped to >= 1.
        p: mitigation exponent (0.8).
        q: compensation exponent (2.0).
        eps: lower clamp of ``sigma_i`` in the compensation ratio (1e-2).
        reduction: "mean" (sum_r w_r l_r / R), "sum" or "none" ((R,) weighted losses).
        weights: optional (R,) per-ROI weights (multiply both terms).
        class_weights: optional (K,) per-foreground-class weights (background ROIs: 1).

    Returns:
        Scalar, or (R,) for reduction "none"; float32.
    """
    _check_reduction(reduction)
    cls, objectness = seesaw_loss_terms(logits, labels, cum_counts, p=p, q=q, eps=eps)
    K = logits.shape[1] - 1
    labels = labels.to(device=cls.device, dtype=torch.int64)
    return _weight_and_reduce(cls + objectness, labels, K, reduction, weights, class_weights)


# ------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------
def _check_seesaw_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(
            f"seesaw_probs expects (R, K+1) logits with K >= 1 (objectness column last), "
            f"got {shape}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"seesaw_probs: logits must be floating point, got {logits.dtype}")


def seesaw_probs(logits: torch.Tensor) -> torch.Tensor:
    """Inference scores of a Seesaw-trained classifier.

    Args:
        logits: (R, K+1) logits, objectness / background column last.

    Returns:
        (R, K+1) float32 scores: ``p_j = softmax(z[:, :K])_j * (1 - sigmoid(z_K))`` for the
        foreground classes, ``p_K = sigmoid(z_K)`` (background); rows sum to 1.

    TorchScript-compatible (the predictor's inference); compiled, the input checks are left out.
    """
    if not torch.jit.is_scripting():
        _check_seesaw_logits(logits)
    logits = logits.float()
    bg = torch.sigmoid(logits[:, -1:])
    fg = F.softmax(logits[:, :-1], dim=1) * torch.sigmoid(-logits[:, -1:])  # 1 - sigmoid(z)
    return torch.cat([fg, bg], dim=1)


# ------------------------------------------------------------------------------------------
# Normalised linear classifier
# ------------------------------------------------------------------------------------------
