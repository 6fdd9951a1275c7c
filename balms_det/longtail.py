"""Long-tail metrics over per-class AP: frequency groups and worst-class summaries."""

import math

import numpy as np

from .lvis_eval.params import COMMON_MAX_IMAGES, GROUPS, RARE_MAX_IMAGES, frequency_group

__all__ = [
    "worst_class_metrics",
    "assign_frequency",
    "frequency_group",
    "frequency_groups",
    "GROUPS",
    "RARE_MAX_IMAGES",
    "COMMON_MAX_IMAGES",
    "ZERO_REPLACEMENT",
]

# The LVIS frequency groups (Gupta et al. 2019: rare 1-10 training images, and 0; common 11-100;
# frequent > 100) are part of the LVIS protocol: defined by the evaluation engine.

# The BTM paper replaces a zero per-class score by 1e-3 so that the means stay defined.
ZERO_REPLACEMENT = 1e-3


def worst_class_metrics(per_class_ap, zero=ZERO_REPLACEMENT):
    """Harmonic mean, geometric mean and minimum of per-class AP, and the number of zero-AP classes.

    Args:
        per_class_ap: iterable of per-class AP in [0, 1]; NaN entries (classes that cannot be
            evaluated) are skipped.
        zero: value that replaces an AP of 0 in the harmonic and geometric means.

    Returns:
        dict with ``hmean``, ``gmean``, ``min`` (same scale as the input) and ``num_zero``; NaN
        means (num_zero 0) when no class is valid.
    """
    ap = np.asarray([a for a in per_class_ap if not (a is None or math.isnan(a))], np.float64)
    if ap.size == 0:
        nan = float("nan")
        return dict(hmean=nan, gmean=nan, min=nan, num_zero=0)
    safe = np.where(ap <= 0, zero, ap)
    return dict(
        hmean=float(ap.size / np.sum(1.0 / safe)),
        gmean=float(np.exp(np.mean(np.log(safe)))),
        min=float(ap.min()),
        num_zero=int(np.sum(ap <= 0)),
    )


def frequency_groups(image_counts):
    """LVIS group labels of a sequence of training image counts."""
    return [frequency_group(n) for n in image_counts]


def assign_frequency(categories, image_counts):
    """Set the LVIS ``frequency`` of each category dict from training image counts (in place).

    ``image_counts`` maps category id to the number of training images holding it; the LVIS
    thresholds apply: rare 1-10 (and 0), common 11-100, frequent > 100.
    """
    for c in categories:
        c["frequency"] = frequency_group(image_counts.get(c["id"], 0))
    return categories
