import filecmp
import json
import os

import numpy as np
import pytest

from balms_det.data.synthetic import SyntheticLTConfig, class_image_counts, generate_synthetic_lt

SMALL = SyntheticLTConfig(
    num_classes=12,
    num_train_images=150,
    val_instances_per_class=3,
    image_size=64,
    max_images_per_class=120,
    min_images_per_class=2,
)


def _load(paths, split):
    with open(paths[f"{split}_json"]) as f:
        return json.load(f)


def test_generator_is_deterministic(tmp_path):
    a = generate_synthetic_lt(str(tmp_path / "a"), SMALL)
    b = generate_synthetic_lt(str(tmp_path / "b"), SMALL)
    for split in ("train", "val"):
        assert _load(a, split) == _load(b, split)
    pngs = sorted(os.listdir(os.path.join(a["dir"], "train")))
    assert len(pngs) == len(_load(a, "train")["images"])
    _, mismatch, errors = filecmp.cmpfiles(
        os.path.join(a["dir"], "train"), os.path.join(b["dir"], "train"), pngs, shallow=False
    )
    assert not mismatch and not errors
    # another seed gives another dataset
    c = generate_synthetic_lt(
        str(tmp_path / "c"), SyntheticLTConfig(**{**SMALL.__dict__, "seed": 1})
    )
    assert _load(c, "train")["annotations"] != _load(a, "train")["annotations"]
    # re-use: a second call does not rewrite the files
    mtime = os.path.getmtime(a["train_json"])
    generate_synthetic_lt(str(tmp_path / "a"), SMALL)
    assert os.path.getmtime(a["train_json"]) == mtime


def test_frequencies_fall_in_the_three_groups_and_counts_are_true(tmp_path):
    paths = generate_synthetic_lt(str(tmp_path), SMALL)
    train = _load(paths, "train")
    cats = {c["id"]: c for c in train["categories"]}
    assert {c["frequency"] for c in cats.values()} == {"r", "c", "f"}
    img_sets, inst = {}, {}
    for a in train["annotations"]:
        img_sets.setdefault(a["category_id"], set()).add(a["image_id"])
        inst[a["category_id"]] = inst.get(a["category_id"], 0) + 1
    for cid, c in cats.items():
        n = len(img_sets.get(cid, ()))
        assert c["image_count"] == n and c["instance_count"] == inst.get(cid, 0)
        assert c["frequency"] == ("r" if n <= 10 else "c" if n <= 100 else "f")
        assert n >= 1
    # targets are Zipf-like: decreasing over frequency ranks
    targets = sorted(class_image_counts(SMALL), reverse=True)
    assert targets[0] == 120 and targets[-1] == 2


def test_default_size_populates_groups_and_validation_is_balanced():
    cfg = SyntheticLTConfig()
    counts = np.array(class_image_counts(cfg))
    assert (counts <= 10).sum() >= 10 and ((counts > 10) & (counts <= 100)).sum() >= 10
    assert (counts > 100).sum() >= 8


def test_validation_split_measures_every_class(tmp_path):
    paths = generate_synthetic_lt(str(tmp_path), SMALL)
    val = _load(paths, "val")
    per_class = {}
    for a in val["annotations"]:
        per_class[a["category_id"]] = per_class.get(a["category_id"], 0) + 1
    assert set(per_class) == set(range(1, 13))
    assert min(per_class.values()) >= 2
    for img in val["images"]:
        present = {a["category_id"] for a in val["annotations"] if a["image_id"] == img["id"]}
        assert set(img["neg_category_ids"]) == set(range(1, 13)) - present
        assert img["not_exhaustive_category_ids"] == []


def test_registered_dataset_loads_through_detectron2():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get("synth_lt_tiny_train")
    meta = MetadataCatalog.get("synth_lt_tiny_train")
    K = len(meta.thing_classes)
    assert len(dicts) > 100
    for d in dicts[:50]:
        assert os.path.exists(d["file_name"]), d["file_name"]
        assert d["annotations"]
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= d["width"] and y + h <= d["height"]
            assert 0 <= a["category_id"] < K
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
    assert os.path.exists(meta.json_file)


def test_missing_dataset_file_names_the_path(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from balms_det.data.datasets import check_dataset_files

    name = "balms_test_missing_lvis"
    missing = str(tmp_path / "lvis" / "lvis_v1_train.json")
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=missing, image_root=str(tmp_path), evaluator_type="lvis"
    )
    with pytest.raises(FileNotFoundError, match="lvis_v1_train.json") as e:
        check_dataset_files([name])
    assert "datasets/README.md" in str(e.value)
    with pytest.raises(ValueError, match="DATASETS.TRAIN names 'not_registered_xyz'"):
        check_dataset_files(["not_registered_xyz"], "DATASETS.TRAIN")


def test_federated_loss_model_builds_on_synthetic_data():
    """Detectron2's federated loss reads class_image_count when the model is built, before
    any data is loaded: setup_cfg provides it for the synthetic dataset, with the JSON's image
    counts, for the stock head and for the balms head."""
    import torch
    from conftest import REPO
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model

    from balms_det.data.datasets import SYNTHETIC_DEFAULT, register_synthetic_lt
    from balms_det.engine.trainer import setup_cfg

    base = os.path.join(REPO, "configs", "synthetic", "Base-Synthetic-R18.yaml")
    tiny = [
        "BALMS.SYNTHETIC.NUM_TRAIN_IMAGES",
        "160",
        "BALMS.SYNTHETIC.NUM_CLASSES",
        "12",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "12",
        "BALMS.SYNTHETIC.MAX_IMAGES_PER_CLASS",
        "130",
        "BALMS.SYNTHETIC.IMAGE_SIZE",
        "96",
        "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE",
        "True",
        "MODEL.ROI_BOX_HEAD.USE_FED_LOSS",
        "True",
        "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES",
        "3",
    ]
    try:
        for head in ("StandardROIHeads", "BalmsROIHeads"):
            # a fresh registration: nothing loaded yet
            register_synthetic_lt("synth_lt", SYNTHETIC_DEFAULT)
            cfg = setup_cfg(base, tiny + ["MODEL.ROI_HEADS.NAME", head])
            pred = build_model(cfg).roi_heads.box_predictor
            with open(MetadataCatalog.get("synth_lt_train").json_file) as f:
                cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
            counts = torch.tensor([float(c["image_count"]) for c in cats])
            # Detectron2's weights: image counts ** FED_LOSS_FREQ_WEIGHT_POWER (0.5)
            assert torch.allclose(pred.fed_loss_cls_weights, counts**0.5)
    finally:
        register_synthetic_lt("synth_lt", SYNTHETIC_DEFAULT)
