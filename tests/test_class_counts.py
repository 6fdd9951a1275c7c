import json

import numpy as np
import pytest

from balms_det.class_counts import (
    counts_from_annotation_file,
    counts_from_dataset_dicts,
    load_cat_info,
    write_cat_info,
)


def _ann_file(tmp_path):
    data = {
        "images": [{"id": i} for i in range(1, 5)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1},
            {"id": 2, "image_id": 1, "category_id": 1},
            {"id": 3, "image_id": 2, "category_id": 1},
            {"id": 4, "image_id": 2, "category_id": 2},
            {"id": 5, "image_id": 3, "category_id": 2, "iscrowd": 1},
        ],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def test_counts_from_annotation_file_by_hand(tmp_path):
    info, n = counts_from_annotation_file(str(_ann_file(tmp_path)))
    assert n == 4
    assert [(c["id"], c["image_count"], c["instance_count"]) for c in info] == [
        (1, 2, 3),
        (2, 1, 1),
        (3, 0, 0),
    ]


def test_cat_info_round_trip_and_errors(tmp_path):
    out = tmp_path / "cat_info.json"
    write_cat_info(str(_ann_file(tmp_path)), str(out))
    c = load_cat_info(str(out), 3)
    assert c.image_count.tolist() == [2, 1, 0] and c.instance_count.tolist() == [3, 1, 0]
    # the training images: 1 and 2 have a non-crowd annotation (3: crowd only, 4: none), as
    # Detectron2's loader keeps them; the file's own count is written beside
    assert c.num_images == 2 and c.names == ["a", "b", "c"]
    assert json.loads(out.read_text())["num_images_in_file"] == 4
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_cat_info(str(tmp_path / "nope.json"), 3)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_cat_info(str(bad), 3)
    with pytest.raises(ValueError, match="category id 3 is outside"):
        load_cat_info(str(out), 2)
    with pytest.raises(ValueError, match="has 3 categories but the model has 4"):
        load_cat_info(str(out), 4)
    with pytest.raises(ValueError, match="category id 2 is not a category"):
        load_cat_info(str(out), 3, dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2})


def test_counts_from_dataset_dicts():
    dicts = [
        {"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
        {"annotations": [{"category_id": 2}]},
        {"annotations": []},
    ]
    c = counts_from_dataset_dicts(dicts, 3)
    assert np.array_equal(c.image_count, [1, 0, 2])
    assert np.array_equal(c.instance_count, [2, 0, 2])
    assert c.num_images == 3
    with pytest.raises(ValueError, match="category id 5"):
        counts_from_dataset_dicts([{"file_name": "x.png", "annotations": [{"category_id": 5}]}], 3)


def test_counts_of_the_registered_synthetic_set_match_its_json():
    from conftest import tiny_cfg
    from detectron2.data import MetadataCatalog

    from balms_det.class_counts import class_counts_from_cfg

    cfg = tiny_cfg()
    c, source = class_counts_from_cfg(cfg, need_instances=True)
    assert "synth_lt_tiny_train" in source
    with open(MetadataCatalog.get("synth_lt_tiny_train").json_file) as f:
        cats = sorted(json.load(f)["categories"], key=lambda x: x["id"])
    assert c.image_count.tolist() == [x["image_count"] for x in cats]
    assert c.instance_count.tolist() == [x["instance_count"] for x in cats]
