"""One classifier layout: a checkpoint of the head loads into the head with any other loss with
Detectron2's plain DetectionCheckpointer, in a project that uses only Detectron2's
DefaultTrainer / DetectionCheckpointer plus add_balms_config and ROI_HEADS.NAME."""

import json
import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer

from balms_det import add_balms_config
from balms_det.modeling.roi_heads import LOSS_FAMILIES

K = 6
OTHER_LOSSES = [loss for loss in LOSS_FAMILIES if loss != "softmax"]


@pytest.fixture(scope="module")
def cat_info(tmp_path_factory):
    path = tmp_path_factory.mktemp("counts") / "cat_info.json"
    cats = [{"id": i + 1, "name": f"c{i}", "image_count": 3**i} for i in range(K)]
    path.write_text(json.dumps({"num_images": 400, "categories": cats}))
    return str(path)


def _plain_project_model(loss, cat_info):
    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NAME = "BalmsROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_BOX_HEAD.BALMS.LOSS = loss
    cfg.MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO = cat_info
    return DefaultTrainer.build_model(cfg)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _load(model, path, caplog):
    """Load with the plain checkpointer; returns what fvcore warned (skipped / missing /
    unexpected keys), captured on its own logger (Detectron2's setup_logger stops it from
    propagating)."""
    handler = _Records()
    log = logging.getLogger("fvcore.common.checkpoint")
    log.addHandler(handler)
    try:
        DetectionCheckpointer(model).load(path)
    finally:
        log.removeHandler(handler)
    return "\n".join(handler.lines)


def _classifier(model):
    c = model.roi_heads.box_predictor.cls_score
    return c.weight.detach().clone(), c.bias.detach().clone()


@pytest.mark.parametrize("loss", OTHER_LOSSES)
def test_softmax_checkpoint_loads_into_every_loss_and_back(loss, cat_info, tmp_path, caplog):
    torch.manual_seed(0)
    soft = _plain_project_model("softmax", cat_info)
    with torch.no_grad():  # a recognisable classifier, background row included
        soft.roi_heads.box_predictor.cls_score.weight.normal_()
        soft.roi_heads.box_predictor.cls_score.bias.normal_()
    DetectionCheckpointer(soft, save_dir=str(tmp_path)).save("softmax")
    torch.manual_seed(1)
    other = _plain_project_model(loss, cat_info)
    assert not torch.equal(_classifier(other)[0], _classifier(soft)[0])
    log = _load(other, str(tmp_path / "softmax.pth"), caplog)
    assert "Skip loading" not in log and "not found in the checkpoint" not in log, log
    assert "unexpected" not in log.lower(), log
    for a, b in zip(_classifier(other), _classifier(soft)):
        assert a.shape == (K + 1,) + a.shape[1:] and torch.equal(a, b)

    # and the reverse: the other loss's checkpoint into a softmax head
    with torch.no_grad():
        other.roi_heads.box_predictor.cls_score.weight.mul_(-2.0)
    DetectionCheckpointer(other, save_dir=str(tmp_path)).save(loss)
    torch.manual_seed(2)
    back = _plain_project_model("softmax", cat_info)
    log = _load(back, str(tmp_path / f"{loss}.pth"), caplog)
    assert "Skip loading" not in log and "not found in the checkpoint" not in log, log
    for a, b in zip(_classifier(back), _classifier(other)):
        assert torch.equal(a, b)


def test_the_check_sees_a_skipped_key(cat_info, tmp_path, caplog):
    """The warnings the test above rules out are really captured: a head of another class
    count is skipped, loudly."""
    soft = _plain_project_model("softmax", cat_info)
    DetectionCheckpointer(soft, save_dir=str(tmp_path)).save("softmax")
    global K
    k, K = K, K - 1
    try:
        other = _plain_project_model("sigmoid", "")
    finally:
        K = k
    log = _load(other, str(tmp_path / "softmax.pth"), caplog)
    assert "Skip loading parameter 'roi_heads.box_predictor.cls_score.weight'" in log


def test_data_counts_win_over_a_checkpoint_without_them(cat_info, tmp_path, caplog):
    """A stage-1 checkpoint saved without counts (plain softmax) must not reset the prior of a
    balanced stage 2."""
    soft = _plain_project_model("softmax", cat_info)
    pred = soft.roi_heads.box_predictor
    with torch.no_grad():
        pred.class_counts.fill_(1.0)
        pred.num_train_images.fill_(0.0)
    DetectionCheckpointer(soft, save_dir=str(tmp_path)).save("stage1")
    bal = _plain_project_model("balanced_sigmoid", cat_info)
    _load(bal, str(tmp_path / "stage1.pth"), caplog)
    bal.roi_heads.box_predictor.resolve_class_counts()  # the first training step does this
    counts = bal.roi_heads.box_predictor.class_counts
    assert counts.tolist() == [float(3**i) for i in range(K)]
    assert bal.roi_heads.box_predictor.num_train_images.item() == 400


def test_k_row_checkpoint_converts_once_offline(cat_info, tmp_path, caplog):
    """A published-layout checkpoint (K classifier rows) converts to K+1 rows and then loads
    with the plain checkpointer."""
    import subprocess
    import sys

    from conftest import REPO

    model = _plain_project_model("balanced_sigmoid", cat_info)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "roi_heads.box_predictor.cls_score."
    k_rows = {n: state[key + n][:K].clone().normal_() for n in ("weight", "bias")}
    state.update({key + n: v for n, v in k_rows.items()})
    torch.save({"model": state}, tmp_path / "published.pth")
    out = tmp_path / "converted.pth"
    tool = f"{REPO}/tools/convert_k_row_classifier.py"
    p = subprocess.run(
        [sys.executable, tool, str(tmp_path / "published.pth"), str(out), "--num-classes", str(K)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    log = _load(model, str(out), caplog)
    assert "Skip loading" not in log, log
    w, b = _classifier(model)
    assert torch.equal(w[:K], k_rows["weight"]) and torch.all(w[K] == 0) and b[K] == 0
    p = subprocess.run(
        [sys.executable, tool, str(tmp_path / "published.pth"), str(out), "--num-classes", "3"],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "--num-classes does not match" in p.stderr
