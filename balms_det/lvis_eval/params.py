"""The LVIS protocol's constants, defined once: lvis-api 0.5.3's ``Params`` (Gupta et al. 2019),
the frequency groups, the challenge protocols' budget (Dave et al. 2021) and boundary AP's
width (Cheng et al. 2021)."""

import numpy as np

__all__ = [
    "IOU_THRS", "REC_THRS", "AREA_RNG", "AREA_RNG_LBL", "THR_EFF", "AREA_LO", "AREA_HI",
    "MAX_DETS", "GROUPS", "RARE_MAX_IMAGES", "COMMON_MAX_IMAGES", "frequency_group",
    "PROTOCOLS", "IOU_TYPES", "DETS_PER_CATEGORY", "DILATION_RATIO", "dilation",
]  # fmt: skip

# Exactly lvis.eval.Params.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]]
AREA_RNG_LBL = ["all", "small", "medium", "large"]
MAX_DETS = 300  # detections kept per image (the top scores over all categories)
THR_EFF = np.minimum(IOU_THRS, 1 - 1e-10)  # lvis-api: iou = min([iou_thr, 1 - 1e-10])
AREA_LO = np.array([a[0] for a in AREA_RNG], dtype=np.float64)
AREA_HI = np.array([a[1] for a in AREA_RNG], dtype=np.float64)

# LVIS frequency groups by the number of TRAINING IMAGES holding the class: rare 1-10 (and 0),
# common 11-100, frequent > 100.
GROUPS = ("r", "c", "f")
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


def frequency_group(image_count):
    """LVIS group label ('r', 'c' or 'f') of a class held by ``image_count`` training images."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    return "c" if image_count <= COMMON_MAX_IMAGES else "f"


# "standard": lvis-api as it is; "fixed" (AP-fixed) and "pool" (AP-pool): the top
# DETS_PER_CATEGORY detections of every category over the dataset, no per-image cap, AP-pool's
# precision pooled over the categories of "all", r, c and f.
PROTOCOLS = ("standard", "fixed", "pool")
IOU_TYPES = ("bbox", "segm", "boundary")
DETS_PER_CATEGORY = 10000

DILATION_RATIO = 0.02


def dilation(h, w, ratio=DILATION_RATIO):
    """Boundary AP's width d of h x w images (numbers or arrays): round(ratio * diagonal) (half
    to even, as Python and boundary-iou-api round), at least 1."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    d = np.maximum(np.round(ratio * np.sqrt(h * h + w * w)), 1).astype(np.int64)
    return int(d) if d.ndim == 0 else d
