"""Which classes each image of a dataset holds, as flat arrays: one pass over Detectron2
dataset dicts, then every per-class statistic balms-det needs, vectorised.

The pass (:meth:`ImageClassIndex.from_dicts`) reads only ``annotations[*].category_id`` and
``iscrowd``; everything after it is numpy over the arrays it keeps (about 16 bytes per
instance): image and instance counts, the same counts weighted by per-image repeat factors
(the prior a repeat-factor sampler delivers), Detectron2's repeat factors
(:meth:`~ImageClassIndex.repeat_factors`), the meta sampler's class-balanced factors, the
classes present and the images of each class. At LVIS v1 size (100k images, 1.27M instances)
the pass takes about as long as one repeat-factor pass of Detectron2, and each statistic a few
milliseconds.

Crowd instances (``iscrowd`` 1) are left out of every statistic except
:meth:`~ImageClassIndex.repeat_factors`, which counts every annotation as Detectron2's
``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`` does. No torch, no
Detectron2: this module is imported by :mod:`balms_det.class_counts`.
"""

import numpy as np

__all__ = ["ImageClassIndex", "instance_classes"]


def instance_classes(record):
    """Category ids of the non-crowd instances of a Detectron2 dataset dict (one per
    instance, in order); ``set(...)`` of it is the classes present in the image."""
    return [int(a["category_id"]) for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]


def _image_class_pairs(images, classes):
    """Distinct (image, class) pairs, sorted by image then class: two int64 arrays."""
    if not len(classes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = int(classes.min())
    span = int(classes.max()) - lo + 1
    keys = np.unique(images * span + (classes - lo))
    return keys // span, keys % span + lo


def _group_max(values, groups, n):
    """(n,) the max of ``values`` per group id (``groups`` sorted), 1.0 for empty groups."""
    out = np.ones(n, dtype=np.float64)
    if len(values):
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        out[groups[starts]] = np.maximum.reduceat(values, starts)
    return out


class ImageClassIndex:
    """The classes of every image of a dataset, kept as arrays (see the module doc).

    Attributes:
        num_images (int): N, the images of the dataset (with or without annotations).
        inst_image, inst_class: (M,) image position and category id of each non-crowd
            instance, in dataset order.
        pair_image, pair_class: the distinct (image, class) pairs of the non-crowd instances,
            sorted by image then class (one per image holding the class).
    """

    def __init__(self, num_images, images, classes, crowd):
        self.num_images = int(num_images)
        keep = ~crowd
        self.inst_image, self.inst_class = images[keep], classes[keep]
        self.pair_image, self.pair_class = _image_class_pairs(self.inst_image, self.inst_class)
        if crowd.any():  # Detectron2's repeat factors count crowd annotations too
            self._any_pairs = _image_class_pairs(images, classes)
        else:
            self._any_pairs = (self.pair_image, self.pair_class)

    @classmethod
    def from_dicts(cls, dataset_dicts):
        """The index of Detectron2-format dicts (any sequence of dicts; one pass)."""
        sizes, classes, crowd = [], [], []
        for d in dataset_dicts:
            anns = d.get("annotations") or ()
            sizes.append(len(anns))
            classes += [a["category_id"] for a in anns]
            crowd += [a.get("iscrowd", 0) for a in anns]
        images = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        return cls(
            len(sizes),
            images,
            np.asarray(classes, dtype=np.int64).reshape(-1),
            np.asarray(crowd, dtype=bool).reshape(-1),
        )

    def __len__(self):
        return self.num_images

    # -- checks ----------------------------------------------------------------------------
    def check_classes(self, num_classes, file_name=None, what="the model's"):
        """Raise ValueError naming the image (``file_name(position)``, when given) of the first
        non-crowd instance whose category id is outside ``0..num_classes - 1``."""
        bad = (self.inst_class < 0) | (self.inst_class >= num_classes)
        if bad.any():
            j = int(np.argmax(bad))
            i = int(self.inst_image[j])
            name = file_name(i) if file_name is not None else f"#{i}"
            raise ValueError(
                f"Image '{name}' has category id {int(self.inst_class[j])}, outside {what} "
                f"{num_classes} classes"
            )

    # -- statistics ------------------------------------------------------------------------
    def _weights(self, repeat_factors, images):
        if repeat_factors is None:
            return None
        return np.asarray(repeat_factors, dtype=np.float64)[images]

    def image_counts(self, num_classes, repeat_factors=None):
        """(K,) float64: images holding each class, or the sum of their ``repeat_factors``
        ((N,) per image) when given. Classes must be in range (:meth:`check_classes`)."""
        w = self._weights(repeat_factors, self.pair_image)
        return np.bincount(self.pair_class, weights=w, minlength=num_classes).astype(np.float64)

    def instance_counts(self, num_classes, repeat_factors=None):
        """(K,) float64: non-crowd instances of each class, each weighted by its image's
        repeat factor when ``repeat_factors`` is given."""
        w = self._weights(repeat_factors, self.inst_image)
        return np.bincount(self.inst_class, weights=w, minlength=num_classes).astype(np.float64)

    def classes_present(self, num_classes):
        """(K,) bool: the class has a non-crowd instance (ids outside 0..K-1 are ignored)."""
        c = self.pair_class[(self.pair_class >= 0) & (self.pair_class < num_classes)]
        return np.bincount(c, minlength=num_classes) > 0

    def images_per_class(self, num_classes):
        """K sorted lists: the positions of the images holding each class (non-crowd)."""
        order = np.argsort(self.pair_class, kind="stable")  # image order kept within a class
        sizes = np.bincount(self.pair_class, minlength=num_classes)
        return [a.tolist() for a in np.split(self.pair_image[order], np.cumsum(sizes)[:-1])]

    def repeat_factors(self, repeat_thresh, sqrt=True):
        """(N,) float32: the repeat factors of Detectron2's
        ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts,
        repeat_thresh, sqrt)`` (LVIS paper, appendix B.2), to the bit: with ``f(c)`` the
        fraction of the images that have an annotation of class ``c`` (crowd ones included),
        ``r(c) = max(1, sqrt(t / f(c)))`` (no square root when ``sqrt`` is False) and
        ``r(I) = max`` of ``r(c)`` over the classes of image ``I`` (1 for an image without
        annotations). Computed in float64 with the same operations, then rounded to float32."""
        images, classes = self._any_pairs
        _, inv, cnt = np.unique(classes, return_inverse=True, return_counts=True)
        rep = float(repeat_thresh) / (cnt / self.num_images)
        rep = np.maximum(1.0, np.sqrt(rep) if sqrt else rep)
        return _group_max(rep[inv], images, self.num_images).astype(np.float32)

    def class_balanced_factors(self, normalize=True):
        """(N,) float64: ``r(I) = max over the classes c of I of 1 / f(c)``, ``f(c)`` the
        fraction of the images holding ``c`` (non-crowd); 1 for an image without classes;
        rescaled to mean 1 when ``normalize`` (the meta sampler's factors)."""
        _, inv, cnt = np.unique(self.pair_class, return_inverse=True, return_counts=True)
        inv_freq = 1.0 / (cnt / max(self.num_images, 1))
        out = _group_max(inv_freq[inv], self.pair_image, self.num_images)
        if normalize and len(out):
            out = out * (len(out) / out.sum())
        return out
