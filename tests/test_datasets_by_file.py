"""Your own COCO- or LVIS-format data without writing Python: BALMS.DATASETS.REGISTER."""

import json

import pytest
from conftest import tiny_cfg


def _write(tmp_path, name, lvis_style):
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "yak"}]
    images, anns = [], []
    for i in range(4):
        img = {"id": i + 1, "height": 32, "width": 32}
        if lvis_style:  # LVIS v1 style: the file name comes from coco_url
            img.update(coco_url=f"http://x/train2017/{i:012d}.jpg", neg_category_ids=[])
        else:
            img["file_name"] = f"{i:012d}.jpg"
        images.append(img)
    for a, (img, cat) in enumerate([(1, 1), (1, 2), (2, 1), (3, 1), (4, 3)]):
        poly = [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0]]
        anns.append(
            dict(
                id=a + 1,
                image_id=img,
                category_id=cat,
                bbox=[2, 2, 18, 18],
                area=162.0,
                segmentation=poly,
                iscrowd=0,
            )
        )
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "images").mkdir(exist_ok=True)
    return str(path)


@pytest.mark.parametrize("lvis_style", [False, True])
def test_registered_by_file_trains_with_counts_and_lvis_evaluation(tmp_path, lvis_style):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from balms_det.engine.trainer import BalmsTrainer

    name = f"mydata_{'lvis' if lvis_style else 'coco'}_train"
    ann = _write(tmp_path, name, lvis_style)
    cfg = tiny_cfg(
        "BALMS.DATASETS.REGISTER",
        str([[name, ann, str(tmp_path / "images")]]),
        "DATASETS.TRAIN",
        f"('{name}',)",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "3",
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
    )
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4 and dicts[0]["file_name"].endswith("000000000000.jpg")
    assert MetadataCatalog.get(name).evaluator_type == "lvis"
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog", "yak"]
    pred = BalmsTrainer.build_model(cfg).roi_heads.box_predictor
    pred.resolve_class_counts()
    assert pred.class_counts.tolist() == [3.0, 1.0, 1.0]  # images holding each class
    ev = BalmsTrainer.build_evaluator(cfg, name, str(tmp_path / "ev"))
    assert type(ev).__name__ == "BalmsLVISEvaluator"


def test_bad_registrations_name_the_entry_and_file(tmp_path):
    from detectron2.data import DatasetCatalog

    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="'bad1'.*annotation file .*nope.json"):
        tiny_cfg("BALMS.DATASETS.REGISTER", str([["bad1", missing, str(tmp_path)]]))
    with pytest.raises(ValueError, match=r"REGISTER\[0\] must be \[name, annotation_json"):
        tiny_cfg("BALMS.DATASETS.REGISTER", str([["bad2", missing]]))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    tiny_cfg("BALMS.DATASETS.REGISTER", str([["bad3", str(broken), str(tmp_path)]]))
    with pytest.raises(ValueError, match="'bad3'.*broken.json' is not valid JSON"):
        DatasetCatalog.get("bad3")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": [{"id": 1}], "categories": []}))
    tiny_cfg("BALMS.DATASETS.REGISTER", str([["bad4", str(wrong), str(tmp_path)]]))
    with pytest.raises(ValueError, match="'bad4'.*wrong.json': 'annotations' must be a list"):
        DatasetCatalog.get("bad4")
    with pytest.raises(ValueError, match="DATASETS.TRAIN names 'not_registered_abc'"):
        from balms_det.engine.trainer import BalmsTrainer

        model = BalmsTrainer.build_model(  # builds (serving needs no training set) ...
            tiny_cfg(
                "DATASETS.TRAIN",
                "('not_registered_abc',)",
                "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
                "balanced_softmax",
            )
        )
        model.roi_heads.box_predictor.resolve_class_counts()  # ... but cannot train
