"""The meta set of the Meta Reweigher: class-balanced image sampling and its data loader.

The meta batch is drawn class-balanced: with ``f(c)`` the fraction of
the meta set's images that contain class ``c``, image ``I`` is drawn with probability
proportional to

    r(I) = max over classes c in I of 1 / f(c)

(repeat-factor sampling with threshold 1 and no square root; Detectron2's
``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(..., sqrt=False)`` computes
the same factors but counts crowd annotations, needs an ``annotations`` key in every dict and
logs one line per category; here they come from the meta set's class index,
``ImageClassIndex.class_balanced_factors``). The factors are rescaled to mean 1 before they go to
Detectron2's ``RepeatFactorTrainingSampler``: its stochastic rounding keeps the expected
frequencies, and an "epoch" then holds about as many indices as the set has images (unscaled
LVIS factors reach 10^5 per image and would make epochs of 10^8 indices).

The loader is resumable (``balms_det.data.resumable``): the sampler's seed and the number of
meta batches already drawn are part of the Meta Reweigher's checkpointed state, the index
stream is restarted past them (indices only, no image is loaded to skip), and each meta image
is augmented with random numbers of its position in the stream. Aspect-ratio grouping is off
in the meta loader: batch ``j`` of a rank is positions ``[j * B, (j + 1) * B)`` of its stream.

When the meta set is the training set (the default), the meta loader draws from the train
loader's own ``TrainingSet`` (balms_det/data/training_set.py): no second read, no second
serialized copy.
"""

import logging

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data.samplers import RepeatFactorTrainingSampler

from ..class_index import ImageClassIndex
from .resumable import SALT_META, build_resumable_train_loader
from .training_set import as_training_set, training_set, training_set_from_cfg

__all__ = [
    "class_image_frequency",
    "class_balanced_repeat_factors",
    "classes_in_dataset",
    "meta_set",
    "build_meta_loader",
    "check_meta_batch_size",
    "meta_batch_loader",
]

logger = logging.getLogger(__name__)


def _class_index(data):
    """The ImageClassIndex of dataset dicts, of a TrainingSet or an index itself."""
    if isinstance(data, ImageClassIndex):
        return data
    index = getattr(data, "class_index", None)
    return index if index is not None else ImageClassIndex.from_dicts(data)


def class_image_frequency(dataset_dicts):
    """``{class id: fraction of the images that contain it}`` (classes absent: not listed)."""
    index = _class_index(dataset_dicts)
    classes, counts = np.unique(index.pair_class, return_counts=True)
    n = max(len(index), 1)
    return {int(c): k / n for c, k in zip(classes, counts)}


def class_balanced_repeat_factors(dataset_dicts, normalize=True):
    """Per-image factors ``r(I) = max_{c in I} 1 / f(c)`` (no square root, no threshold).

    Args:
        dataset_dicts: Detectron2 dataset dicts (``annotations`` with ``category_id``), a
            ``TrainingSet`` or an :class:`~balms_det.class_index.ImageClassIndex`.
        normalize (bool): rescale the factors to mean 1 (sampling probabilities unchanged).

    Returns:
        (N,) float32 tensor. An image without annotations gets the smallest factor of an
        annotated image (1 before rescaling), so it is drawn as often as the most common class.
    """
    factors = _class_index(dataset_dicts).class_balanced_factors(normalize)
    return torch.from_numpy(factors).to(torch.float32)


def classes_in_dataset(dataset_dicts, num_classes):
    """(K,) bool tensor: class ``c`` is annotated (non-crowd) in at least one image; ids outside
    ``0..K-1`` are ignored. Dicts, a ``TrainingSet`` or an ImageClassIndex."""
    return torch.from_numpy(_class_index(dataset_dicts).classes_present(num_classes))


def meta_set(cfg):
    """The meta set: ``BALMS.META.DATASET`` if set, else the training set (``DATASETS.TRAIN``
    as the train loader reads it: the same ``TrainingSet``, one read and one serialized copy,
    inside ``shared_training_sets``).

    Raises:
        KeyError: ``BALMS.META.DATASET`` is not registered in Detectron2's DatasetCatalog.
    """
    name = cfg.BALMS.META.DATASET
    if not name:
        return training_set_from_cfg(cfg)
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"BALMS.META.DATASET '{name}' is not a registered dataset (register it with "
            "detectron2.data.DatasetCatalog before building the trainer); registered: "
            + ", ".join(sorted(DatasetCatalog.list())[:30])
        )
    return training_set([name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)


def meta_mapper(cfg):
    """The mapper of meta images: the training mapper, minus instance masks (only boxes and
    classes are used)."""
    mapper_args = DatasetMapper.from_config(cfg, True)
    mapper_args.update(use_instance_mask=False, recompute_boxes=False)
    return DatasetMapper(**mapper_args)


def build_meta_loader(cfg, dataset_dicts, seed, skip_batches=0):
    """Infinite loader of class-balanced meta batches (lists of mapped dicts, like training).

    Args:
        cfg: the training config (mapper: ``DatasetMapper(cfg, True)`` without instance
            masks; batch size:
            ``BALMS.META.IMS_PER_BATCH`` in total over all ranks).
        dataset_dicts (list[dict] or TrainingSet): the meta set.
        seed (int): seed of the sampler; must be the same on every rank.
        skip_batches (int): meta batches already drawn (resume).
    """
    check_meta_batch_size(cfg.BALMS.META.IMS_PER_BATCH)
    return meta_batch_loader(
        dataset_dicts,
        mapper=meta_mapper(cfg),
        total_batch_size=cfg.BALMS.META.IMS_PER_BATCH,
        seed=seed,
        skip_batches=skip_batches,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def check_meta_batch_size(total, key="BALMS.META.IMS_PER_BATCH"):
    """Raise ValueError naming ``key`` unless ``total`` is a positive multiple of the number of
    processes; returns the batch size of one process."""
    from detectron2.utils import comm

    world = comm.get_world_size()
    if int(total) <= 0 or int(total) % world:
        raise ValueError(
            f"{key} ({total}) must be a positive multiple of the number of processes ({world})"
        )
    return int(total) // world


def meta_batch_loader(
    dataset_dicts, *, mapper, total_batch_size, seed, skip_batches=0, num_workers=0
):
    """Infinite loader of class-balanced meta batches, from plain arguments (no config).

    Args:
        dataset_dicts (list[dict] or TrainingSet): the meta set; a ``TrainingSet`` (e.g. the
            train loader's own) is used as it is: its class index gives the factors and its
            serialized storage the images, nothing is copied.
        mapper (callable): dataset dict -> model input (e.g. Detectron2's ``DatasetMapper``).
        total_batch_size (int): images per meta batch over all ranks.
        seed (int): seed of the sampler; must be the same on every rank.
        skip_batches (int): meta batches already drawn (resume).
        num_workers (int): data-loading worker processes.
    """
    check_meta_batch_size(total_batch_size, "meta batch size")
    dataset = as_training_set(dataset_dicts)
    factors = class_balanced_repeat_factors(dataset)
    loader = build_resumable_train_loader(
        dataset=dataset,
        mapper=mapper,
        sampler=RepeatFactorTrainingSampler(factors, seed=int(seed)),
        total_batch_size=int(total_batch_size),
        aspect_ratio_grouping=False,
        num_workers=int(num_workers),
        seed=int(seed),
        salt=SALT_META,
    )
    loader.batches = int(skip_batches)  # the first iteration starts after them
    return loader
