"""A training data stream that continues where it stopped: resume consumes the same batches as
an uninterrupted run.

Detectron2's training loader starts its index stream, and its augmentation random numbers, from
the beginning whenever it is built, so a resumed run trains again on the images of its first
iterations. Here:

- **Positions.** Position ``p`` of a process's stream is the ``p``-th index its sampler yields
  (Detectron2's ``TrainingSampler``, ``RepeatFactorTrainingSampler`` or any other infinite
  sampler). The image at position ``p`` is mapped (read, augmented) with ``random``, numpy and
  torch seeded from ``(seed, salt, rank, p)``, so its tensors depend neither on the number of
  DataLoader workers, nor on what they prefetched, nor on what was mapped before.
- **Order.** Workers take the stream's items in turn (one item each with aspect-ratio grouping,
  one batch each without), so the DataLoader hands them over in stream order.
- **State.** What a checkpoint needs is the number of batches taken (plus the seeds). On resume
  the positions those batches consumed are skipped as indices, without reading an image: without
  aspect-ratio grouping batch ``j`` is positions ``[j * B, (j + 1) * B)``; with grouping, the
  grouping is replayed on the annotated sizes (``width``/``height`` of the dataset dicts), which
  gives the positions waiting in a bucket at the checkpoint (grouped with images not yet read):
  they are mapped again, with the same random numbers, before the positions never read. Images
  prefetched by workers but not taken by the trainer are not part of the state: they are read
  again after a resume, as they would have been used without one.

:func:`build_resumable_train_loader` has the arguments of Detectron2's
``build_detection_train_loader`` (and its ``from_config``), plus ``seed``.
"""

import itertools
import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetFromList, build_batch_data_loader, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from torch.utils.data import IterableDataset, get_worker_info

from .training_set import image_size

__all__ = [
    "derived_seed",
    "seed_all_rngs",
    "ResumableStream",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
]

logger = logging.getLogger(__name__)

SALT_TRAIN = 0  # the training loader's items
SALT_META = 1  # the Meta Reweigher's meta batches
SALT_STEP = 2  # the training step (engine/resume.py)


def derived_seed(seed, *keys):
    """A 64-bit seed mixed from ``seed`` and integer ``keys`` (numpy's ``SeedSequence``: nearby
    keys give unrelated streams)."""
    words = np.random.SeedSequence([int(seed) % 2**63, *(int(k) for k in keys)]).generate_state(2)
    return int(words[0]) | (int(words[1]) << 32)


def seed_all_rngs(seed, cuda=True):
    """Seed ``random``, numpy's global RNG and torch's CPU generator (and CUDA's with ``cuda``)
    from one 64-bit ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@contextmanager
def _own_rngs(seed):
    """``random``, numpy and torch (CPU) seeded with ``seed`` inside, the caller's states
    restored after (mapping in the main process leaves the training step's random numbers
    alone)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_all_rngs(seed, cuda=False)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _orientations(dicts, what):
    """(N,) bool: ``width > height`` of each dataset dict (Detectron2's grouping key); ``dicts``
    a list, a map-style dataset (read one item at a time, none kept) or a ``TrainingSet`` (its
    ``image_sizes``: no pass over the images)."""
    sizes = getattr(dicts, "image_sizes", None)
    if sizes is None:
        items = map(dicts.__getitem__, range(len(dicts)))
        sizes = np.array([image_size(d) for d in items], np.int64).reshape(-1, 2)
    missing = np.flatnonzero((sizes < 0).any(axis=1))
    if len(missing):
        i = int(missing[0])
        raise ValueError(
            f"DATALOADER.ASPECT_RATIO_GROUPING (aspect_ratio_grouping=True) needs 'width' "
            f"and 'height' in every dataset dict of {what}, to resume a run exactly (the "
            f"grouping is replayed on them); image {i} ('{dicts[i].get('file_name', '?')}') has "
            "none: add them to the dataset dicts or turn the grouping off"
        )
    return sizes[:, 1] > sizes[:, 0]


class ResumableStream(IterableDataset):
    """One process's stream of mapped dataset dicts, from its resume point on.

    Args:
        dataset: map-style dataset of dataset dicts (e.g. Detectron2's ``DatasetFromList``).
        mapper (callable or None): dataset dict -> model input; None: the dict itself. A
            mapper that returns None has the item replaced by another index drawn from the
            position's random numbers (of the same orientation when grouping).
        sampler: an infinite sampler of indices of ``dataset`` (this process's share).
        seed (int): seed of the mapping random numbers; the same on every process.
        salt (int): separates streams that share a seed (training loader, meta loader).
        chunk (int): consecutive items a DataLoader worker takes in turn (the batch size when
            workers batch, 1 when the main process groups).
        orientations (np.ndarray or None): ``width > height`` per index, when the batches are
            grouped by aspect ratio (needed to replay the grouping on resume).
    """

    def __init__(
        self, dataset, mapper, sampler, *, seed, salt=SALT_TRAIN, chunk=1, orientations=None
    ):
        self.dataset = dataset
        self.mapper = mapper
        self.sampler = sampler
        self.seed = int(seed)
        self.salt = int(salt)
        self.chunk = int(chunk)
        self.orientations = orientations
        self.rank = comm.get_rank()
        self.start = 0  # first position never read
        self.redo = ()  # positions before `start` read again first (waiting in a bucket)

    def resume_after(self, batches, batch_size):
        """Set the resume point after ``batches`` batches of ``batch_size`` were taken from the
        stream (indices only: no item is read)."""
        batches, batch_size = int(batches), int(batch_size)
        if self.orientations is None:
            self.start, self.redo = batches * batch_size, ()
            return
        buckets, done, start = ([], []), 0, 0
        if batches > 0:
            for p, idx in enumerate(self.sampler):
                bucket = buckets[0 if self.orientations[idx] else 1]
                bucket.append(p)
                if len(bucket) == batch_size:
                    bucket.clear()
                    done += 1
                    if done == batches:
                        start = p + 1
                        break
        self.start, self.redo = start, tuple(sorted(buckets[0] + buckets[1]))

    def positions(self):
        """``(position, index)`` pairs of the stream from the resume point on."""
        redo = set(self.redo)
        first = self.redo[0] if self.redo else self.start
        for p, idx in itertools.islice(enumerate(self.sampler), first, None):
            if p >= self.start or p in redo:
                yield p, idx

    def __iter__(self):
        info = get_worker_info()
        workers, me = (1, 0) if info is None else (info.num_workers, info.id)
        for j, (p, idx) in enumerate(self.positions()):
            if (j // self.chunk) % workers == me:
                yield self.item(p, idx)

    def item(self, position, idx):
        """The mapped item at ``position`` (index ``idx``), with the position's random numbers."""
        with _own_rngs(derived_seed(self.seed, self.salt, self.rank, position)):
            for attempt in itertools.count():
                d = self.dataset[idx]
                out = d if self.mapper is None else self.mapper(d)
                if out is not None:
                    break
                if attempt >= 2:
                    logger.warning(
                        "The training mapper returned None for %d images in a row (last: index "
                        "%d, '%s'); drawing another",
                        attempt + 1,
                        idx,
                        d.get("file_name", "?") if isinstance(d, dict) else "?",
                    )
                idx = self._replacement(idx)
        if self.orientations is not None:
            self._check_orientation(out, idx)
        return out

    def _replacement(self, idx):
        if self.orientations is None:
            return random.randrange(len(self.dataset))
        same = np.flatnonzero(self.orientations == self.orientations[idx])
        return int(same[random.randrange(len(same))])

    def _check_orientation(self, out, idx):
        if not isinstance(out, dict) or "width" not in out or "height" not in out:
            raise ValueError(
                "aspect-ratio grouping needs 'width' and 'height' in the mapped dicts (Detectron2's "
                f"DatasetMapper keeps them); the mapper returned {type(out).__name__} without them"
            )
        if bool(out["width"] > out["height"]) != bool(self.orientations[idx]):
            raise ValueError(
                f"image {idx} ('{out.get('file_name', '?')}') is {out['width']}x{out['height']} "
                "after mapping but of the other orientation in its dataset dict: aspect-ratio "
                "grouping uses the dataset dict's width/height; correct them"
            )


class ResumableTrainLoader:
    """The training loader: an iterable of batches (lists of mapped dicts, or what
    ``collate_fn`` makes of them) that knows how many batches were taken from it.

    ``state_dict()`` holds that count and the seeds; ``load_state_dict`` (before iterating)
    makes the next iteration start after those batches. Each ``iter()`` continues after the
    batches taken so far. The DataLoader is Detectron2's ``build_batch_data_loader`` (its
    aspect-ratio grouping, workers and ``collate_fn``).
    """

    def __init__(self, stream, *, batch_size, aspect_ratio_grouping, num_workers, **kwargs):
        self.stream = stream
        self.batch_size = int(batch_size)
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        self.num_workers = int(num_workers)
        self.kwargs = kwargs
        self.batches = 0

    @property
    def seed(self):
        return self.stream.seed

    def __iter__(self):
        """PyTorch's loader iterator is started here, not at the first ``next`` (its base
        seed is read then: a hook that calls ``iter`` in ``before_train`` keeps that read out
        of the training steps)."""
        self.stream.resume_after(self.batches, self.batch_size)
        loader = build_batch_data_loader(
            self.stream,
            None,
            None,
            single_gpu_batch_size=self.batch_size,
            aspect_ratio_grouping=self.aspect_ratio_grouping,
            num_workers=self.num_workers,
            seed=self.stream.seed % 2**63,  # workers' base seed: not the global generator's
            **self.kwargs,
        )
        return self._batches(iter(loader))

    def _batches(self, it):
        for batch in it:
            self.batches += 1
            yield batch

    def state_dict(self):
        return {
            "batches": self.batches,
            "seed": self.stream.seed,
            "sampler_seed": getattr(self.stream.sampler, "_seed", None),
            "world_size": comm.get_world_size(),
            "batch_size": self.batch_size,
            "aspect_ratio_grouping": self.aspect_ratio_grouping,
        }

    def load_state_dict(self, state):
        changed = [
            f"{k} {state[k]} -> {now}"
            for k, now in (
                ("world_size", comm.get_world_size()),
                ("batch_size", self.batch_size),
                ("aspect_ratio_grouping", self.aspect_ratio_grouping),
            )
            if k in state and state[k] != now
        ]
        if changed:
            logger.warning(
                "The checkpoint's data stream was taken with other settings (%s): the resumed "
                "stream skips as many batches but is not the uninterrupted run's",
                ", ".join(changed),
            )
        self.batches = int(state["batches"])
        self.stream.seed = int(state["seed"])
        sampler_seed = state.get("sampler_seed")
        if sampler_seed is not None and hasattr(self.stream.sampler, "_seed"):
            self.stream.sampler._seed = int(sampler_seed)  # a seed drawn at random, restored
        logger.info("Training data stream: resuming after %d batches", self.batches)


def _from_config(cfg, mapper=None, *, dataset=None, sampler=None):
    kwargs = build_detection_train_loader.from_config(
        cfg, mapper=mapper, dataset=dataset, sampler=sampler
    )
    kwargs["seed"] = int(cfg.SEED) if cfg.SEED >= 0 else None
    return kwargs


@configurable(from_config=_from_config)
def build_resumable_train_loader(
    dataset,
    *,
    mapper,
    sampler=None,
    total_batch_size,
    aspect_ratio_grouping=True,
    num_workers=0,
    seed=None,
    salt=SALT_TRAIN,
    **kwargs,
):
    """Detectron2's ``build_detection_train_loader`` (same arguments, same ``from_config``)
    as a :class:`ResumableTrainLoader`.

    Args:
        seed (int or None): seed of the mapping random numbers (augmentations); None: drawn at
            random, the same on every process (saved in checkpoints). ``from_config``: ``SEED``
            when >= 0.
        salt (int): separates loaders that share a seed.

    An iterable dataset (no positions to skip) gets Detectron2's loader, with a warning that a
    resume restarts it.
    """
    if isinstance(dataset, torch.utils.data.IterableDataset):
        logger.warning(
            "The training dataset is an IterableDataset: a resumed run restarts its stream "
            "(balms-det resumes map-style datasets and lists of dicts exactly)"
        )
        return build_detection_train_loader(
            dataset,
            mapper=mapper,
            sampler=sampler,
            total_batch_size=total_batch_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=num_workers,
            **kwargs,
        )
    world = comm.get_world_size()
    if int(total_batch_size) <= 0 or int(total_batch_size) % world:
        raise ValueError(
            f"the total batch size ({total_batch_size}, SOLVER.IMS_PER_BATCH) must be a "
            f"positive multiple of the number of processes ({world})"
        )
    batch_size = int(total_batch_size) // world
    orientations = None
    if aspect_ratio_grouping:
        orientations = _orientations(dataset, "the training set")
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if sampler is None:
        sampler = TrainingSampler(len(dataset))
    stream = ResumableStream(
        dataset,
        mapper,
        sampler,
        seed=int(comm.shared_random_seed()) if seed is None else int(seed),
        salt=salt,
        chunk=1 if aspect_ratio_grouping else batch_size,
        orientations=orientations,
    )
    return ResumableTrainLoader(
        stream,
        batch_size=batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        **kwargs,
    )
