"""A trained model serves without its training set: counts come from the checkpoint at
inference, and only a training step that needs counts (with none to be found) is an error."""

import logging

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from balms_det.modeling.roi_heads import LOSS_FAMILIES

UNREGISTERED = ["DATASETS.TRAIN", "('deployed_without_its_training_set',)"]
LOSS = "MODEL.ROI_BOX_HEAD.BALMS.LOSS"
# inference sized for a test: few proposals and detections, every score kept
FAST = ["MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "30"]
FAST += ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((96, 96, 3)) * 255).astype(np.uint8)


def _checkpoint(tmp_path, opts):
    """A model of the tiny config with the training data's counts, a random classifier and
    non-trivial class weights and Seesaw / EQLv2 state, saved as a checkpoint."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts, *FAST))
    pred = model.roi_heads.box_predictor
    assert pred.resolve_class_counts(required=True)
    with torch.no_grad():
        pred.cls_score.weight.normal_(0, 0.5)
        pred.cls_score.bias.normal_(0, 0.5)
        pred.class_weights.uniform_(0.5, 1.5)
        pred.seesaw_counts.copy_(pred.class_counts.double())
        pred.eqlv2_pos_grad.uniform_(1, 2)
        pred.eqlv2_neg_grad.uniform_(1, 2)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("trained")
    return str(tmp_path / "trained.pth"), pred


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One checkpoint serves every LOSS (one classifier layout)."""
    return _checkpoint(tmp_path_factory.mktemp("trained"), [LOSS, "balanced_softmax"])


@pytest.mark.parametrize(
    "loss, extra",
    [(k, []) for k in LOSS_FAMILIES]
    + [("softmax", ["MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU", "1.0"])],
)
def test_default_predictor_without_the_training_set(trained, loss, extra):
    weights, trained = trained
    opts = [LOSS, loss, *extra, *FAST]
    outs = []
    for train in ([], UNREGISTERED):
        cfg = tiny_cfg(*opts, *train, "MODEL.WEIGHTS", weights)
        predictor = DefaultPredictor(cfg)
        pred = predictor.model.roi_heads.box_predictor
        # inference never resolves counts: the checkpoint's serve
        assert pred.counts_origin() == "checkpoint"
        assert torch.equal(pred.class_counts, trained.class_counts)
        outs.append(predictor(_image())["instances"])
    a, b = outs
    assert len(a) > 0
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.pred_masks, b.pred_masks)
    if extra:  # the post-hoc adjustment really used the checkpoint's (non-uniform) counts
        cfg = tiny_cfg(*opts, *UNREGISTERED, "MODEL.WEIGHTS", weights)
        predictor = DefaultPredictor(cfg)
        predictor.model.roi_heads.box_predictor.class_counts.fill_(1.0)
        c = predictor(_image())["instances"]
        assert not (len(c) == len(a) and torch.equal(c.scores, a.scores))


def _train_step(model):
    """One training forward of ``model`` on two images of the tiny training set."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.dataset_mapper import DatasetMapper

    cfg = tiny_cfg()
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get("synth_lt_tiny_train")[:2]]
    model.train()
    return model(batch)


def test_softmax_trains_without_counts_and_says_so_once(caplog):
    model = build_model(tiny_cfg(*UNREGISTERED, "MODEL.ROI_BOX_HEAD.BALMS.DIAGNOSTICS_PERIOD", "1"))
    with caplog.at_level(logging.INFO, logger="balms_det"):
        for _ in range(2):
            losses = _train_step(model)
    assert torch.isfinite(losses["loss_cls"])
    lines = [r.getMessage() for r in caplog.records if "No class counts" in r.getMessage()]
    assert len(lines) == 1 and "deployed_without_its_training_set" in lines[0], lines
    assert model.roi_heads.box_predictor.counts_origin() == "none"


@pytest.mark.parametrize("loss", ["balanced_softmax", "balanced_sigmoid"])
def test_training_refuses_without_counts(tmp_path, loss):
    from balms_det.engine.trainer import BalmsTrainer

    # the model builds and loads a checkpoint with counts ...
    weights, _ = _checkpoint(tmp_path, [LOSS, loss])
    model = build_model(tiny_cfg(LOSS, loss, *UNREGISTERED))
    DetectionCheckpointer(model).load(weights)
    # ... but a training step needs the training data's: the error names where it looked
    with pytest.raises(ValueError, match="needs the class counts") as e:
        _train_step(model)
    msg = str(e.value)
    for place in (
        "class_counts=",
        "CAT_INFO",
        "DATASETS.TRAIN",
        "deployed_without_its_training_set",
    ):
        assert place in msg, msg
    # the trainer says so before it builds anything: the training set is not registered
    with pytest.raises(ValueError, match="DATASETS.TRAIN names 'deployed_without_its_training"):
        BalmsTrainer(tiny_cfg(LOSS, loss, *UNREGISTERED, "OUTPUT_DIR", str(tmp_path / "t")))


def test_registered_dataset_without_files_is_an_error_not_a_uniform_prior():
    """Detectron2's builtin COCO registration without COCO on disk: a balanced loss does not
    silently train with counts of 1."""
    model = build_model(
        tiny_cfg(
            LOSS,
            "balanced_softmax",
            "DATASETS.TRAIN",
            "('coco_2017_train',)",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "80",
        )
    )
    pred = model.roi_heads.box_predictor
    with pytest.raises(ValueError, match="needs the class counts") as e:
        pred.resolve_class_counts()
    assert "coco_2017_train" in str(e.value) and "COCO's 1..90" in str(e.value)
    assert isinstance(e.value.__cause__, Exception)
    assert bool((pred.class_counts == 1).all())  # nothing was set


def test_class_names_travel_in_the_checkpoint(trained, caplog):
    """The checkpoint names its classes (and where its counts came from): DefaultPredictor's
    metadata gets them with no dataset of that name registered; a checkpoint saved before
    names were kept loads without a warning."""
    from detectron2.data import MetadataCatalog

    from balms_det.engine.checkpoint import checkpoint_dataset_meta

    weights, pred = trained
    names = MetadataCatalog.get("synth_lt_tiny_train").thing_classes
    meta = checkpoint_dataset_meta(weights)
    assert meta["thing_classes"] == names
    assert "synth_lt_tiny_train" in meta["count_source"] and "12 classes" in meta["count_source"]
    serving = ["DATASETS.TEST", "('served_names_test',)", "MODEL.WEIGHTS", weights]
    predictor = DefaultPredictor(tiny_cfg(*UNREGISTERED, *serving, *FAST))
    assert predictor.metadata.thing_classes == names
    assert predictor.model.roi_heads.box_predictor.class_names == names

    # a checkpoint without dataset_meta (saved before it existed) loads as it is
    old = torch.load(weights, map_location="cpu")
    del old["model"]["roi_heads.box_predictor.dataset_meta"]
    model = build_model(tiny_cfg(*UNREGISTERED, "DATASETS.TEST", "('served_old',)"))
    with caplog.at_level(logging.WARNING):
        incompatible = DetectionCheckpointer(model)._load_model(old)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    assert model.roi_heads.box_predictor.get_dataset_meta() == {}
    assert MetadataCatalog.get("served_old").get("thing_classes", None) is None
