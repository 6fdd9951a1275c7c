"""Class-balanced few-shot subsets of a detection training set (BTM; docs/METHODS.md).

Balanced Training and Merging fine-tunes a stage-1 detector on ``N_D`` class-balanced few-shot
subsets and averages the fine-tuned weights. In classification every sample has one label and a
subset with ``N_C`` samples per class is exactly balanced. A detection image holds instances of
several classes, so "``N_C`` images per class" needs a precise rule; this module's rule:

* Classes are processed **rarest first** (ascending number of training images that contain
  them, ties by class id), so tail classes choose their images before head classes and are never
  crowded out.
* Every class ``c`` with ``n_c`` training images (images holding at least one non-crowd instance
  of ``c``) gets exactly ``q_c = min(N_C, n_c)`` images **selected for it**; all of them contain
  ``c``. A class without training images gets none.
* ``mode="fill"`` (default): images already in the subset (chosen for a rarer class) that contain
  ``c`` count towards ``q_c`` first; only the missing ones are drawn, uniformly without
  replacement, from the images of ``c`` not yet in the subset. When more than ``q_c`` images of
  the subset already contain ``c``, ``q_c`` of them are (randomly) designated as selected for
  ``c``. This keeps head classes as close to ``N_C`` images as the co-occurrences allow.
* ``mode="independent"``: each class draws its ``q_c`` images from all its images, independently
  of the others; the subset is the union (an image drawn for two classes appears once).
* The subset is the union of the images selected for all classes (deduplicated). An image chosen
  for one class brings **all** its instances, so the subset holds, for class ``c``, at least
  ``q_c`` images and possibly more (images selected for other classes that also contain ``c``):
  co-occurring classes, usually frequent ones, are over-represented. The per-class *achieved*
  image and instance counts of every subset are reported next to the *selected* ones
  (:func:`subset_statistics`).

Draws are deterministic: subset ``i`` of seed ``s`` uses ``numpy.random.default_rng`` seeded with
``SeedSequence([s, i])``, so the first subsets do not change when ``N_D`` grows, the same seed
gives identical subsets and different seeds give different ones.

Subsets are registered as Detectron2 datasets ``<train>_btm_s<seed>_<i>`` with the source's
metadata. The BTM pipeline writes each subset's dicts to its own file when it draws them
(:func:`write_subset_files`, one read of the source) and registers the subsets from those files,
so a fine-tune reads only its subset: its start-up and memory scale with the subset, not with
the source. Registered without files, a subset's loader reads the source and picks its images.
"""

import copy
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field

import numpy as np

from ..class_index import instance_classes
from ..class_index import ImageClassIndex
from ..longtail import GROUPS
from ..utils import atomic_write, atomic_write_json, markdown_table

__all__ = [
    "BalancedSubset",
    "SUBSET_MODES",
    "images_per_class",
    "sample_balanced_subset",
    "sample_balanced_subsets",
    "subset_statistics",
    "format_subset_statistics",
    "subset_dataset_name",
    "register_balanced_subsets",
    "register_subsets_file",
    "save_subsets",
    "load_subsets",
    "subset_file",
    "write_subset_files",
]

logger = logging.getLogger(__name__)

SUBSET_MODES = ("fill", "independent")


@dataclass
class BalancedSubset:
    """One class-balanced subset.

    Attributes:
        index (int): position ``i`` of the subset in its draw.
        seed (int): seed of the draw.
        shots (int): ``N_C``.
        mode (str): ``"fill"`` or ``"independent"``.
        indices (list[int]): sorted positions of the chosen images in the source dicts.
        image_ids (list): their ``image_id`` (``None`` where the dicts have none).
        selected (dict[int, list[int]]): class -> positions of the images selected for it.
    """

    index: int
    seed: int
    shots: int
    mode: str
    indices: list
    image_ids: list
    selected: dict = field(default_factory=dict)

    def to_json(self):
        d = asdict(self)
        d["selected"] = {str(k): v for k, v in self.selected.items()}
        return d

    @classmethod
    def from_json(cls, d):
        d = dict(d)
        d["selected"] = {int(k): list(v) for k, v in d.get("selected", {}).items()}
        return cls(**d)


def images_per_class(dataset_dicts, num_classes):
    """list of K sorted lists: positions of the images that contain each class (non-crowd)."""
    index = ImageClassIndex.from_dicts(dataset_dicts)
    index.check_classes(num_classes, lambda i: dataset_dicts[i].get("file_name"), "the")
    return index.images_per_class(num_classes)


def _rng(seed, index):
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_balanced_subset(
    dataset_dicts, num_classes, shots, seed=0, index=0, mode="fill", class_images=None
):
    """Draw subset ``index`` of seed ``seed`` (see the module docstring for the rule).

    Args:
        dataset_dicts (list[dict]): Detectron2-format dicts with contiguous category ids.
        num_classes (int): K.
        shots (int): N_C, images selected per class (a class with fewer uses all it has).
        seed (int), index (int): the draw is a function of both.
        mode (str): ``"fill"`` or ``"independent"``.
        class_images: precomputed :func:`images_per_class` (optional).

    Returns:
        BalancedSubset
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"Unknown subset mode '{mode}'; choose one of {SUBSET_MODES}")
    if shots < 1:
        raise ValueError(f"BALMS.BTM.SHOTS must be >= 1, got {shots}")
    if class_images is None:
        class_images = images_per_class(dataset_dicts, num_classes)
    rng = _rng(seed, index)
    order = sorted(range(num_classes), key=lambda c: (len(class_images[c]), c))
    chosen = set()
    selected = {}
    for c in order:
        pool = class_images[c]
        quota = min(shots, len(pool))
        if quota == 0:
            continue
        if mode == "independent":
            pick = rng.choice(len(pool), size=quota, replace=False)
            sel = sorted(pool[j] for j in pick)
        else:
            have = [i for i in pool if i in chosen]
            if len(have) >= quota:
                pick = rng.choice(len(have), size=quota, replace=False)
                sel = sorted(have[j] for j in pick)
            else:
                rest = [i for i in pool if i not in chosen]
                pick = rng.choice(len(rest), size=quota - len(have), replace=False)
                sel = sorted(have + [rest[j] for j in pick])
        selected[c] = sel
        chosen.update(sel)
    indices = sorted(chosen)
    return BalancedSubset(
        index=int(index),
        seed=int(seed),
        shots=int(shots),
        mode=mode,
        indices=indices,
        image_ids=[dataset_dicts[i].get("image_id") for i in indices],
        selected={c: selected[c] for c in sorted(selected)},
    )


def sample_balanced_subsets(
    dataset_dicts, num_classes, num_subsets, shots, seed=0, mode="fill", class_images=None
):
    """``num_subsets`` subsets (indices 0..N_D-1) of one seed: list[BalancedSubset].
    ``class_images``: precomputed :func:`images_per_class` (optional)."""
    if num_subsets < 1:
        raise ValueError(f"BALMS.BTM.NUM_SUBSETS must be >= 1, got {num_subsets}")
    if class_images is None:
        class_images = images_per_class(dataset_dicts, num_classes)
    return [
        sample_balanced_subset(dataset_dicts, num_classes, shots, seed, i, mode, class_images)
        for i in range(num_subsets)
    ]


def subset_statistics(dataset_dicts, subset, num_classes, class_images=None):
    """Per-class counts of one subset, as a dict of K-long integer lists.

    ``available_images``: training images containing the class; ``selected_images``: images
    selected for it (``min(N_C, available)``); ``images`` / ``instances``: images of the subset
    that contain the class and its non-crowd instances in the subset (what training sees).
    ``class_images``: precomputed :func:`images_per_class` (optional).
    """
    if class_images is None:
        class_images = images_per_class(dataset_dicts, num_classes)
    available = np.array([len(c) for c in class_images], np.int64)
    images = np.zeros(num_classes, np.int64)
    instances = np.zeros(num_classes, np.int64)
    for i in subset.indices:
        d = dataset_dicts[i]
        cls = instance_classes(d)
        np.add.at(instances, cls, 1)
        np.add.at(images, sorted(set(cls)), 1)
    selected = np.zeros(num_classes, np.int64)
    for c, sel in subset.selected.items():
        selected[int(c)] = len(sel)
    return dict(
        num_images=len(subset.indices),
        available_images=available.tolist(),
        selected_images=selected.tolist(),
        images=images.tolist(),
        instances=instances.tolist(),
    )


def format_subset_statistics(stats, groups=None):
    """A Markdown summary of the achieved counts of several subsets (one row per subset).

    Args:
        stats (list[dict]): :func:`subset_statistics` of each subset.
        groups (list[str]): the r/c/f group of each class (optional): adds per-group columns.
    """
    head = ["subset", "images", "instances", "inst/class min", "median", "max", "max/min"]
    gnames = [g for g in GROUPS if groups and g in groups]
    head += [f"inst/class {g}" for g in gnames]
    rows = []
    for i, s in enumerate(stats):
        inst = np.asarray(s["instances"])
        present = inst[np.asarray(s["available_images"]) > 0]
        lo = int(present.min()) if present.size else 0
        hi = int(present.max()) if present.size else 0
        row = [
            str(i),
            str(s["num_images"]),
            str(int(inst.sum())),
            str(lo),
            f"{float(np.median(present)) if present.size else 0:.1f}",
            str(hi),
            f"{hi / lo:.1f}" if lo else "inf",
        ]
        for g in gnames:
            sel = np.asarray([gg == g for gg in groups]) & (np.asarray(s["available_images"]) > 0)
            row.append(f"{inst[sel].mean():.1f}" if sel.any() else "-")
        rows.append(row)
    return markdown_table(rows, head)


def subset_dataset_name(source_names, seed, index):
    """``<train>_btm_s<seed>_<i>`` (source names joined with '+' when several)."""
    if isinstance(source_names, str):
        source_names = [source_names]
    return f"{'+'.join(source_names)}_btm_s{seed}_{index}"


def _load_source(source_names):
    from detectron2.data import DatasetCatalog

    dicts = []
    for name in source_names:
        dicts.extend(DatasetCatalog.get(name))
    return dicts


def subset_file(subsets_path, index):
    """Where :func:`write_subset_files` puts subset ``index`` of ``subsets.json``:
    ``subsets/subset_<index>.pkl`` beside it."""
    return os.path.join(
        os.path.dirname(os.path.abspath(subsets_path)), "subsets", f"subset_{index}.pkl"
    )


def write_subset_files(subsets_path, source_names, subsets, source_dicts=None):
    """Write the dicts of each subset to its own file (:func:`subset_file`): a pickle of
    ``{"source", "image_ids", "dicts"}`` (Detectron2 dicts, exact). ``source_dicts``: the
    concatenated source datasets when already loaded, else they are loaded once (and checked
    to still hold the image ids the subsets were drawn with). Returns the paths."""
    if source_dicts is None:
        source_dicts = _load_source(source_names)
    paths = []
    for s in subsets:
        name = subset_dataset_name(source_names, s.seed, s.index)
        dicts = _pick(source_dicts, s.indices, s.image_ids, source_names, name)
        payload = dict(source=list(source_names), image_ids=list(s.image_ids), dicts=dicts)
        path = subset_file(subsets_path, s.index)
        atomic_write(path, lambda f: pickle.dump(payload, f, pickle.HIGHEST_PROTOCOL), mode="wb")
        paths.append(path)
    return paths


def _pick(dicts, indices, image_ids, source_names, name):
    out = []
    for i, image_id in zip(indices, image_ids):
        if i >= len(dicts) or dicts[i].get("image_id") != image_id:
            raise RuntimeError(
                f"BTM subset '{name}' was drawn from a different version of "
                f"{list(source_names)}: position {i} no longer holds image_id {image_id}. "
                "Draw the subsets again (a new output directory)."
            )
        out.append(dicts[i])
    return out


def _subset_file_loader(path, image_ids, name):
    def load():
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"BTM subset '{name}': its file '{path}' is missing (written when the subsets "
                "are drawn); re-run tools/btm.py, which writes it again"
            )
        with open(path, "rb") as f:  # written by write_subset_files of this pipeline
            data = pickle.load(f)
        if data.get("image_ids") != list(image_ids):
            raise RuntimeError(
                f"BTM subset file '{path}' does not hold the images of subset '{name}' in "
                "subsets.json; draw the subsets again (a new output directory)"
            )
        return data["dicts"]

    return load


def _subset_loader(source_names, indices, image_ids, name):
    cache = []  # the chosen dicts: the source is loaded and checked once per registration

    def load():
        if not cache:
            cache.append(_pick(_load_source(source_names), indices, image_ids, source_names, name))
        return copy.deepcopy(cache[0])

    return load


def register_balanced_subsets(source_names, subsets, files=None):
    """Register each subset as ``<train>_btm_s<seed>_<i>`` with the metadata of the first source.

    With ``files`` (one per subset, :func:`write_subset_files`), a subset's loader reads only
    its file; without, it loads the concatenated source datasets and returns the chosen dicts.
    Either checks that the image ids are those the subset was drawn with. Re-registering a name
    replaces it. Returns the names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(source_names, str):
        source_names = [source_names]
    source_names = list(source_names)
    meta = MetadataCatalog.get(source_names[0]).as_dict()
    meta.pop("name", None)
    # counts cached from the source's data (class_counts.py) are not the subset's
    meta.pop("balms_class_counts", None)
    names = []
    for k, s in enumerate(subsets):
        name = subset_dataset_name(source_names, s.seed, s.index)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if files is not None:
            load = _subset_file_loader(files[k], s.image_ids, name)
        else:
            load = _subset_loader(source_names, s.indices, s.image_ids, name)
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            **meta,
            btm_source=list(source_names),
            btm_subset_index=s.index,
            btm_num_images=len(s.indices),
        )
        names.append(name)
    return names


def register_subsets_file(subsets_path):
    """Register the subsets of a ``subsets.json`` from their own files (what a fine-tune's
    process does: it reads only its subset). Returns (dict of the file, subsets, names)."""
    data, subsets = load_subsets(subsets_path)
    files = [subset_file(subsets_path, s.index) for s in subsets]
    names = register_balanced_subsets(data["source"], subsets, files)
    return data, subsets, names


def save_subsets(path, source_names, num_classes, subsets, stats=None, params=None):
    """Write the subsets (and their statistics) to a JSON file; returns the dict written."""
    data = dict(
        source=list(source_names),
        num_classes=int(num_classes),
        params=params or {},
        subsets=[s.to_json() for s in subsets],
        statistics=stats or [],
    )
    atomic_write_json(data, path, indent=None)
    return data


def load_subsets(path):
    """Read :func:`save_subsets`'s file: (dict of the file, list[BalancedSubset])."""
    with open(path) as f:
        data = json.load(f)
    return data, [BalancedSubset.from_json(s) for s in data["subsets"]]
