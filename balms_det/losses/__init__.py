"""Classification losses of balms-det, as pure functions (no config, no Detectron2 import).

Conventions (Detectron2's layout): ``R`` ROIs, ``K`` foreground classes, ``labels`` is an
``(R,)`` integer tensor with values in ``[0, K]`` where ``K`` means background.

Softmax family (``K + 1`` logit columns, background column last):

* :func:`softmax_loss`: plain cross-entropy.
* :func:`balanced_softmax_loss`: Balanced Softmax (Ren et al. 2020), cross-entropy on logits
  shifted by ``tau * log(K * n_j / sum_k n_k)`` on the foreground columns; the background
  column is not shifted, so the foreground/background balance is kept.
* :func:`label_over_smooth_loss`: Label Over-Smoothing, cross-entropy against soft targets
  ``1 - delta + delta / C`` (true class) and ``delta / C`` (every other class).

Sigmoid family (``K`` logit columns, no background column; background ROIs have all-zero
targets):

* :func:`sigmoid_loss`: per-class binary logistic loss.
* :func:`balanced_sigmoid_loss`: the published BALMS detection loss: foreground rows only are
  shifted by the log prior odds ``log(pi_j / (1 - pi_j))``, ``pi_j = n_j / num_images``.

Peers with running state (the caller keeps the state and passes it in):

* :func:`seesaw_loss`: Seesaw loss (Wang et al. 2021) on (R, K+1) logits, column K the
  objectness logit; state: cumulative foreground counts (:func:`seesaw_batch_counts`).
* :func:`eqlv2_loss`: Equalization Loss v2 (Tan et al. 2021), per-class sigmoid losses whose
  weights follow the accumulated positive / negative gradient ratio (:func:`eqlv2_loss_and_stats`
  also returns this step's increments).

Every loss takes the same weighting interface: ``weights`` (``(R,)`` per-ROI weights) and
``class_weights`` (``(K,)`` per-foreground-class weights; background ROIs get 1), both
multiplying the per-ROI loss and both kept differentiable (the Meta Reweigher differentiates
the loss w.r.t. the class weights). ``reduction="mean"`` is ``sum_i w_i * loss_i / R``, NOT
divided by the sum of the weights; ``"sum"`` is ``sum_i w_i * loss_i``;
``"none"`` returns the ``(R,)`` vector of weighted per-ROI losses. An empty batch (``R = 0``)
gives a zero loss that is still connected to the logits' graph.

The shifts are training-time only: inference uses the raw logits. Every loss computes in
float32 when the logits are fp16 / bf16 (AMP) and returns float32 then. The formulas,
with their sources, are in ``docs/METHODS.md``.
"""

from ._common import expand_class_weights
from .eqlv2 import eqlv2_loss, eqlv2_loss_and_stats, eqlv2_weights
from .seesaw import seesaw_batch_counts, seesaw_loss, seesaw_probs
from .sigmoid import SIGMOID_PRIOR_EPS, balanced_sigmoid_loss, sigmoid_loss, sigmoid_prior_shift
from .softmax import (
    balanced_softmax_loss,
    balanced_softmax_shift,
    label_over_smooth_loss,
    softmax_loss,
)

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
    "seesaw_loss",
    "seesaw_batch_counts",
    "seesaw_probs",
    "eqlv2_loss",
    "eqlv2_loss_and_stats",
    "eqlv2_weights",
]
