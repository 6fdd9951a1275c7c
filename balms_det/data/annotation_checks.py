"""Training data checked by the evaluator's input rules (one definition:
:func:`balms_det.lvis_eval.check_ground_truth`) before Detectron2 reads an annotation: a dataset
registered by file when its file is loaded, one registered in Python when Detectron2 loads its
dicts. A bad annotation is an error naming the file (or dataset) and the annotation, never a
crash inside pycocotools mid-training (polygons far outside the image, an RLE of another size
under ``INPUT.MASK_FORMAT bitmask``) nor a run that trains on it silently."""

import re

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from ..lvis_eval import check_ground_truth, read_json

__all__ = [
    "check_annotation_file",
    "check_dataset_dicts",
    "check_dicts_when_loaded",
    "trust_datasets",
]


def check_annotation_file(json_file):
    """The COCO / LVIS-format file checked for training (every image names its file, every
    annotation has a box; segmentations where given); returns its dict."""
    data = read_json(json_file, "Annotation file")
    check_ground_truth(data, json_file, boxes=True, masks="present", file_names=True)
    return data


def _segmentation(segm):
    if isinstance(segm, dict) and isinstance(segm.get("counts"), (bytes, bytearray)):
        return dict(segm, counts=segm["counts"].decode("latin-1"))  # (an RLE of pycocotools)
    return segm


def check_dataset_dicts(dicts, name):
    """Detectron2 dataset dicts (a dataset registered in Python) checked as an annotation file:
    image i of the list is image id i, its annotations numbered from 0 in order. Dicts may go
    without ``height`` / ``width`` (Detectron2's mapper reads the image's size): when one has
    none, the sizes are not checked and masks get the rules that need no size."""
    images, anns = [], []
    for i, d in enumerate(dicts):
        images.append({k: d.get(k) for k in ("file_name", "height", "width")})
        images[-1]["id"] = i
        for a in d.get("annotations", []):
            box, mode = a.get("bbox"), a.get("bbox_mode", BoxMode.XYWH_ABS)
            if mode != BoxMode.XYWH_ABS and isinstance(box, (list, tuple)) and len(box) == 4:
                try:
                    box = list(BoxMode.convert(list(box), mode, BoxMode.XYWH_ABS))
                except (TypeError, ValueError):
                    pass  # (named below)
            ann = {"id": len(anns), "image_id": i, "category_id": a.get("category_id"), "bbox": box}
            if "segmentation" in a:
                ann["segmentation"] = _segmentation(a["segmentation"])
            anns.append(ann)
    cats = [{"id": c} for c in {a["category_id"] for a in anns if type(a["category_id"]) is int}]
    gt = {"images": images, "annotations": anns, "categories": cats}
    source = f"dataset '{name}' (Detectron2 dicts: image n is the n-th dict)"
    try:
        sizes = all(d.get("height") is not None and d.get("width") is not None for d in dicts)
        check_ground_truth(gt, source, sizes=sizes, boxes=True, masks="present", file_names=True)
    except ValueError as e:
        msg = str(e).replace(f"'{source}'", source)
        m = re.search(r"\(image (\d+)\)|image id (\d+)|image #(\d+)", msg)
        if m is not None:
            n = int(next(g for g in m.groups() if g is not None))
            msg += f" [image {n}: {dicts[n].get('file_name')!r}]"
        raise type(e)(msg) from None


def check_dicts_when_loaded(names):
    """Have Detectron2's load of each dataset of ``names`` (registered in Python) check its
    dicts (once wrapped, a dataset stays so; datasets registered by file are checked as files)."""
    for name in names:
        load = DatasetCatalog[name]
        if getattr(load, "balms_checked", False):
            continue

        def checked(load=load, name=name):
            dicts = load()
            check_dataset_dicts(dicts, name)
            return dicts

        checked.balms_checked = True
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, checked)


def trust_datasets(names):
    """Leave the datasets ``names`` unchecked when Detectron2 loads them
    (``BALMS.DATASETS.CHECK_ANNOTATIONS False``): :func:`check_dicts_when_loaded` passes them
    by. Those registered by file are still read by the file's rules."""
    for name in names:
        load = DatasetCatalog[name] if name in DatasetCatalog else None
        if load is None or getattr(load, "balms_checked", False):
            continue

        def trusted(load=load):
            return load()

        trusted.balms_checked = True
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, trusted)
