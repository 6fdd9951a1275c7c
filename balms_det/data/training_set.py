"""The training set, read once per process: ``TrainingSet`` and the scope that shares it.

Detectron2's train loader reads the training set (``get_detection_dataset_dicts``) and keeps it
serialized (``DatasetFromList(serialize=True)``). balms-det needs more from the same images:
the class counts of the balanced losses (and of the sampler prior), the number of training
images, the Meta Reweigher's meta set and its class-balanced factors. ``TrainingSet`` is a
``DatasetFromList`` that also keeps an :class:`~balms_det.class_index.ImageClassIndex` built
in the same read, so all of them come from one load and one serialized copy:

* the train loader takes it as its ``dataset`` (and, for ``RepeatFactorTrainingSampler``,
  :meth:`TrainingSet.repeat_factors`, bit-identical to Detectron2's);
* ``CountSource`` takes the counts (dataset or sampler prior) and ``num_images`` from its index;
* the Meta Reweigher draws its meta batches from the same serialized storage.

Sharing. Inside ``with shared_training_sets():`` (``BalmsTrainer.__init__`` and
``tools/lazy_train_net.py`` wrap the whole build of model, loader and hooks in one),
:func:`training_set` returns one ``TrainingSet`` per (datasets, filtering) however many times
it is asked; outside, each call reads the data again (what Detectron2 itself does). The scope
holds the sets only while it is open; afterwards the loaders keep what they use.
"""

import contextlib
import logging

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList

from ..class_index import ImageClassIndex
from .annotation_checks import check_dicts_when_loaded

__all__ = [
    "TrainingSet",
    "as_training_set",
    "loaded_training_set",
    "shared_training_sets",
    "training_set",
    "training_set_args",
    "training_set_from_cfg",
    "training_set_key",
    "training_repeat_factors",
]

logger = logging.getLogger(__name__)


class TrainingSet(DatasetFromList):
    """Detectron2 dataset dicts, serialized as Detectron2's loader keeps them, plus the
    :class:`~balms_det.class_index.ImageClassIndex` of the same dicts (``class_index``).

    Items are fresh dicts (unpickled on access), as from Detectron2's ``DatasetFromList``;
    ``len`` is the number of images. Build it from a list (:meth:`__init__`) or by reading
    registered datasets (:func:`training_set`).
    """

    def __init__(self, dataset_dicts, *, names=()):
        """
        Args:
            dataset_dicts (list[dict]): Detectron2-format dicts; they are serialized (drop your
                own reference to free them).
            names (tuple[str]): the registered datasets they come from (for messages).
        """
        if not isinstance(dataset_dicts, list):
            raise TypeError(
                f"TrainingSet takes a list of Detectron2 dataset dicts, got "
                f"{type(dataset_dicts).__name__} (from {list(names) or 'the caller'}); a "
                "registered dataset must return a list of dicts"
            )
        self.names = tuple(names)
        self.class_index = ImageClassIndex.from_dicts(dataset_dicts)
        # per image, from the same read: the file (the pre-flight's stat pass, messages) and
        # the size (Detectron2's aspect-ratio grouping, replayed on resume), so that neither
        # needs a pass that unpickles every image again
        self.file_names = [d.get("file_name") for d in dataset_dicts]
        self.image_sizes = np.array([image_size(d) for d in dataset_dicts], np.int64).reshape(-1, 2)
        super().__init__(dataset_dicts, copy=False, serialize=True)
        self._repeat_factors = {}

    @property
    def num_images(self):
        return len(self)

    def file_name(self, i):
        """``file_name`` of image ``i`` (for error messages)."""
        name = self.file_names[i]
        return f"#{i}" if name is None else name

    def check_classes(self, num_classes, what="the model's"):
        """Raise ValueError naming the image of a category id outside ``0..num_classes-1``."""
        self.class_index.check_classes(num_classes, self.file_name, what)

    def repeat_factors(self, repeat_thresh, sqrt=True):
        """(N,) float32 tensor: Detectron2's repeat factors of this set (see
        :meth:`ImageClassIndex.repeat_factors`), computed once per setting."""
        key = (float(repeat_thresh), bool(sqrt))
        if key not in self._repeat_factors:
            r = self.class_index.repeat_factors(*key)
            self._repeat_factors[key] = torch.from_numpy(r)
        return self._repeat_factors[key]

    def describe(self):
        return ", ".join(self.names) if self.names else "the given dataset dicts"


def image_size(d):
    """(height, width) of a dataset dict, -1 for what it lacks."""
    h, w = d.get("height"), d.get("width")
    return (h if isinstance(h, int) else -1), (w if isinstance(w, int) else -1)


def as_training_set(data, names=()):
    """``data`` itself when it is a ``TrainingSet``, else a ``TrainingSet`` of the list."""
    return data if isinstance(data, TrainingSet) else TrainingSet(list(data), names=names)


# ------------------------------------------------------------------------------------------
# One read per process
# ------------------------------------------------------------------------------------------
_shared = None  # {key: TrainingSet} while a shared_training_sets() block is open


@contextlib.contextmanager
def shared_training_sets():
    """Within the block, :func:`training_set` returns one ``TrainingSet`` per key (re-entrant:
    an inner block shares the outer one's sets)."""
    global _shared
    if _shared is not None:
        yield
        return
    _shared = {}
    try:
        yield
    finally:
        _shared = None


def training_set_key(names, filter_empty=True, min_keypoints=0, proposal_files=None):
    """The key under which :func:`training_set` shares a set: its arguments, normalised."""
    names = (names,) if isinstance(names, str) else tuple(str(n) for n in names)
    files = tuple(proposal_files) if proposal_files else None
    return names, bool(filter_empty), int(min_keypoints), files


def training_set(names, filter_empty=True, min_keypoints=0, proposal_files=None):
    """The ``TrainingSet`` of registered datasets, read with Detectron2's
    ``get_detection_dataset_dicts`` (same arguments); the shared one inside
    :func:`shared_training_sets`. Usable in a LazyConfig as ``dataloader.train.dataset``::

        dataloader.train.dataset = L(training_set)(names="lvis_v1_train")
    """
    key = training_set_key(names, filter_empty, min_keypoints, proposal_files)
    if _shared is not None and key in _shared:
        return _shared[key]
    names, filter_empty, min_keypoints, files = key
    check_dicts_when_loaded(names)  # the evaluator's input rules, as Detectron2 reads them
    dicts = get_detection_dataset_dicts(
        list(names),
        filter_empty=filter_empty,
        min_keypoints=min_keypoints,
        proposal_files=list(files) if files else None,
    )
    out = TrainingSet(dicts, names=names)
    del dicts  # only the serialized copy stays
    if _shared is not None:
        _shared[key] = out
    return out


def loaded_training_set(names, filter_empty=True, min_keypoints=0, proposal_files=None):
    """The shared ``TrainingSet`` of these arguments if one was read in the open
    :func:`shared_training_sets` block, else None (reads nothing)."""
    if _shared is None:
        return None
    return _shared.get(training_set_key(names, filter_empty, min_keypoints, proposal_files))


def training_set_args(cfg):
    """The arguments of :func:`training_set` for a yacs config's training set: those
    Detectron2's ``build_detection_train_loader`` reads it with."""
    return dict(
        names=tuple(cfg.DATASETS.TRAIN),
        filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
        min_keypoints=(
            int(cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE) if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=(
            tuple(cfg.DATASETS.PROPOSAL_FILES_TRAIN) if cfg.MODEL.LOAD_PROPOSALS else None
        ),
    )


def training_set_from_cfg(cfg):
    """:func:`training_set` of a yacs config's ``DATASETS.TRAIN``."""
    return training_set(**training_set_args(cfg))


def training_repeat_factors(dataset, repeat_thresh, sqrt=True):
    """Detectron2's repeat factors of a ``TrainingSet`` from its index (no pass over the
    dicts), for a LazyConfig sampler::

        dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
            repeat_factors=L(training_repeat_factors)(
                dataset="${dataloader.train.dataset}", repeat_thresh=0.001
            )
        )

    (inside :func:`shared_training_sets` the interpolated dataset is the loader's own.)"""
    return as_training_set(dataset).repeat_factors(repeat_thresh, sqrt)
