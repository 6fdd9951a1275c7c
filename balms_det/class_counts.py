"""Per-class training counts: from an annotation file, a cat-info JSON, or registered datasets.

The counts are the prior of the balanced losses (REFERENCE.md section 8). They are computed once,
never hard-coded, and end up as a buffer of the box predictor.

A cat-info JSON (written by ``tools/write_cat_info.py``) is a list of
``{"id", "name", "image_count", "instance_count"}`` dicts, one per category, plus nothing else.
"""

import json
import logging
import os
from collections import defaultdict

import numpy as np

__all__ = [
    "ClassCounts",
    "counts_from_annotation_file",
    "counts_from_dataset_dicts",
    "load_cat_info",
    "write_cat_info",
    "class_counts_from_cfg",
    "frequency_groups",
]

logger = logging.getLogger(__name__)

COUNT_TYPES = ("image_count", "instance_count")


class ClassCounts:
    """Image and instance counts of K contiguous classes, plus the number of training images."""

    def __init__(self, image_count, instance_count, num_images, names=None):
        self.image_count = np.asarray(image_count, dtype=np.float64)
        self.instance_count = np.asarray(instance_count, dtype=np.float64)
        self.num_images = int(num_images)
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


def frequency_groups(image_counts):
    """LVIS groups from training image counts: 'r' (<= 10), 'c' (11-100), 'f' (> 100)."""
    return ["r" if n <= 10 else ("c" if n <= 100 else "f") for n in image_counts]


def read_json(path, what, error=ValueError):
    """Load a JSON file; a missing file raises FileNotFoundError and malformed content
    ``error``, both naming ``what`` and the path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} '{path}' is not valid JSON: {e}") from e


def counts_from_annotation_file(json_file):
    """Per-category counts of an LVIS/COCO-format annotation file.

    Returns:
        list of dicts ``{"id", "name", "image_count", "instance_count"}`` sorted by id, and the
        number of images in the file.
    """
    data = read_json(json_file, "Annotation file")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"Annotation file '{json_file}' has no '{key}' key")
    cat_ids = {c["id"] for c in data["categories"]}
    images = defaultdict(set)
    instances = defaultdict(int)
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
    info = [
        dict(
            id=c["id"],
            name=c.get("name", str(c["id"])),
            image_count=len(images[c["id"]]),
            instance_count=instances[c["id"]],
        )
        for c in sorted(data["categories"], key=lambda c: c["id"])
    ]
    return info, len(data["images"])


def write_cat_info(json_file, out_file):
    """Write the cat-info JSON of an annotation file; returns the list written."""
    info, num_images = counts_from_annotation_file(json_file)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    with open(out_file, "w") as f:
        json.dump({"num_images": num_images, "categories": info}, f, indent=1)
    return info


def load_cat_info(path, num_classes, dataset_id_to_contiguous_id=None):
    """Read a cat-info JSON into ClassCounts of ``num_classes`` contiguous classes.

    Category ids map to contiguous ids with ``dataset_id_to_contiguous_id`` when given (COCO-style
    metadata) else as ``id - 1`` (LVIS). Missing, malformed or mismatching files raise an error
    naming the file and the offending ids.
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
    names = [None] * num_classes
    seen = set()
    for c in cats:
        missing = [k for k in ("id", "image_count") if k not in c]
        if missing:
            raise ValueError(f"CAT_INFO file '{path}': entry {c} lacks {missing}")
        cid = c["id"]
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
        image_count[k] = c["image_count"]
        instance_count[k] = c.get("instance_count", c["image_count"])
        names[k] = c.get("name")
        seen.add(k)
    if len(seen) != num_classes:
        absent = sorted(set(range(num_classes)) - seen)[:10]
        raise ValueError(
            f"CAT_INFO file '{path}' has {len(seen)} categories but the model has {num_classes}; "
            f"first missing contiguous ids: {absent}"
        )
    num_images = data.get("num_images", 0) if isinstance(data, dict) else 0
    if not num_images:
        num_images = int(image_count.max()) if num_classes else 0
        logger.warning(
            "CAT_INFO file '%s' has no num_images; using the largest image count (%d)",
            path,
            num_images,
        )
    return ClassCounts(image_count, instance_count, num_images, names)


def counts_from_dataset_dicts(dataset_dicts, num_classes):
    """ClassCounts of Detectron2-format dicts (contiguous category ids)."""
    image_count = np.zeros(num_classes)
    instance_count = np.zeros(num_classes)
    for d in dataset_dicts:
        classes = [a["category_id"] for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        for k in classes:
            if not 0 <= k < num_classes:
                raise ValueError(
                    f"Image '{d.get('file_name')}' has category id {k}, outside the model's "
                    f"{num_classes} classes"
                )
        np.add.at(instance_count, classes, 1)
        np.add.at(image_count, sorted(set(classes)), 1)
    return ClassCounts(image_count, instance_count, len(dataset_dicts))


def class_counts_from_cfg(cfg):
    """ClassCounts for ``cfg``: from MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO if set, else computed from
    the registered DATASETS.TRAIN (summed over the datasets)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    K = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    names = list(cfg.DATASETS.TRAIN)
    meta = MetadataCatalog.get(names[0]) if names else None
    if cfg.MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO:
        mapping = meta.get("thing_dataset_id_to_contiguous_id", None) if meta else None
        counts = load_cat_info(cfg.MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO, K, mapping)
    else:
        if not names:
            raise ValueError(
                "Balanced losses need class counts: set DATASETS.TRAIN or "
                "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO"
            )
        total = None
        for name in names:
            c = counts_from_dataset_dicts(DatasetCatalog.get(name), K)
            if total is None:
                total = c
            else:
                total = ClassCounts(
                    total.image_count + c.image_count,
                    total.instance_count + c.instance_count,
                    total.num_images + c.num_images,
                )
        counts = total
    if meta is not None and meta.get("thing_classes", None) is not None:
        if len(meta.thing_classes) != K:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {K} but dataset '{names[0]}' has "
                f"{len(meta.thing_classes)} classes"
            )
        counts.names = list(meta.thing_classes)
    return counts
