"""Checks before the first iteration (balms_det/engine/preflight.py) and at checkpoint loading:
each mistake of a new user's first hour is an error naming the file, key or class, before any
training step, instead of a silent wrong run or a crash mid-training."""

import json
import math
import os

import pytest
import torch
from conftest import CONFIGS, load_tool, tiny_cfg
from own_data_set import TINY, register_entries, write_own_set

TEMPLATE = os.path.join(CONFIGS, "own_data", "cpu_r18.yaml")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return write_own_set(str(tmp_path_factory.mktemp("own")))


def _cfg(own, prefix, *opts, output_dir=None):
    """The own-data template on the tiny own set, registered as ``<prefix>_train/_val``, with
    its 6 classes typed (``opts`` may set NUM_CLASSES 0, the template's)."""
    from balms_det.engine.trainer import setup_cfg

    train, val = f"{prefix}_train", f"{prefix}_val"
    extra = ["OUTPUT_DIR", str(output_dir)] if output_dir else []
    return setup_cfg(
        TEMPLATE,
        [
            "BALMS.DATASETS.REGISTER",
            register_entries(own, train, val),
            "DATASETS.TRAIN",
            f"('{train}',)",
            "DATASETS.TEST",
            f"('{val}',)",
            *TINY,
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "6",
            *extra,
            *opts,
        ],
    )


# ------------------------------------------------------------------------------------------
# NUM_CLASSES
# ------------------------------------------------------------------------------------------
def test_num_classes_zero_is_the_training_sets_count(own):
    cfg = _cfg(own, "pf_zero", "MODEL.ROI_HEADS.NUM_CLASSES", "0")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(own["classes"]) == 6


@pytest.mark.parametrize("k, loss", [(80, "balanced_softmax"), (4, "softmax")])
def test_num_classes_other_than_the_categories_refuses_before_training(own, tmp_path, k, loss):
    """80 on a 6-class set trained with 74 classes never seen; 4 failed inside the loss."""
    from balms_det.engine.trainer import BalmsTrainer

    cfg = _cfg(
        own,
        f"pf_k{k}",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        str(k),
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        loss,
        "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
        "dataset",
        output_dir=tmp_path,
    )
    with pytest.raises(ValueError) as e:
        BalmsTrainer(cfg)
    msg = str(e.value)
    assert f"MODEL.ROI_HEADS.NUM_CLASSES is {k}" in msg and "has 6 categories" in msg
    assert f"pf_k{k}_train" in msg and own["train_json"] in msg


def test_num_classes_zero_without_a_source_names_the_key():
    with pytest.raises(ValueError, match="NUM_CLASSES is 0.*'nowhere_train', which is not regi"):
        tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "0", "DATASETS.TRAIN", "('nowhere_train',)")


# ------------------------------------------------------------------------------------------
# CAT_INFO
# ------------------------------------------------------------------------------------------
def _cat_info(path, cats, **top):
    path.write_text(json.dumps(dict(top, categories=cats)))
    return str(path)


def test_cat_info_of_another_dataset_with_the_same_class_count_is_refused(own, tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    other = ["cat", "dog", "yak", "emu", "gnu", "owl"]  # 6 classes, like the own set
    cats = [dict(id=i + 1, name=n, image_count=8 - i) for i, n in enumerate(other)]
    path = _cat_info(tmp_path / "other_cat_info.json", cats, num_images=10)
    cfg = _cfg(own, "pf_catinfo", "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO", path, output_dir=tmp_path)
    with pytest.raises(ValueError) as e:
        BalmsTrainer(cfg)
    msg = str(e.value)
    assert "CAT_INFO" in msg and "other_cat_info.json" in msg and "pf_catinfo_train" in msg
    assert "'cat' in the file, 'apple' in the training set" in msg


def test_cat_info_of_the_training_set_is_accepted(own, tmp_path):
    from balms_det.class_counts import write_cat_info
    from balms_det.engine.trainer import BalmsTrainer

    path = str(tmp_path / "cat_info.json")
    write_cat_info(own["train_json"], path)
    cfg = _cfg(own, "pf_catok", "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO", path, output_dir=tmp_path)
    pred = BalmsTrainer(cfg).model.roi_heads.box_predictor
    assert pred.class_counts.tolist() == [6, 3, 2, 1, 1, 1]  # images holding each class
    assert pred.get_dataset_meta()["thing_classes"] == own["classes"]


BAD_VALUES = [
    ("id", "1", r"entry #0 \(a\) has id '1' \(str\); ids must be integers"),
    ("id", None, r"entry #0 \(a\) has id None \(NoneType\)"),
    ("id", 1.5, r"entry #0 \(a\) has id 1.5 \(float\)"),
    ("id", True, r"entry #0 \(a\) has id True \(bool\)"),
    ("image_count", 10**400, r"category id 1 \(a\) has image_count 1000.*\(401 char.*finite"),
    ("image_count", -3, r"category id 1 \(a\) has image_count -3; counts must be finite and non"),
    ("instance_count", "7", r"category id 1 \(a\) has instance_count '7' \(str\); counts must"),
    ("num_images", -5, r"the file has num_images -5; counts must be finite and non-negative"),
    ("num_images", math.nan, r"the file has num_images nan; counts must be finite"),
    ("num_images", "600", r"the file has num_images '600' \(str\)"),
    ("num_images", 2, r"num_images 2, fewer than the 5 images of its largest image_count"),
]


@pytest.mark.parametrize(
    "key, value, message", BAD_VALUES, ids=[f"{k}={v!r}"[:30] for k, v, _ in BAD_VALUES]
)
def test_cat_info_values_are_validated_naming_the_file_and_category(tmp_path, key, value, message):
    from balms_det.class_counts import load_cat_info

    cats = [
        dict(id=1, name="a", image_count=5, instance_count=9),
        dict(id=2, name="b", image_count=1),
    ]
    top = dict(num_images=10)
    if key == "num_images":
        top[key] = value
    else:
        cats[0][key] = value
    path = _cat_info(tmp_path / "bad_cat_info.json", cats, **top)
    with pytest.raises(ValueError, match=message) as e:
        load_cat_info(path, 2)
    assert "CAT_INFO file '" + path + "'" in str(e.value)


# ------------------------------------------------------------------------------------------
# Image files
# ------------------------------------------------------------------------------------------
def test_missing_or_empty_image_files_are_found_before_training(own, tmp_path):
    import shutil

    from balms_det.engine.trainer import BalmsTrainer

    for split in ("train", "val"):  # a copy of the set whose files can be broken
        shutil.copytree(own[f"{split}_images"], tmp_path / f"{split}_images")
        shutil.copy(own[f"{split}_json"], tmp_path / f"{split}.json")
    broken = dict(own)
    for split in ("train", "val"):
        broken[f"{split}_images"] = str(tmp_path / f"{split}_images")
        broken[f"{split}_json"] = str(tmp_path / f"{split}.json")
    os.remove(tmp_path / "train_images" / "train_003.png")
    os.remove(tmp_path / "train_images" / "train_005.png")
    (tmp_path / "val_images" / "val_001.png").write_bytes(b"")
    cfg = _cfg(broken, "pf_missing", output_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError) as e:
        BalmsTrainer(cfg)
    msg = str(e.value)
    assert "2 of 8 image files of dataset 'pf_missing_train' (DATASETS.TRAIN)" in msg
    assert "train_003.png (missing)" in msg and "train_005.png (missing)" in msg
    # the test set too (its evaluation would crash after the whole training)
    for name in ("train_003.png", "train_005.png"):
        shutil.copy(os.path.join(own["train_images"], name), tmp_path / "train_images" / name)
    with pytest.raises(FileNotFoundError, match=r"1 of 3 image files of dataset 'pf_missing_val'"):
        BalmsTrainer(cfg)


def test_missing_image_files_hand_made(tmp_path):
    from balms_det.engine.preflight import missing_image_files

    (tmp_path / "ok.png").write_bytes(b"x")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    paths = [str(tmp_path / n) for n in ("ok.png", "gone.png", "empty.png", "dir.png")]
    paths.append("http://example.com/remote.png")  # URLs are not local files: skipped
    assert missing_image_files(paths) == [
        (paths[1], "missing"),
        (paths[2], "empty"),
        (paths[3], "not a file"),
    ]
    many = [str(tmp_path / "ok.png")] * 9000 + [paths[1], paths[2]]  # several threads' chunks
    assert missing_image_files(many, threads=3) == [(paths[1], "missing"), (paths[2], "empty")]


# ------------------------------------------------------------------------------------------
# Frozen layers without weights
# ------------------------------------------------------------------------------------------
def test_frozen_parameters_without_weights_refuse_unless_allowed(own, tmp_path, caplog):
    import logging

    from balms_det.engine.trainer import BalmsTrainer

    stage2 = ["BALMS.TRAINABLE_PARAMS", "['cls_score']", "MODEL.WEIGHTS", ""]
    cfg = _cfg(own, "pf_frozen", *stage2, output_dir=tmp_path)
    with pytest.raises(ValueError) as e:
        BalmsTrainer(cfg)
    msg = str(e.value)
    assert "frozen" in msg and "MODEL.WEIGHTS is empty" in msg
    assert "BALMS.ALLOW_FROZEN_RANDOM_INIT" in msg and "'backbone.fpn_lateral2.weight'" in msg
    allowed = _cfg(
        own, "pf_frozen", *stage2, "BALMS.ALLOW_FROZEN_RANDOM_INIT", "True", output_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING, logger="balms_det"):
        BalmsTrainer(allowed)
    assert any("random initialisation" in r.getMessage() for r in caplog.records)
    # Detectron2's FREEZE_AT freezes too
    with pytest.raises(ValueError, match="parameter tensors are frozen"):
        BalmsTrainer(_cfg(own, "pf_frozen", "MODEL.BACKBONE.FREEZE_AT", "2", output_dir=tmp_path))


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    return out / "model.pth"


def test_truncated_weights_name_the_file(tiny_checkpoint, tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    bad = tmp_path / "truncated.pth"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    trainer = BalmsTrainer(tiny_cfg("MODEL.WEIGHTS", str(bad), output_dir=tmp_path / "out"))
    with pytest.raises(RuntimeError, match=r"Checkpoint '.*truncated.pth' cannot be read"):
        trainer.resume_or_load(resume=False)


def test_nan_weights_under_eval_only_are_an_error_not_ap_zero(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, map_location="cpu")
    state["model"]["roi_heads.box_predictor.cls_score.weight"][0, 0] = math.nan
    state["model"]["roi_heads.box_predictor.bbox_pred.bias"][1] = math.inf
    bad = tmp_path / "diverged.pth"
    torch.save(state, bad)
    tool = load_tool("train_net")
    with pytest.raises(ValueError) as e:
        tool.evaluate(tiny_cfg("MODEL.WEIGHTS", str(bad), output_dir=tmp_path / "out"))
    msg = str(e.value)
    assert "diverged.pth' holds NaN or infinite values in 2 of" in msg
    assert "cls_score.weight" in msg and "bbox_pred.bias" in msg
