"""Dataset registration: the synthetic long-tailed set, COCO/LVIS-format files named in the
config (``BALMS.DATASETS.REGISTER``), and checks of registered dataset names and files."""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json

from ..utils import read_json
from .annotation_checks import check_annotation_file
from .synthetic import SyntheticLTConfig, class_names, generate_synthetic_lt

__all__ = [
    "register_datasets_from_cfg",
    "register_file_dataset",
    "register_file_datasets",
    "check_registered",
    "register_synthetic_lt",
    "register_synthetic_from_cfg",
    "synthetic_root",
    "check_dataset_files",
    "dataset_categories",
    "SYNTHETIC_DEFAULT",
    "SYNTHETIC_TINY",
]

logger = logging.getLogger(__name__)

SYNTHETIC_DEFAULT = SyntheticLTConfig()
# A tiny version for tests and smoke runs: every LVIS group still populated.
SYNTHETIC_TINY = SyntheticLTConfig(
    num_classes=12,
    num_train_images=160,
    val_instances_per_class=4,
    image_size=96,
    max_images_per_class=130,
    min_images_per_class=2,
)


def synthetic_root():
    """Cache folder of generated data: $BALMS_DATASETS, else <repo>/datasets/synthetic when run
    from a checkout, else ~/.cache/balms_det."""
    env = os.environ.get("BALMS_DATASETS")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(repo, "setup.py")) and os.path.isdir(
        os.path.join(repo, "datasets")
    ):
        return os.path.join(repo, "datasets", "synthetic")
    return os.path.join(os.path.expanduser("~"), ".cache", "balms_det")


def register_synthetic_lt(prefix, cfg: SyntheticLTConfig, root=None):
    """Register ``<prefix>_train`` and ``<prefix>_val`` (LVIS format, evaluator_type "lvis").

    Files are generated on first use (the first ``DatasetCatalog.get``) and reused after.
    Re-registering a name replaces it.
    """
    root = root or synthetic_root()
    out_dir = os.path.join(root, f"{prefix}-{cfg.key()}")
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        json_file = os.path.join(out_dir, f"{split}.json")

        def load(split=split, name=name):
            paths = generate_synthetic_lt(root, cfg, name=prefix)
            meta = MetadataCatalog.get(name)
            if split == "train" and not meta.get("class_image_count", None):
                # Detectron2's LVIS metadata field (used e.g. by its federated loss)
                with open(paths["train_json"]) as f:
                    cats = json.load(f)["categories"]
                meta.class_image_count = [
                    {"id": c["id"], "image_count": c["image_count"]} for c in cats
                ]
            return load_lvis_json(paths[f"{split}_json"], paths["image_root"])

        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=class_names(cfg),
            json_file=json_file,
            image_root=out_dir + os.sep,
            evaluator_type="lvis",
            synthetic_config=cfg,
        )


def register_synthetic_from_cfg(cfg):
    """Re-register ``synth_lt_train/val`` with the parameters of ``cfg.BALMS.SYNTHETIC``."""
    s = cfg.BALMS.SYNTHETIC
    params = SyntheticLTConfig(
        num_classes=s.NUM_CLASSES,
        num_train_images=s.NUM_TRAIN_IMAGES,
        val_instances_per_class=s.VAL_INSTANCES_PER_CLASS,
        image_size=s.IMAGE_SIZE,
        seed=s.SEED,
        max_images_per_class=s.MAX_IMAGES_PER_CLASS,
        min_images_per_class=s.MIN_IMAGES_PER_CLASS,
    )
    if params != MetadataCatalog.get("synth_lt_train").get("synthetic_config", None):
        register_synthetic_lt("synth_lt", params, s.ROOT or None)
    if cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS:
        # Detectron2's federated loss reads the class_image_count metadata when the model is
        # built, before any data is loaded; a synthetic dataset sets it when loaded
        for name in cfg.DATASETS.TRAIN:
            meta = MetadataCatalog.get(name)
            if meta.get("synthetic_config", None) and not meta.get("class_image_count", None):
                DatasetCatalog.get(name)
    return params


def check_registered(dataset_names, key):
    """Raise ValueError naming ``key`` (the config key) for a dataset that is not registered."""
    registered = set(DatasetCatalog.list())
    for name in dataset_names:
        if name not in registered:
            raise ValueError(
                f"{key} names '{name}', which is not a registered dataset. Register a COCO- "
                "or LVIS-format file as [name, annotation_json, image_root]: in a yacs config "
                "with BALMS.DATASETS.REGISTER [[...]], in a LazyConfig with "
                "train.balms.datasets = [[...]] (tools/lazy_train_net.py), in Python with "
                "balms_det.data.datasets.register_file_dataset(name, annotation_json, "
                "image_root) (or Detectron2's DatasetCatalog); registered datasets include: "
                + ", ".join(sorted(n for n in registered if "synth" in n or "lvis" in n))
            )


def check_dataset_files(dataset_names, key="DATASETS"):
    """Raise ValueError for an unregistered name (naming ``key``) and FileNotFoundError naming
    the missing annotation file or image folder of a registered dataset (generated datasets are
    skipped: they are made on first use)."""
    check_registered(dataset_names, key)
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("synthetic_config", None) is not None:
            continue
        for field in ("json_file", "image_root"):
            path = meta.get(field, None)
            if path and "://" not in str(path) and not os.path.exists(path):
                raise FileNotFoundError(
                    f"Dataset '{name}': {field} '{path}' does not exist. Put the data under "
                    f"$DETECTRON2_DATASETS (now "
                    f"'{os.environ.get('DETECTRON2_DATASETS', 'datasets')}') as described in "
                    f"datasets/README.md, or fix its BALMS.DATASETS.REGISTER entry."
                )


def dataset_categories(name):
    """The category names (contiguous order) of a registered dataset, or None when they cannot
    be known: its ``thing_classes`` metadata; for a dataset registered by file
    (:func:`register_file_dataset`) that was not loaded yet, the ``categories`` of its
    annotation file (sorted by id, as Detectron2's loaders order them; set as its
    ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``); for another dataset, whatever
    loading it sets."""
    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes", None) is None:
        if meta.get("balms_registered_by_file", False):
            what = f"Dataset '{name}': annotation file '{meta.json_file}'"
            data = read_json(meta.json_file, what)
            try:
                cats = sorted(data["categories"], key=lambda c: c["id"])
                # as Detectron2's COCO loader sets them (LVIS ids 1..K map to id - 1 alike)
                meta.set(
                    thing_classes=[c["name"] for c in cats],
                    thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
                )
            except (KeyError, TypeError) as e:
                raise ValueError(f"{what} has no valid 'categories' list ({e!r})") from e
        else:
            DatasetCatalog.get(name)
    classes = meta.get("thing_classes", None)
    return list(classes) if classes is not None else None


def _load_file_dataset(name, json_file, image_root):
    """Detectron2 dicts of a COCO- or LVIS-format file: Detectron2's COCO loader, or its LVIS
    loader for LVIS-format images that carry ``coco_url`` instead of ``file_name``."""
    what = f"Dataset '{name}' (BALMS.DATASETS.REGISTER): annotation file '{json_file}'"
    try:  # the evaluator's input rules, before Detectron2 reads an annotation
        data = check_annotation_file(json_file)
    except ValueError as e:
        raise type(e)(f"Dataset '{name}' (BALMS.DATASETS.REGISTER): {e}") from None
    try:
        try:
            return load_coco_json(json_file, image_root, name)
        except KeyError as e:
            if e.args != ("file_name",):
                raise
        dicts = load_lvis_json(json_file, image_root)  # category ids 1..K, file from coco_url
        cats = sorted(data["categories"], key=lambda c: c["id"])
        if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
            raise ValueError(
                f"{what}: images have no file_name (LVIS style), which needs category ids "
                "1..K without gaps; add file_name to the images to use any ids"
            )
        MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in cats])
        return dicts
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from e
    except (KeyError, TypeError, AssertionError, IndexError, ValueError) as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what} is not a COCO/LVIS annotation file ({e!r})") from e


def register_file_dataset(name, json_file, image_root):
    """Register a COCO- or LVIS-format dataset by file, evaluated with the LVIS protocol
    (frequency groups from the training counts when its categories have no ``frequency``).

    The files must exist; the annotation file is parsed when the dataset is first loaded.
    Re-registering a name with the same files is a no-op, with other files an error.
    """
    for what, path in (("annotation file", json_file), ("image folder", image_root)):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"BALMS.DATASETS.REGISTER entry '{name}': {what} '{path}' does not exist"
            )
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file", None), meta.get("image_root", None)) == (json_file, image_root):
            return
        raise ValueError(
            f"BALMS.DATASETS.REGISTER entry '{name}': a dataset of that name is already "
            f"registered (annotation file {meta.get('json_file', None)!r}); choose another name"
        )
    load = lambda: _load_file_dataset(name, json_file, image_root)  # noqa: E731
    load.balms_checked = True  # (checked as a file)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        balms_registered_by_file=True,
    )


def register_file_datasets(entries, key="BALMS.DATASETS.REGISTER"):
    """:func:`register_file_dataset` of each ``[name, annotation_json, image_root]`` of
    ``entries`` (a malformed entry is an error naming ``key`` and its index). Returns the
    names."""
    names = []
    for i, entry in enumerate(entries or ()):
        if isinstance(entry, str) or not (hasattr(entry, "__len__") and len(entry) == 3):
            raise ValueError(
                f"{key}[{i}] must be [name, annotation_json, image_root], got {entry!r}"
            )
        register_file_dataset(*(str(x) for x in entry))
        names.append(str(entry[0]))
    return names


def register_datasets_from_cfg(cfg):
    """Register the datasets of ``BALMS.DATASETS.REGISTER`` and the synthetic one with the
    parameters of ``BALMS.SYNTHETIC``."""
    register_file_datasets(cfg.BALMS.DATASETS.REGISTER)
    return register_synthetic_from_cfg(cfg)


def _register_defaults():
    register_synthetic_lt("synth_lt", SYNTHETIC_DEFAULT)
    register_synthetic_lt("synth_lt_tiny", SYNTHETIC_TINY)


_register_defaults()
