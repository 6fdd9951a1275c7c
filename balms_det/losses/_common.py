"""Shared input checks, weighting and reduction of the classification losses.

Every loss computes in at least float32 whatever the dtype of its logits (AMP feeds fp16 / bf16;
a sum of R x K binary losses overflows fp16 at LVIS size): half-precision logits are cast to
float32 and the loss is float32; the gradient flows back to the logits in their own dtype.

No check reads a tensor's values into Python (a host-device synchronisation on a GPU, every
training step): checks of values (the label range, the number of images) are asserted on the
tensor's device (:func:`check_on_device`). On the CPU that raises the ValueError at once; on a
GPU a bad value stops the process at the next synchronisation with a device-side assertion
(run with ``CUDA_LAUNCH_BLOCKING=1``, or the same input on the CPU, for the message).
"""

from typing import Optional

import torch

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
    return counts.detach().to(_counts_dtype(counts.device))


def _counts_dtype(device: torch.device) -> torch.dtype:
    """float64, the dtype counts and shifts are computed in (float32 on MPS, which has none)."""
    return torch.float32 if device.type == "mps" else torch.float64


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

    Returns ``(logits, labels)``: the logits in float32 when they were fp16 / bf16 (else as
    given) and the labels as int64.
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
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # half-precision inputs computed in float32 (module doc)
    check_label_range(labels, num_classes, fn)
    return logits, labels


def check_on_device(ok: torch.Tensor, message: str, detail=None) -> None:
    """Assert the one-element tensor ``ok`` on its device, without a host-device sync.

    On the CPU a false ``ok`` raises ``ValueError(message + detail())`` at once (``detail``, a
    callable, may read values: it runs only then). On a GPU the assertion is queued
    (``torch._assert_async``) and a false ``ok`` fails the process at its next synchronisation;
    on the ``meta`` device it checks nothing.
    """
    try:
        torch._assert_async(ok, message)
    except RuntimeError:
        if ok.device.type != "cpu" or bool(ok):
            raise
        raise ValueError(message + (detail() if detail is not None else "")) from None


def check_label_range(labels: torch.Tensor, num_classes: int, fn: str) -> None:
    """Labels in [0, num_classes] (``num_classes`` = background), checked on their device."""
    if labels.numel() == 0:
        return
    lo, hi = torch.aminmax(labels)
    check_on_device(
        (lo >= 0) & (hi <= num_classes),
        f"{fn}: labels must lie in [0, {num_classes}] ({num_classes} = background)",
        lambda: f", got values in [{int(lo)}, {int(hi)}]",
    )


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
