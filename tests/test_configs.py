import glob
import os

import pytest
from conftest import CONFIGS, flat_cfg
from detectron2.config import get_cfg

from balms_det import add_balms_config

YAMLS = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def test_there_are_configs():
    names = {os.path.relpath(p, CONFIGS) for p in YAMLS}
    assert "lvis_balms_r50.yaml" in names and "synthetic/main.yaml" in names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_merges(path):
    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.merge_from_file(path)
    with open(path) as f:
        assert "detectron2://" not in f.read().split("_BASE_")[-1].split("\n")[0]


def test_balms_keys_do_not_collide_with_detectron2():
    plain = get_cfg()
    cfg = add_balms_config(get_cfg())
    a, b = flat_cfg(plain), flat_cfg(cfg)
    added = set(b) - set(a)
    assert added and all(k.startswith(("MODEL.ROI_BOX_HEAD.BALMS.", "BALMS.")) for k in added)
    assert all(a[k] == b[k] for k in a)


def test_lvis_config_builds_the_model_and_fails_only_for_missing_files(tmp_path, monkeypatch):
    from balms_det.engine.trainer import BalmsTrainer, setup_cfg

    cfg = setup_cfg(
        os.path.join(CONFIGS, "lvis_balms_r50.yaml"),
        ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)],
    )
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203
    assert cfg.SOLVER.MAX_ITER == 22000 and cfg.BALMS.TRAINABLE_PARAMS == ["cls_score"]
    model = BalmsTrainer.build_model(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ]
    with pytest.raises(FileNotFoundError) as e:
        BalmsTrainer.build_train_loader(cfg)
    msg = str(e.value)
    assert "lvis_v1_train" in msg and "DETECTRON2_DATASETS" in msg
