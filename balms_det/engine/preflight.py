"""Checks of a training run before its first iteration, each an error naming the file, key or
class at fault, so that a mistake costs seconds, not a run:

* :func:`resolve_num_classes`: ``MODEL.ROI_HEADS.NUM_CLASSES`` 0 takes the number of the
  training set's categories (or, with no training set registered, of the ``MODEL.WEIGHTS``
  checkpoint's classifier), logged; ``setup_cfg`` calls it, so ``config.yaml`` holds the number;
* :func:`check_num_classes`: the model's K against the training set's categories;
* :func:`check_cat_info`: a ``CAT_INFO`` file against the training set's category ids and names;
* :func:`check_image_files`: every image file of the training and test sets exists and is not
  empty (one ``os.stat`` per file, as fast as a plain ``os.path.isfile`` loop at LVIS size:
  benchmarks/bench_image_check.py);
* :func:`check_frozen_start`: a run that freezes parameters needs trained weights to start from.

:func:`preflight_cfg` runs the data checks of a yacs config (``BalmsTrainer`` calls it once,
before it builds anything), :func:`preflight_datasets` those of any route (``tools/
lazy_train_net.py``).
"""

import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..class_counts import load_cat_info
from ..class_index import ImageClassIndex
from ..data.datasets import check_registered, dataset_categories
from ..data.training_set import training_set_from_cfg
from ..utils import format_examples

__all__ = [
    "resolve_num_classes",
    "check_num_classes",
    "check_cat_info",
    "missing_image_files",
    "check_image_files",
    "check_image_paths",
    "check_dataset_images",
    "check_frozen_start",
    "preflight_datasets",
    "preflight_cfg",
]

logger = logging.getLogger("balms_det")

NUM_CLASSES_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"
CAT_INFO_KEY = "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO"
ALLOW_FROZEN_KEY = "BALMS.ALLOW_FROZEN_RANDOM_INIT"
# paths stat-ed per thread task when missing_image_files runs in threads (on a local disk one
# thread is fastest: benchmarks/bench_image_check.py, docs/RESULTS.md)
_STAT_CHUNK = 4096


def _describe(name):
    f = MetadataCatalog.get(name).get("json_file", None)
    return f"'{name}'" + (f" (annotation file '{f}')" if f else "")


def resolve_num_classes(cfg):
    """``MODEL.ROI_HEADS.NUM_CLASSES`` 0 (unfrozen ``cfg``): set it to the number of categories
    of the training set (``DATASETS.TRAIN[0]``, registered), else of the classifier of the
    ``MODEL.WEIGHTS`` checkpoint (serving without the data). Returns the sentence to log (None
    when K was given). Negative K, or 0 with neither source, is a ValueError naming the key."""
    K = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if K > 0:
        return None
    if K < 0:
        raise ValueError(
            f"{NUM_CLASSES_KEY} is {K}: give the number of classes, or 0 to take the number of "
            "the training set's categories"
        )
    names = list(cfg.DATASETS.TRAIN)
    registered = set(DatasetCatalog.list())
    if names and names[0] in registered:
        classes = dataset_categories(names[0])
        if classes:
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
            return (
                f"{NUM_CLASSES_KEY} 0: {len(classes)} classes, the categories of the training set "
                f"{_describe(names[0])}"
            )
    weights = cfg.MODEL.WEIGHTS
    if weights and os.path.isfile(weights):
        from .checkpoint import checkpoint_num_classes

        K = checkpoint_num_classes(weights)
        if K:
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
            return f"{NUM_CLASSES_KEY} 0: {K} classes, the classifier of MODEL.WEIGHTS '{weights}'"
    raise ValueError(
        f"{NUM_CLASSES_KEY} is 0 (the number of the training set's categories), but "
        + (
            f"DATASETS.TRAIN names '{names[0]}', which is not registered"
            if names and names[0] not in registered
            else f"DATASETS.TRAIN {names} gives no categories"
        )
        + f" and MODEL.WEIGHTS ('{weights}') is no checkpoint to read it from. Register the "
        "training set (BALMS.DATASETS.REGISTER [[name, annotation_json, image_root]]) or set "
        f"{NUM_CLASSES_KEY}"
    )


def check_num_classes(num_classes, dataset_names, key=NUM_CLASSES_KEY, dicts=None):
    """ValueError when the model's ``num_classes`` differs from the categories of a training
    dataset (their ``thing_classes``; the datasets must be loaded, as Detectron2's loaders
    set them), or, for a dataset without ``thing_classes``, when an annotation of ``dicts``
    has a category id outside ``0..num_classes-1``."""
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"{key} is {num_classes} but the training set {_describe(name)} has "
                f"{len(classes)} categories: set {key} to {len(classes)} (or to 0, which takes "
                f"the number of the training set's categories)"
                + (
                    f". With {num_classes}, {num_classes - len(classes)} classes would never be "
                    "seen in training"
                    if num_classes > len(classes)
                    else ""
                )
            )
    if dicts is not None and all(
        MetadataCatalog.get(n).get("thing_classes", None) is None for n in dataset_names
    ):
        index = ImageClassIndex.from_dicts(dicts)
        _check_class_ids(
            index, lambda i: dicts[i].get("file_name"), num_classes, dataset_names, key
        )


def _check_class_ids(index, file_name, num_classes, dataset_names, key):
    """ValueError naming ``key`` and the image (``file_name(position)``) of a category id
    outside ``0..num_classes-1`` in the ``ImageClassIndex`` ``index`` (one vectorised test)."""
    try:
        index.check_classes(num_classes, file_name)
    except ValueError as e:
        raise ValueError(
            f"{key} is {num_classes} but in the training set {list(dataset_names)}: {e} "
            f"(contiguous ids 0..{num_classes - 1} expected)"
        ) from None


def check_cat_info(cat_info, num_classes, dataset_names, key=CAT_INFO_KEY):
    """Read ``cat_info`` with the training set's category ids and names (the first of
    ``dataset_names``, loaded): an error names the file and the category of a file that is
    malformed or describes another dataset (:func:`~balms_det.class_counts.load_cat_info`)."""
    if not cat_info:
        return None
    meta = MetadataCatalog.get(dataset_names[0]) if dataset_names else None
    try:
        return load_cat_info(
            cat_info,
            num_classes,
            meta.get("thing_dataset_id_to_contiguous_id", None) if meta else None,
            names=meta.get("thing_classes", None) if meta else None,
            dataset=dataset_names[0] if dataset_names else "",
        )
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{key}: {e}") from e


def _stat_chunk(paths):
    bad = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            bad.append((p, "missing" if isinstance(e, FileNotFoundError) else type(e).__name__))
            continue
        if not stat.S_ISREG(st.st_mode):
            bad.append((p, "not a file"))
        elif st.st_size == 0:
            bad.append((p, "empty"))
    return bad


def missing_image_files(paths, threads=1):
    """``[(path, reason)]`` for each local path that does not exist, is not a file or is empty
    (reason "missing", "not a file", "empty" or the OS error), in input order; URLs
    (``scheme://``) are skipped. One ``os.stat`` per path, in this thread or in ``threads``
    threads (which may overlap the round trips of a network file system; on a local disk they
    only cost)."""
    local = [p for p in paths if "://" not in str(p)]
    chunks = [local[i : i + _STAT_CHUNK] for i in range(0, len(local), _STAT_CHUNK)]
    if len(chunks) <= 1 or threads <= 1:
        return _stat_chunk(local)
    with ThreadPoolExecutor(threads) as ex:
        return [b for part in ex.map(_stat_chunk, chunks) for b in part]


def check_image_files(dicts, what):
    """FileNotFoundError naming ``what`` (the dataset and config key), how many image files of
    ``dicts`` are missing or empty and the first of them; silent when all are there."""
    return check_image_paths([d["file_name"] for d in dicts if "file_name" in d], what)


def check_image_paths(paths, what):
    """:func:`check_image_files` of a list of paths; returns their number."""
    bad = missing_image_files(paths)
    if bad:
        shown = "\n  ".join(f"{p} ({why})" for p, why in bad[:10])
        raise FileNotFoundError(
            f"{len(bad)} of {len(paths)} image files of {what} are missing or empty on disk; "
            f"the first:\n  {shown}\nFix the image folder (image_root) of the dataset's "
            "registration, or remove those images from its annotation file"
        )
    return len(paths)


_images_checked = set()  # datasets whose image files this process checked


def check_dataset_images(name, key, dicts=None):
    """:func:`check_image_files` of a registered dataset, once per process and only on the
    first process of each machine (generated datasets are skipped). Returns the number of
    files checked (0 when skipped)."""
    meta = MetadataCatalog.get(name)
    if name in _images_checked or meta.get("synthetic_config", None) is not None:
        return 0
    if comm.get_local_rank() != 0:
        return 0
    n = check_image_files(
        DatasetCatalog.get(name) if dicts is None else dicts, f"dataset '{name}' ({key})"
    )
    _images_checked.add(name)
    return n


def check_frozen_start(model, weights, allow, key=ALLOW_FROZEN_KEY, weights_key="MODEL.WEIGHTS"):
    """ValueError when ``model`` has frozen parameters (``BALMS.TRAINABLE_PARAMS``,
    ``MODEL.BACKBONE.FREEZE_AT``) but training starts from no weights (``weights`` empty): the
    frozen layers would keep their random initialisation. ``allow`` (the config key ``key``)
    lets such a run go on, with a warning."""
    if weights:
        return
    from detectron2.layers import FrozenBatchNorm2d

    frozen_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    if frozen_bn:
        logger.warning(
            "%d FrozenBN layers (MODEL.RESNETS.NORM 'FrozenBN') and an empty %s: frozen "
            "BatchNorm keeps its initial statistics, so the network trains without "
            "normalisation. From scratch, use NORM 'BN' (configs/own_data/cpu_r18.yaml), 'SyncBN' "
            "or 'GN'",
            frozen_bn,
            weights_key,
        )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if not frozen:
        return
    total = sum(1 for _ in model.parameters())
    what = (
        f"{len(frozen)} of {total} parameter tensors are frozen "
        f"{format_examples(frozen, 5, sort=False)} but {weights_key} is empty: they would keep "
        "their random initialisation"
    )
    if allow:
        logger.warning("%s (%s is set)", what, key)
        return
    raise ValueError(
        f"{what}. Start from trained weights ({weights_key}: e.g. the stage-1 checkpoint of a "
        "decoupled stage 2, or ImageNet weights with MODEL.BACKBONE.FREEZE_AT), freeze nothing "
        f"(BALMS.TRAINABLE_PARAMS [], FREEZE_AT 0), or set {key} True to train on random "
        "frozen layers on purpose"
    )


def preflight_datasets(
    num_classes, train_names, test_names=(), cat_info="", keys=None, train_set=None
):
    """The data checks of a training run: ``num_classes`` against the training set's
    categories, ``cat_info`` against them, and every image file of the training and test sets
    (a stat pass, on the first process of each machine). ``keys`` name the config keys in
    errors: ``num_classes``, ``cat_info``, ``train``, ``test`` (the yacs ones by default).
    ``train_set``: a callable returning the training set as the train loader reads it (a
    :class:`~balms_det.data.training_set.TrainingSet`, e.g. ``training_set_from_cfg``); inside
    ``shared_training_sets`` the checks then read nothing the loader does not (None: each
    training dataset is read by ``DatasetCatalog``). Returns the number of image files
    checked."""
    keys = dict(
        dict(
            num_classes=NUM_CLASSES_KEY,
            cat_info=CAT_INFO_KEY,
            train="DATASETS.TRAIN",
            test="DATASETS.TEST",
        ),
        **(keys or {}),
    )
    train_names, test_names = list(train_names), list(test_names)
    check_registered(train_names, keys["train"])
    check_registered(test_names, keys["test"])
    checked = 0
    if train_set is not None:
        checked += _check_training_set(train_set, num_classes, train_names, keys)
    for names, key in ((train_names, keys["train"]), (test_names, keys["test"])):
        if train_set is not None and key == keys["train"]:
            continue
        for name in names:
            if MetadataCatalog.get(name).get("synthetic_config", None) is not None:
                continue  # generated on first use, with its thing_classes known
            dicts = DatasetCatalog.get(name)  # sets thing_classes (Detectron2's loaders)
            if key == keys["train"]:
                check_num_classes(num_classes, [name], keys["num_classes"], dicts)
            checked += check_dataset_images(name, key, dicts)
    check_num_classes(num_classes, train_names, keys["num_classes"])
    check_cat_info(cat_info, num_classes, train_names, keys["cat_info"])
    if checked:
        logger.info("Pre-flight: %d image files of %s are there", checked, train_names + test_names)
    return checked


def preflight_cfg(cfg):
    """:func:`preflight_datasets` of a yacs config (the training run's data checks)."""
    return preflight_datasets(
        cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        cfg.DATASETS.TRAIN,
        cfg.DATASETS.TEST,
        cfg.MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO,
        train_set=lambda: training_set_from_cfg(cfg),
    )


def _names_of(names, key):
    """How an error names datasets: ``dataset 'a' (KEY)`` or ``datasets ['a', 'b'] (KEY)``."""
    return f"dataset '{names[0]}' ({key})" if len(names) == 1 else f"datasets {list(names)} ({key})"


def _check_training_set(train_set, num_classes, train_names, keys):
    """The training-set checks of :func:`preflight_datasets` on the set the loader reads
    (``train_set()``): category ids in range (its class index, vectorised) and, on the first
    process of each machine, its image files (generated datasets skipped). Returns the number
    of image files checked."""
    train = train_set()  # sets thing_classes (Detectron2's loaders)
    check_num_classes(num_classes, train_names, keys["num_classes"])
    if all(MetadataCatalog.get(n).get("thing_classes", None) is None for n in train_names):
        index, key = train.class_index, keys["num_classes"]
        _check_class_ids(index, train.file_name, num_classes, train_names, key)
    todo = [
        n
        for n in train_names
        if n not in _images_checked and MetadataCatalog.get(n).get("synthetic_config", None) is None
    ]
    if not todo or comm.get_local_rank() != 0:
        return 0
    paths = [f for f in train.file_names if f is not None]
    n = check_image_paths(paths, _names_of(train_names, keys["train"]))
    _images_checked.update(train_names)
    return n
