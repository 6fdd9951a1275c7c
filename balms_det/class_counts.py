"""Per-class training counts: from an annotation file, a cat-info JSON, or registered datasets.

The counts are the prior of the balanced losses (docs/METHODS.md). They are computed once,
never hard-coded, and end up as a buffer of the box predictor.

A cat-info JSON (written by ``tools/write_cat_info.py``) is a list of
``{"id", "name", "image_count", "instance_count"}`` dicts, one per category, plus nothing else.
"""

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .class_index import ImageClassIndex, instance_classes
from .longtail import GROUPS, frequency_groups
from .lvis_eval import check_ground_truth
from .utils import read_json

__all__ = [
    "ClassCounts",
    "CountSource",
    "PRIORS",
    "SAMPLER_PRIOR_SAMPLERS",
    "counts_from_annotation_file",
    "counts_from_dataset_dicts",
    "load_cat_info",
    "write_cat_info",
    "class_counts_from_cfg",
    "dataset_class_counts",
    "lazy_class_counts",
    "lazy_num_train_images",
    "lazy_num_classes",
    "describe_counts",
    "instance_classes",
    "sampled_class_counts",
]

logger = logging.getLogger(__name__)

COUNT_TYPES = ("image_count", "instance_count")
# MODEL.ROI_BOX_HEAD.BALMS.PRIOR: the counts of the dataset, or the counts as the training
# sampler delivers them (docs/METHODS.md, "A prior that follows the sampler")
PRIORS = ("dataset", "sampler")
# samplers whose delivered counts are known: TrainingSampler delivers the dataset's counts,
# RepeatFactorTrainingSampler each image r(I) times per epoch in expectation
SAMPLER_PRIOR_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


class ClassCounts:
    """Image and instance counts of K contiguous classes, plus the number of training images."""

    def __init__(self, image_count, instance_count, num_images, names=None):
        self.image_count = np.asarray(image_count, dtype=np.float64)
        self.instance_count = np.asarray(instance_count, dtype=np.float64)
        # an integer for a dataset, a real number for the expected images of a sampler's epoch
        n = float(num_images)
        self.num_images = int(n) if n.is_integer() else n
        self.names = list(names) if names is not None else None

    def get(self, count_type):
        if count_type not in COUNT_TYPES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE must be one of {COUNT_TYPES}, "
                f"got '{count_type}'"
            )
        return getattr(self, count_type)

    def __len__(self):
        return len(self.image_count)


def _annotation_file_counts(json_file):
    """(per-category info, images in the file, images with a non-crowd annotation)."""
    data = read_json(json_file, "Annotation file")
    check_ground_truth(data, json_file, sizes=False)  # (the evaluator's rules: named errors)
    cat_ids = {c["id"] for c in data["categories"]}
    images = defaultdict(set)
    instances = defaultdict(int)
    annotated = set()
    for a in data["annotations"]:
        if a["category_id"] not in cat_ids:
            raise ValueError(
                f"Annotation file '{json_file}': annotation {a.get('id')} has category_id "
                f"{a['category_id']}, which is not among its categories"
            )
        if a.get("iscrowd", 0):
            continue
        images[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
        annotated.add(a["image_id"])
    info = [
        dict(
            id=c["id"],
            name=c.get("name", str(c["id"])),
            image_count=len(images[c["id"]]),
            instance_count=instances[c["id"]],
        )
        for c in sorted(data["categories"], key=lambda c: c["id"])
    ]
    return info, len(data["images"]), len(annotated)


def counts_from_annotation_file(json_file):
    """Per-category counts of an LVIS/COCO-format annotation file.

    Returns:
        list of dicts ``{"id", "name", "image_count", "instance_count"}`` sorted by id, and the
        number of images in the file.
    """
    info, num_images, _ = _annotation_file_counts(json_file)
    return info, num_images


def write_cat_info(json_file, out_file):
    """Write the cat-info JSON of an annotation file; returns the list written.

    ``num_images`` is the number of training images: the images with at least one non-crowd
    annotation, which Detectron2's train loader keeps (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``,
    its default) and which the balanced sigmoid loss divides by; ``num_images_in_file`` counts
    every image of the file."""
    info, in_file, annotated = _annotation_file_counts(json_file)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with open(out_file, "w") as f:
        json.dump(
            {"num_images": annotated, "num_images_in_file": in_file, "categories": info},
            f,
            indent=1,
        )
    return info


def _short(v):
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _cat_info_count(path, where, key, v):
    """A count of a CAT_INFO file as a float: a finite, non-negative JSON number, else
    ValueError naming the file, the entry and the key."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(
            f"CAT_INFO file '{path}': {where} has {key} {_short(v)} ({type(v).__name__}); "
            "counts must be JSON numbers"
        )
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or f < 0:
        raise ValueError(
            f"CAT_INFO file '{path}': {where} has {key} {_short(v)}; counts must be finite and "
            "non-negative"
        )
    return f


def load_cat_info(path, num_classes, dataset_id_to_contiguous_id=None, names=None, dataset=""):
    """Read a cat-info JSON into ClassCounts of ``num_classes`` contiguous classes.

    Category ids map to contiguous ids with ``dataset_id_to_contiguous_id`` when given (COCO-style
    metadata) else as ``id - 1`` (LVIS). With ``names`` (the training set's ``thing_classes``,
    from ``dataset``), every entry's ``name`` must be the training set's name of its class: a
    file of another dataset with the same number of classes is refused. Missing, malformed or
    mismatching files and values (ids that are not integers, counts that are not finite
    non-negative numbers) raise an error naming the file and the category.
    """
    data = read_json(path, "CAT_INFO file")
    cats = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(cats, list) or not all(isinstance(c, dict) for c in cats):
        raise ValueError(
            f"CAT_INFO file '{path}' must hold a list of category dicts (or a dict with a "
            f"'categories' list)"
        )
    image_count = np.zeros(num_classes)
    instance_count = np.zeros(num_classes)
    file_names = [None] * num_classes
    seen = set()
    for i, c in enumerate(cats):
        missing = [k for k in ("id", "image_count") if k not in c]
        if missing:
            raise ValueError(f"CAT_INFO file '{path}': entry {_short(c)} lacks {missing}")
        cid = c["id"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(
                f"CAT_INFO file '{path}': entry #{i} ({c.get('name', '?')}) has id {_short(cid)} "
                f"({type(cid).__name__}); ids must be integers, the training set's category ids"
            )
        where = f"category id {cid} ({c.get('name', '?')})"
        if dataset_id_to_contiguous_id is not None:
            if cid not in dataset_id_to_contiguous_id:
                raise ValueError(
                    f"CAT_INFO file '{path}': category id {cid} is not a category of the "
                    f"training dataset"
                )
            k = dataset_id_to_contiguous_id[cid]
        else:
            k = cid - 1
        if not 0 <= k < num_classes:
            raise ValueError(
                f"CAT_INFO file '{path}': category id {cid} is outside the model's "
                f"{num_classes} classes (ids 1..{num_classes})"
            )
        if k in seen:
            raise ValueError(f"CAT_INFO file '{path}': {where} appears more than once")
        image_count[k] = _cat_info_count(path, where, "image_count", c["image_count"])
        instance_count[k] = _cat_info_count(
            path, where, "instance_count", c.get("instance_count", c["image_count"])
        )
        file_names[k] = c.get("name")
        seen.add(k)
    if len(seen) != num_classes:
        absent = sorted(set(range(num_classes)) - seen)[:10]
        raise ValueError(
            f"CAT_INFO file '{path}' has {len(seen)} categories but the model has {num_classes}; "
            f"first missing contiguous ids: {absent}"
        )
    if names is not None:
        _check_cat_info_names(path, file_names, names, dataset, dataset_id_to_contiguous_id)
    num_images = data.get("num_images", 0) if isinstance(data, dict) else 0
    num_images = _cat_info_count(path, "the file", "num_images", num_images)
    largest = image_count.max() if num_classes else 0
    if num_images and num_images < largest:
        raise ValueError(
            f"CAT_INFO file '{path}' has num_images {num_images:g}, fewer than the {largest:g} "
            "images of its largest image_count"
        )
    if not num_images:
        num_images = int(largest)
        logger.warning(
            "CAT_INFO file '%s' has no num_images; using the largest image count (%d)",
            path,
            num_images,
        )
    return ClassCounts(image_count, instance_count, num_images, file_names)


def _check_cat_info_names(path, file_names, names, dataset, id_map):
    """ValueError when a CAT_INFO entry's name differs from the training set's class name."""
    if len(names) != len(file_names):
        raise ValueError(
            f"CAT_INFO file '{path}' has {len(file_names)} categories but the training set "
            f"{dataset!r} has {len(names)}"
        )
    ids = {k: cid for cid, k in id_map.items()} if id_map else {k: k + 1 for k in range(len(names))}
    wrong = [
        f"id {ids.get(k, k + 1)}: {f!r} in the file, {n!r} in the training set"
        for k, (f, n) in enumerate(zip(file_names, names))
        if f is not None and f != n
    ]
    if wrong:
        raise ValueError(
            f"CAT_INFO file '{path}' does not describe the training set {dataset!r}: "
            f"{len(wrong)} of {len(names)} category names differ ({'; '.join(wrong[:5])}"
            f"{'; ...' if len(wrong) > 5 else ''}). Its counts would be another dataset's prior; "
            "write the file from the training annotations with tools/write_cat_info.py"
        )


def counts_from_dataset_dicts(dataset_dicts, num_classes):
    """ClassCounts of Detectron2-format dicts (contiguous category ids), or of a
    :class:`~balms_det.class_index.ImageClassIndex` of them."""
    return sampled_class_counts(dataset_dicts, None, num_classes)


def _index_of(dataset_dicts):
    """(ImageClassIndex, file_name(position)) of dicts or of an index."""
    if isinstance(dataset_dicts, ImageClassIndex):
        return dataset_dicts, None
    index = getattr(dataset_dicts, "class_index", None)  # a TrainingSet
    if index is not None:
        return index, dataset_dicts.file_name
    return ImageClassIndex.from_dicts(dataset_dicts), lambda i: dataset_dicts[i].get("file_name")


def sampled_class_counts(dataset_dicts, repeat_factors, num_classes):
    """Expected counts per epoch of a sampler that delivers image i ``repeat_factors[i]`` times
    (in expectation), e.g. Detectron2's ``RepeatFactorTrainingSampler``.

    Args:
        dataset_dicts: N Detectron2-format dicts (contiguous category ids), a ``TrainingSet``
            or an :class:`~balms_det.class_index.ImageClassIndex` of them.
        repeat_factors: (N,) non-negative numbers (list, numpy array or tensor); None: all 1.
        num_classes: K.

    Returns:
        ClassCounts with ``image_count`` (K,) = sum of r_i over the images i holding the class,
        ``instance_count`` (K,) = sum over images of r_i times the class's instances in i (crowd
        instances excluded, as in :func:`counts_from_dataset_dicts`), ``num_images`` = sum r_i.
        All repeat factors 1 give :func:`counts_from_dataset_dicts`.
    """
    index, file_name = _index_of(dataset_dicts)
    r = None
    if repeat_factors is not None:
        r = np.asarray(
            repeat_factors.tolist() if hasattr(repeat_factors, "tolist") else repeat_factors,
            dtype=np.float64,
        ).reshape(-1)
        if len(r) != len(index):
            raise ValueError(
                f"{len(r)} repeat factors for {len(index)} images: one per image is needed"
            )
        if len(r) and not (np.isfinite(r).all() and (r >= 0).all()):
            raise ValueError("repeat factors must be finite and non-negative")
    index.check_classes(num_classes, file_name)
    return ClassCounts(
        index.image_counts(num_classes, r),
        index.instance_counts(num_classes, r),
        float(r.sum()) if r is not None else len(index),
    )


def _counts_from_metadata(meta, K):
    """Image counts from Detectron2's ``class_image_count`` metadata (list of {id, image_count},
    sorted by id, as in Detectron2's LVIS v1 metadata), or None."""
    rows = meta.get("class_image_count", None)
    if not rows or len(rows) != K:
        return None
    counts = [r["image_count"] for r in sorted(rows, key=lambda r: r["id"])]
    return np.asarray(counts, dtype=np.float64)


@dataclass(frozen=True)
class CountSource:
    """Where the training class counts of a config come from, resolved only when needed.

    Built from a yacs config by :meth:`from_cfg` (the keys it reads are its fields); holds no
    counts itself, so building a model never reads (or needs) the training set. The predictor
    resolves it at its first training step (or when the trainer asks): see :meth:`resolve`.
    """

    dataset_names: tuple = ()  # DATASETS.TRAIN
    num_classes: int = 0  # MODEL.ROI_HEADS.NUM_CLASSES
    count_type: str = "image_count"  # MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE
    cat_info: str = ""  # MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO
    prior: str = "dataset"  # MODEL.ROI_BOX_HEAD.BALMS.PRIOR
    sampler: str = "TrainingSampler"  # DATALOADER.SAMPLER_TRAIN
    repeat_threshold: float = 0.0  # DATALOADER.REPEAT_THRESHOLD
    repeat_sqrt: bool = True  # DATALOADER.REPEAT_SQRT
    filter_empty: bool = True  # DATALOADER.FILTER_EMPTY_ANNOTATIONS
    # how Detectron2's train loader reads DATASETS.TRAIN besides FILTER_EMPTY_ANNOTATIONS
    # (MODEL.KEYPOINT_ON / MIN_KEYPOINTS_PER_IMAGE, MODEL.LOAD_PROPOSALS /
    # DATASETS.PROPOSAL_FILES_TRAIN), so that the counts come from the loader's own read
    min_keypoints: int = 0
    proposal_files: tuple = ()

    @classmethod
    def from_cfg(cls, cfg):
        from .data.training_set import training_set_args

        b, dl = cfg.MODEL.ROI_BOX_HEAD.BALMS, cfg.DATALOADER
        read = training_set_args(cfg)
        return cls(
            dataset_names=tuple(cfg.DATASETS.TRAIN),
            num_classes=int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
            count_type=b.COUNT_TYPE,
            cat_info=b.CAT_INFO,
            prior=b.PRIOR,
            sampler=dl.SAMPLER_TRAIN,
            repeat_threshold=float(dl.REPEAT_THRESHOLD),
            repeat_sqrt=bool(dl.get("REPEAT_SQRT", True)),
            filter_empty=read["filter_empty"],
            min_keypoints=read["min_keypoints"],
            proposal_files=tuple(read["proposal_files"] or ()),
        )

    def training_set(self, read=True):
        """The training set as Detectron2's train loader reads it (the one shared by the
        counts, the loader and the meta set inside ``shared_training_sets``;
        balms_det/data/training_set.py); with ``read`` False, only one already read in that
        scope, else None."""
        from .data.training_set import loaded_training_set, training_set

        args = dict(names=self.dataset_names, **self._read_args())
        return training_set(**args) if read else loaded_training_set(**args)

    def _read_args(self):
        return dict(
            filter_empty=self.filter_empty,
            min_keypoints=self.min_keypoints,
            proposal_files=self.proposal_files or None,
        )

    def check(self):
        """Raise ValueError for a PRIOR, COUNT_TYPE or (with PRIOR 'sampler') sampler whose
        counts cannot be had; reads nothing."""
        if self.prior not in PRIORS:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.PRIOR must be one of {PRIORS}, got '{self.prior}'"
            )
        if self.count_type not in COUNT_TYPES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE must be one of {COUNT_TYPES}, "
                f"got '{self.count_type}'"
            )
        if self.prior == "sampler" and self.sampler not in SAMPLER_PRIOR_SAMPLERS:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.PRIOR 'sampler' knows the counts delivered by "
                f"{' and '.join(SAMPLER_PRIOR_SAMPLERS)}, not by DATALOADER.SAMPLER_TRAIN "
                f"'{self.sampler}': use PRIOR 'dataset', or one of those samplers"
            )

    @property
    def follows_sampler(self):
        """True when the prior differs from the dataset's counts (PRIOR 'sampler' under
        repeat-factor sampling)."""
        return self.prior == "sampler" and self.sampler == "RepeatFactorTrainingSampler"

    def where(self):
        """The places counts are looked for, for error messages."""
        return (
            f"MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO ('{self.cat_info}')"
            if self.cat_info
            else "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO (empty)"
        ) + f", DATASETS.TRAIN {list(self.dataset_names)}"

    def dataset_counts(self, need_instances=False, need_num_images=False, read=True):
        """ClassCounts of the training datasets and a sentence saying where they came from
        (:func:`dataset_class_counts` with this source's keys); ``(None, None)`` when ``read``
        is False and they would need a read of the training set."""
        if not self.cat_info and not self.dataset_names:
            if not read:
                return None, None
            raise ValueError(
                "there is no source: set DATASETS.TRAIN to the registered training set, or "
                "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO to a file written by tools/write_cat_info.py"
            )
        return dataset_class_counts(
            list(self.dataset_names),
            self.num_classes,
            cat_info=self.cat_info,
            need_instances=need_instances,
            need_num_images=need_num_images,
            read=read,
            read_args=self._read_args(),
        )

    def _name_classes(self, counts, names, metas):
        K = self.num_classes
        if metas and metas[0].get("thing_classes", None) is not None:
            if len(metas[0].thing_classes) != K:
                raise ValueError(
                    f"MODEL.ROI_HEADS.NUM_CLASSES is {K} but dataset '{names[0]}' has "
                    f"{len(metas[0].thing_classes)} classes"
                )
            counts.names = list(metas[0].thing_classes)

    def sampler_counts(self, read=True):
        """(sampled, dataset) ClassCounts under ``RepeatFactorTrainingSampler``: the training
        set as Detectron2's train loader reads it (:meth:`training_set`), the repeat factors
        Detectron2 computes for it (``repeat_factors_from_category_frequency`` with
        ``REPEAT_THRESHOLD`` / ``REPEAT_SQRT``, to the bit) and :func:`sampled_class_counts`.
        ``(None, None)`` when ``read`` is False and the set was not read yet."""
        from detectron2.data import MetadataCatalog

        from .data.datasets import check_registered

        names = list(self.dataset_names)
        if not names:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.BALMS.PRIOR 'sampler' needs the training set (DATASETS.TRAIN) "
                "to compute the repeat factors of RepeatFactorTrainingSampler"
            )
        check_registered(names, "DATASETS.TRAIN")
        train = self.training_set(read)
        if train is None:
            return None, None
        factors = train.repeat_factors(self.repeat_threshold, self.repeat_sqrt)
        sampled = sampled_class_counts(train, factors, self.num_classes)
        dataset = counts_from_dataset_dicts(train, self.num_classes)
        metas = [MetadataCatalog.get(n) for n in names]
        for c in (sampled, dataset):
            self._name_classes(c, names, metas)
        return sampled, dataset

    def resolve(self, need_num_images=False, read=True):
        """The counts a predictor needs, or None when ``read`` is False and they cannot be
        had without reading the training set.

        Returns:
            dict with ``prior`` (ClassCounts of the prior: the dataset's, or the sampler's with
            PRIOR 'sampler'), ``image_count`` (K,) the dataset's training image counts (the
            LVIS groups), ``names`` and ``description`` (one log line). Errors (unregistered
            names, missing or malformed files) propagate.
        """
        self.check()
        if self.follows_sampler:
            prior, dataset = self.sampler_counts(read)
            if prior is None:
                return None
            source = (
                f"RepeatFactorTrainingSampler (REPEAT_THRESHOLD {self.repeat_threshold:g}, "
                f"sqrt {self.repeat_sqrt}) over DatasetCatalog {', '.join(self.dataset_names)}"
            )
            note = "sampler prior: expected per epoch"
        else:
            prior, source = self.dataset_counts(
                need_instances=self.count_type == "instance_count",
                need_num_images=need_num_images,
                read=read,
            )
            if prior is None:
                return None
            dataset, note = prior, ""
        return dict(
            prior=prior,
            image_count=dataset.image_count,
            names=prior.names,
            description=describe_counts(
                prior, self.count_type, source, dataset.image_count, note=note
            ),
        )


def class_counts_from_cfg(cfg, need_instances=False, need_num_images=False, read=True):
    """ClassCounts of the training datasets of ``cfg`` and a sentence saying where they came
    from (``CountSource.from_cfg(cfg).dataset_counts``: the dataset's counts, whatever PRIOR).
    Returns ``(None, None)`` when ``read`` is False and that would need a read of the training
    set."""
    return CountSource.from_cfg(cfg).dataset_counts(need_instances, need_num_images, read)


def _counts_of_datasets(names, metas, K, need_instances, need_num_images, read, read_args):
    """The counts of :func:`dataset_class_counts` without CAT_INFO: ``(ClassCounts, source)``,
    or ``(None, None)`` when they need a read and ``read`` is False."""
    from .data.training_set import loaded_training_set, training_set, training_set_key

    args = dict(read_args or {})
    args["names"] = tuple(names)
    # counts computed from the data earlier in this process, per way of reading the data
    if metas[0].get("balms_class_counts", None) is None:
        metas[0].set(balms_class_counts={})
    cache, cache_key = metas[0].balms_class_counts, training_set_key(**args)
    what = "DatasetCatalog " + ", ".join(names)
    if cache_key in cache:
        # (the sentence of the first computation: it is saved in checkpoints, dataset_meta)
        return cache[cache_key], what + " (computed once, cached)"

    def train_set():  # the loader's read (shared in scope), or None without reading
        return training_set(**args) if read else loaded_training_set(**args)

    from_meta = [_counts_from_metadata(m, K) for m in metas]
    if not need_instances and all(c is not None for c in from_meta):
        img = np.sum(from_meta, axis=0)
        source = "class_image_count metadata of " + ", ".join(names)
        num_images = [m.get("num_images", None) for m in metas]
        n = sum(num_images) if all(num_images) else 0
        if need_num_images and not n:
            data = train_set()
            if data is None:
                return None, None
            n = len(data)
            source += f" ({n} training images: the length of the training set)"
        return ClassCounts(img, img, n), source
    data = train_set()
    if data is None:
        return None, None
    counts = counts_from_dataset_dicts(data, K)
    cache[cache_key] = counts
    return counts, what + " (computed once, cached)"


def dataset_class_counts(
    dataset_names,
    num_classes=None,
    *,
    cat_info="",
    need_instances=False,
    need_num_images=False,
    read=True,
    key="DATASETS.TRAIN",
    num_classes_key="MODEL.ROI_HEADS.NUM_CLASSES",
    read_args=None,
):
    """ClassCounts of registered datasets (summed) and a sentence saying where they came from;
    the sources of :func:`class_counts_from_cfg`, without a config.

    In order: ``cat_info``; counts computed earlier in this process (cached in the first
    dataset's metadata); Detectron2's ``class_image_count`` metadata (image counts, when no
    instance counts are needed; the number of training images from ``num_images`` metadata,
    else the length of the training set, whose read the train loader shares); else the
    training set itself (:func:`balms_det.data.training_set.training_set`: read once, shared
    with the train loader and the meta set inside ``shared_training_sets``).

    Args:
        dataset_names (str or list[str]): registered dataset names.
        num_classes (int): K; None: the length of the first dataset's ``thing_classes`` (or
            of its ``class_image_count``); a dataset registered by file without them yet is
            read once for its categories (the same read gives its counts).
        cat_info (str): a cat-info JSON to read instead of the datasets.
        need_instances, need_num_images, read: see :func:`class_counts_from_cfg`.
        key, num_classes_key: how errors name the dataset names and K.
        read_args (dict): how the training set is read (``filter_empty``, ``min_keypoints``,
            ``proposal_files`` of :func:`~balms_det.data.training_set.training_set`); default
            Detectron2's (images without a non-crowd annotation dropped).

    Raises:
        ValueError: a name is not registered (naming it and ``key``), or K is unknown or
            disagrees with the dataset's classes.
    """
    from detectron2.data import MetadataCatalog

    from .data.datasets import check_registered

    names = [dataset_names] if isinstance(dataset_names, str) else [str(n) for n in dataset_names]
    if not names and not cat_info:
        raise ValueError(f"{key} is empty: name the registered training dataset(s)")
    check_registered(names, key)
    metas = [MetadataCatalog.get(n) for n in names]
    K = num_classes
    if K is None:
        K = _num_classes_from_metadata(metas[0]) if metas else None
        if K is None and names and read:
            # a dataset registered by file knows its categories once loaded (Detectron2's
            # loaders set thing_classes): the training set's read, which its counts share
            from .data.training_set import training_set

            training_set(names, **(read_args or {}))
            K = _num_classes_from_metadata(metas[0])
        if K is None:
            raise ValueError(
                f"{num_classes_key} is not given and dataset "
                f"'{names[0] if names else cat_info}' has no thing_classes metadata: pass it"
            )
    K = int(K)
    thing_classes = metas[0].get("thing_classes", None) if metas else None
    if thing_classes is not None and len(thing_classes) != K:  # before any read
        raise ValueError(
            f"{num_classes_key} is {K} but dataset '{names[0]}' has {len(thing_classes)} classes"
        )
    if cat_info:
        if thing_classes is None and names and read:  # the names CAT_INFO must match
            from .data.datasets import dataset_categories

            thing_classes = dataset_categories(names[0])
        mapping = metas[0].get("thing_dataset_id_to_contiguous_id", None) if metas else None
        counts = load_cat_info(cat_info, K, mapping, thing_classes, names[0] if names else "")
        source = f"CAT_INFO file '{cat_info}'"
    else:
        counts, source = _counts_of_datasets(
            names, metas, K, need_instances, need_num_images, read, read_args
        )
        if counts is None:
            return None, None
    if thing_classes is not None:
        counts.names = list(thing_classes)
    return counts, source


def lazy_class_counts(
    dataset_names,
    count_type="image_count",
    *,
    num_classes=None,
    cat_info="",
    prior="dataset",
    repeat_threshold=0.0,
    repeat_sqrt=True,
    filter_empty=True,
):
    """The K per-class training counts of registered datasets, for a LazyConfig.

    Meant to be called at ``instantiate`` time, like Detectron2's ``get_fed_loss_cls_weights``
    in its LVIS configs::

        model.roi_heads.box_predictor = L(BalmsFastRCNNOutputLayers)(
            ...,
            loss="balanced_softmax",
            class_counts=L(lazy_class_counts)(dataset_names="${dataloader.train.dataset.names}"),
        )

    Image counts come from the ``class_image_count`` metadata when every dataset has it
    (Detectron2's LVIS v1 metadata: no file is read), else they are computed once from the
    training set as Detectron2's ``get_detection_dataset_dicts`` reads it (images without a
    non-crowd annotation dropped) and cached in the metadata (so the ``class_image_counts``
    and ``num_train_images`` calls of the same config reuse them); instance counts always come
    from the data (or ``cat_info``). Inside ``shared_training_sets`` (``tools/lazy_train_net.py``)
    that read is the one of a ``dataloader.train.dataset = L(training_set)(...)``.

    Args:
        dataset_names (str or list[str]): registered training dataset(s); counts are summed.
        count_type (str): "image_count" or "instance_count".
        num_classes (int): K; default: the number of the first dataset's categories
            (``thing_classes``; a dataset registered by file is read for them).
        cat_info (str): optional cat-info JSON (``tools/write_cat_info.py``) read instead.
        prior (str): "dataset", or "sampler": the counts as Detectron2's
            ``RepeatFactorTrainingSampler`` delivers them (each class's expected images or
            instances per epoch; the yacs key ``MODEL.ROI_BOX_HEAD.BALMS.PRIOR``), for a
            config whose train loader samples with it.
        repeat_threshold, repeat_sqrt, filter_empty: with ``prior="sampler"``, the sampler's
            ``repeat_thresh`` / ``sqrt`` and the loader's filtering of images without
            annotations (``get_detection_dataset_dicts(filter_empty=...)``), as the config's
            train loader has them.

    Returns:
        list[float]: K counts, in contiguous class order.

    Raises:
        ValueError: an unregistered name (named), an unknown ``count_type`` or ``prior``, or a
            K that disagrees with the dataset.
    """
    if count_type not in COUNT_TYPES:
        raise ValueError(
            f"lazy_class_counts(count_type=...) must be one of {COUNT_TYPES}, got '{count_type}'"
        )
    counts = _lazy_counts(
        "lazy_class_counts",
        dataset_names,
        num_classes,
        cat_info,
        dict(prior=prior, repeat_threshold=repeat_threshold, repeat_sqrt=repeat_sqrt),
        filter_empty,
        need_instances=count_type == "instance_count",
    )
    return [float(c) for c in counts.get(count_type)]


def lazy_num_train_images(
    dataset_names,
    *,
    num_classes=None,
    cat_info="",
    prior="dataset",
    repeat_threshold=0.0,
    repeat_sqrt=True,
    filter_empty=True,
):
    """The number of training images of registered datasets (summed), for a LazyConfig
    (``num_train_images=`` of a balanced-sigmoid predictor): the images with a non-crowd
    annotation, those Detectron2's train loader keeps; from ``num_images`` metadata or
    ``cat_info`` when present, else the length of the training set (read once, shared as in
    :func:`lazy_class_counts`); with ``prior="sampler"`` the expected images of a
    ``RepeatFactorTrainingSampler`` epoch. Arguments and errors as :func:`lazy_class_counts`."""
    counts = _lazy_counts(
        "lazy_num_train_images",
        dataset_names,
        num_classes,
        cat_info,
        dict(prior=prior, repeat_threshold=repeat_threshold, repeat_sqrt=repeat_sqrt),
        filter_empty,
        need_num_images=True,
    )
    return int(counts.num_images) if prior == "dataset" else float(counts.num_images)


def lazy_num_classes(dataset_names):
    """K, the number of categories of the (first) registered training dataset, for a
    LazyConfig's ``model.roi_heads.num_classes`` (the yacs route's ``NUM_CLASSES 0``): from its
    ``thing_classes`` metadata, or read from a dataset registered by file."""
    names = [dataset_names] if isinstance(dataset_names, str) else [str(n) for n in dataset_names]
    if not names:
        raise ValueError("lazy_num_classes(dataset_names=...) is empty: name the training set")
    from detectron2.data import MetadataCatalog

    from .data.datasets import check_registered

    check_registered(names[:1], "lazy_num_classes(dataset_names=...)")
    meta = MetadataCatalog.get(names[0])
    K = _num_classes_from_metadata(meta)
    if K is None:  # Detectron2's loaders set thing_classes: the (shared) training set's read
        from .data.training_set import training_set

        training_set(names)
        K = _num_classes_from_metadata(meta)
    if K is None:
        raise ValueError(
            f"lazy_num_classes: dataset '{names[0]}' has no thing_classes metadata after loading; "
            "set the number of classes in the config"
        )
    return K


def _lazy_counts(what, dataset_names, num_classes, cat_info, sampler, filter_empty, **need):
    """ClassCounts for the lazy helpers ``what``: the dataset's (:func:`dataset_class_counts`
    with ``need``), or with ``sampler["prior"] == "sampler"`` the repeat-factor sampler's
    (``CountSource.sampler_counts`` with ``sampler``'s threshold and sqrt)."""
    prior = sampler["prior"]
    if prior not in PRIORS:
        raise ValueError(f"{what}(prior=...) must be one of {PRIORS}, got '{prior}'")
    if prior == "dataset":
        counts, _ = dataset_class_counts(
            dataset_names,
            num_classes,
            cat_info=cat_info,
            key=f"{what}(dataset_names=...)",
            num_classes_key=f"{what}(num_classes=...)",
            **need,
        )
        return counts
    if cat_info:
        raise ValueError(
            f"{what}(prior='sampler') computes the counts from the training set's repeat "
            "factors; leave cat_info empty"
        )
    names = [dataset_names] if isinstance(dataset_names, str) else [str(n) for n in dataset_names]
    source = CountSource(
        dataset_names=tuple(names),
        num_classes=int(num_classes) if num_classes is not None else lazy_num_classes(names),
        prior="sampler",
        sampler="RepeatFactorTrainingSampler",
        repeat_threshold=float(sampler["repeat_threshold"]),
        repeat_sqrt=bool(sampler["repeat_sqrt"]),
        filter_empty=bool(filter_empty),
    )
    return source.sampler_counts()[0]


def _num_classes_from_metadata(meta):
    """K from a dataset's ``thing_classes`` (or ``class_image_count``) metadata, or None."""
    for field in ("thing_classes", "class_image_count"):
        if meta.get(field, None):
            return len(meta.get(field))
    return None


def describe_counts(counts, count_type, source, image_count=None, note=""):
    """One log line: where the counts came from, their range and the r/c/f group sizes (of
    ``image_count``, default the counts' own image counts); ``note`` qualifies the count type
    ("sampler prior: expected per epoch")."""
    c = counts.get(count_type)
    groups = frequency_groups((counts.image_count if image_count is None else image_count).tolist())
    sizes = ", ".join(f"{g} {groups.count(g)}" for g in GROUPS)
    return (
        f"Class counts ({count_type}{', ' + note if note else ''}) from {source}: {len(c)} classes, range "
        f"{c.min():g}..{c.max():g}, {counts.num_images:g} training images; LVIS groups by "
        f"training image count: {sizes}"
    )
