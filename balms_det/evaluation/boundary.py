"""Boundary IoU (Cheng, Girshick, Dollar, Berg, Kirillov, CVPR 2021, "Boundary IoU: Improving
Object-Centric Image Segmentation Evaluation"), computed as the authors' boundary-iou-api does.

* The boundary of a binary mask is the mask minus its erosion by ``d`` pixels: ``d`` erosions
  with a 3 x 3 structuring element, the image border counting as background (so a mask that
  touches the border has a boundary there). ``d = round(0.02 * image diagonal)``, at least 1.
* Boundary IoU = |G_b & P_b| / |G_b | P_b| of the two boundaries (0 when both are empty).
* Boundary AP matches with min(mask IoU, boundary IoU) for non-crowd ground truth; everything
  else is the LVIS protocol (:mod:`balms_det.evaluation.fast_lvis`).

``d`` erosions by a 3 x 3 square are one erosion by a (2d + 1) square, and the boundary lies in
the mask's bounding box, so a mask is decoded and eroded only inside its box (padded by one
background pixel, which stands for everything outside it); the result is the same as on the
whole image. See docs/METHODS.md.
"""

import math

import cv2
import numpy as np
import pycocotools.mask as mask_utils

__all__ = ["DILATION_RATIO", "dilation", "BoundaryCrop", "boundary_crops", "boundary_iou"]

DILATION_RATIO = 0.02


def dilation(h, w, ratio=DILATION_RATIO):
    """Boundary width d of an h x w image: round(ratio * diagonal) (half to even, as Python and
    boundary-iou-api round), at least 1."""
    return max(int(round(ratio * math.sqrt(h * h + w * w))), 1)


class BoundaryCrop:
    """The boundary of one mask: ``pixels`` (bool, rows y0.., columns x0..) and its size."""

    __slots__ = ("y0", "x0", "pixels", "count")

    def __init__(self, y0, x0, pixels):
        self.y0 = y0
        self.x0 = x0
        self.pixels = pixels
        self.count = int(np.count_nonzero(pixels))


def _rle_counts(counts):
    """The run lengths of a compressed RLE string (pycocotools' rleFrString, vectorised)."""
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    ends = np.flatnonzero((c & 0x20) == 0)  # last character of each value
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x = np.where(neg, x | (-1 << (5 * lengths)), x)
    out = x.copy()
    out[1::2] = np.cumsum(x[1::2])  # each value after the third is a delta to the one 2 before
    out[2::2] = np.cumsum(x[2::2])
    return out


def _crop(rle, box):
    """(y0, x0, uint8 mask inside the integer box) of a compressed RLE; ``box`` from toBbox."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    runs = _rle_counts(counts)
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = x0 + int(math.ceil(box[2])), y0 + int(math.ceil(box[3]))
    if x1 <= x0 or y1 <= y0:
        return 0, 0, np.zeros((0, 0), np.uint8)
    ends = np.cumsum(runs)
    lo, hi = x0 * h, x1 * h  # the columns x0..x1-1, column-major
    clipped = np.maximum(np.minimum(ends, hi) - np.maximum(ends - runs, lo), 0)
    if int(ends[-1]) != h * w:
        raise ValueError(f"RLE counts cover {int(ends[-1])} pixels, not the {h} x {w} image")
    values = (np.arange(len(runs)) % 2).astype(np.uint8)  # runs alternate 0, 1, 0, ...
    cols = np.repeat(values, clipped).reshape(x1 - x0, h)
    return y0, x0, np.ascontiguousarray(cols.T[y0:y1])


def boundary_crops(rles, d):
    """:class:`BoundaryCrop` of each compressed RLE of ``rles`` (all of one image size) for a
    boundary width ``d``."""
    boxes = mask_utils.toBbox(rles) if len(rles) else np.zeros((0, 4))
    kernel = np.ones((2 * d + 1, 2 * d + 1), np.uint8)
    out = []
    for rle, box in zip(rles, boxes):
        y0, x0, mask = _crop(rle, box)
        if mask.size == 0:
            out.append(BoundaryCrop(0, 0, np.zeros((0, 0), bool)))
            continue
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, kernel)[1:-1, 1:-1]
        out.append(BoundaryCrop(y0, x0, (mask > eroded)))
    return out


def boundary_iou(a, b):
    """Boundary IoU of two :class:`BoundaryCrop` of the same image (0 without intersection)."""
    ya, xa = a.y0, a.x0
    yb, xb = b.y0, b.x0
    ha, wa = a.pixels.shape
    hb, wb = b.pixels.shape
    y0, y1 = max(ya, yb), min(ya + ha, yb + hb)
    x0, x1 = max(xa, xb), min(xa + wa, xb + wb)
    if y1 <= y0 or x1 <= x0:
        return 0.0
    inter = np.count_nonzero(
        a.pixels[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        & b.pixels[y0 - yb : y1 - yb, x0 - xb : x1 - xb]
    )
    if inter == 0:
        return 0.0
    return float(inter) / float(a.count + b.count - inter)
