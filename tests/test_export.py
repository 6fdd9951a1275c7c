"""Export of the head: TorchScript scripting and tracing (the checks Detectron2's own suite
applies to FastRCNNOutputLayers / StandardROIHeads, written here for the balms head and every
LOSS), the whole-model ``scripting_with_instances`` flow, the stock initialisation, and
BalmsROIHeads built directly (a LazyConfig ``_target_``)."""

import math

import pytest
import torch
from conftest import tiny_cfg
from detectron2.config import get_cfg, instantiate
from detectron2.export import scripting_with_instances
from detectron2.export.torchscript_patch import (
    freeze_training_mode,
    patch_builtin_len,
    patch_instances,
)
from detectron2.layers import ShapeSpec
from detectron2.modeling import StandardROIHeads, build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.testing import convert_scripted_instances, reload_script_model
from torch import Tensor

from balms_det import BalmsFastRCNNOutputLayers, BalmsROIHeads, add_balms_config
from balms_det.modeling.roi_heads import LOSS_FAMILIES

K = 5
COUNTS = [50.0, 20.0, 5.0, 2.0, 1.0]
# every LOSS, the cosine classifier and the inference-time logit adjustment
CONFIGS = [dict(loss=loss) for loss in LOSS_FAMILIES] + [
    dict(loss="seesaw", normed_classifier_tau=20.0),
    dict(loss="balanced_softmax", posthoc_tau=1.0),
]
IDS = [
    c["loss"] + "".join(f"-{k}" for k in c if k != "loss") for c in CONFIGS
]  # e.g. "seesaw-normed_classifier_tau"
FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
}


def _spread(module, seed=1):
    """Seeded N(0, 1) classifier weights: the families' scores differ and pass any threshold
    (the initial N(0, 0.01) classifier gives near-uniform scores, the sigmoid prior ~0.001)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (module.cls_score.weight, module.cls_score.bias):
            p.copy_(torch.randn(p.shape, generator=g))


def _predictor(channels=8, **config):
    torch.manual_seed(0)
    p = BalmsFastRCNNOutputLayers(
        ShapeSpec(channels=channels),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=K,
        class_counts=COUNTS,  # class_image_counts defaults to them: the two must not share
        num_train_images=60,
        test_score_thresh=0.0,
        **config,
    )
    _spread(p)
    return p.eval()


def _equal_instances(a, b):
    a = a if isinstance(a, Instances) else convert_scripted_instances(a)
    b = b if isinstance(b, Instances) else convert_scripted_instances(b)
    assert a.image_size == b.image_size
    assert sorted(a.get_fields()) == sorted(b.get_fields())
    for name, v in a.get_fields().items():
        w = b.get(name)
        v, w = (v.tensor, w.tensor) if isinstance(v, Boxes) else (v, w)
        assert torch.equal(v, w), name


# -- the predictor alone ------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_predictor_scripts_repeatedly_and_matches_eager(config):
    x = torch.randn(7, 8)
    # scripted twice in one process (a property was compiled twice), and a second instance
    for p in (_predictor(**config), _predictor(**config)):
        scripted = torch.jit.script(p)
        for a, b in zip(scripted(x), p(x)):
            assert torch.equal(a, b)
        assert torch.equal(torch.jit.script(p)(x)[0], p(x)[0])
    # the eager training forward still records the ROIs (extension point); scripting did not
    # change the eager module
    p.train()
    p.record_train_rois = True
    p(x.view(7, 2, 2, 2))
    assert torch.equal(p.last_train_features, x)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_predict_boxes_and_probs_trace(config):
    """Traced as Detectron2's test_predict_{boxes,probs}_tracing do; outputs equal to eager at
    other numbers of ROIs than the traced one."""
    p = _predictor(**config)

    class Boxes_(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = p

        def forward(self, deltas, boxes):
            inst = Instances((10, 10))
            inst.proposal_boxes = Boxes(boxes)
            return self.p.predict_boxes((None, deltas), [inst])

    class Probs(Boxes_):
        def forward(self, scores, boxes):
            inst = Instances((10, 10))
            inst.proposal_boxes = Boxes(boxes)
            return self.p.predict_probs((scores, None), [inst])

    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), patch_builtin_len():
        boxes_fn = torch.jit.trace(Boxes_(), (torch.randn(10, 4 * K), torch.rand(10, 4) * 8))
        probs_fn = torch.jit.trace(Probs(), (torch.randn(10, K + 1), torch.rand(10, 4) * 8))
        for n in (5, 20):
            deltas, boxes = torch.randn(n, 4 * K, generator=g), torch.rand(n, 4, generator=g) * 8
            scores = 3 * torch.randn(n, K + 1, generator=g)
            inst = Instances((10, 10), proposal_boxes=Boxes(boxes))
            traced_boxes, traced_probs = boxes_fn(deltas, boxes), probs_fn(scores, boxes)
            eager_boxes = p.predict_boxes((None, deltas), [inst])
            eager_probs = p.predict_probs((scores, None), [inst])
            assert traced_probs[0].shape == (n, K + 1) and traced_boxes[0].shape == (n, 4 * K)
            assert torch.equal(traced_boxes[0], eager_boxes[0])
            assert torch.equal(traced_probs[0], eager_probs[0])


# -- the ROI heads --------------------------------------------------------------------------
def _heads_cfg():
    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10, 10, 5, 5)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 4
    return cfg


SHAPES = {"res4": ShapeSpec(channels=6, stride=16)}


def _heads(config):
    """BalmsROIHeads built directly (no yacs route): Detectron2's arguments with a balms
    predictor of ``config``."""
    torch.manual_seed(0)
    args = StandardROIHeads.from_config(_heads_cfg(), SHAPES)
    args["box_predictor"] = _predictor(channels=8, **config)
    return BalmsROIHeads(**args).eval()


def _heads_inputs():
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 80), (48, 64)]
    images = ImageList(torch.rand(2, 3, 64, 80, generator=g), sizes)
    features = {"res4": torch.rand(2, 6, 4, 5, generator=g)}
    proposals = []
    for h, w in sizes:
        xy = torch.rand(12, 2, generator=g) * torch.tensor([w, h]) * 0.6
        wh = torch.rand(12, 2, generator=g) * 20 + 4
        inst = Instances((h, w), proposal_boxes=Boxes(torch.cat([xy, xy + wh], 1)))
        inst.objectness_logits = torch.randn(12, generator=g)
        proposals.append(inst)
    return images, features, proposals


def test_roi_heads_script_for_every_loss():
    """Detectron2's test_StandardROIHeads_scriptability, for the balms head and every LOSS
    (one patch_instances context, so the shared parts are compiled once)."""
    images, features, proposals = _heads_inputs()
    heads = [_heads(c) for c in CONFIGS]
    with torch.no_grad():
        eager = [h(images, features, proposals)[0] for h in heads]
    # not a vacuous comparison: detections in every image, and the scores of the inference
    # rules (family, posthoc_tau, cosine classifier) differ (one rule, one output: the prior
    # of the balanced losses is a training-time term)
    by_rule = {}
    for config, out in zip(CONFIGS, eager):
        assert all(len(i) >= 5 for i in out), config
        rule = (
            LOSS_FAMILIES[config["loss"]],
            "posthoc_tau" in config,
            "normed_classifier_tau" in config,
        )
        by_rule.setdefault(rule, []).append(torch.cat([i.scores for i in out]))
    first = [v[0] for v in by_rule.values()]
    assert len(first) == 5  # softmax, softmax + posthoc_tau, sigmoid, seesaw, seesaw + cosine
    assert all(torch.equal(s, v[0]) for v in by_rule.values() for s in v)
    assert not any(
        len(a) == len(b) and torch.allclose(a, b) for i, a in enumerate(first) for b in first[:i]
    )
    with freeze_training_mode(heads[0]), patch_instances(FIELDS) as new_instances:
        for config, h, out in zip(CONFIGS, heads, eager):
            with freeze_training_mode(h):
                scripted = torch.jit.script(h)
            props = [new_instances.from_instances(p) for p in proposals]
            with torch.no_grad():
                scripted_out, _ = scripted(images, features, props)
            for a, b in zip(out, scripted_out):
                _equal_instances(a, b)


def test_whole_model_scripting_with_instances():
    """Detectron2's export flow (scripting_with_instances, save / load) on the tiny Mask R-CNN
    with the head (Seesaw with the cosine classifier: the inference path furthest from the
    stock one; every LOSS is scripted in the ROI heads above); inference equal to eager, two
    images of different sizes in one batch."""
    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "seesaw",
        "MODEL.ROI_BOX_HEAD.BALMS.NORMED_CLASSIFIER_TAU",
        "20.0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "TEST.DETECTIONS_PER_IMAGE",
        "10",
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _spread(model.roi_heads.box_predictor)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 64, 64, generator=g) * 255
    inputs = [{"image": image}, {"image": image[:, :40, :56]}]
    with torch.no_grad():
        eager = model.inference(inputs, do_postprocess=False)
    scripted = reload_script_model(scripting_with_instances(model, FIELDS))
    with torch.no_grad():
        out = scripted.inference(inputs, do_postprocess=False)
    assert all(len(i) > 0 for i in eager)
    for a, b in zip(eager, out):
        _equal_instances(a, b)


# -- initialisation -------------------------------------------------------------------------
def _initial_state(name, *opts):
    cfg = tiny_cfg("MODEL.ROI_HEADS.NAME", name, *opts)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    return state, torch.get_rng_state()


def test_initial_weights_are_the_stock_models():
    stock, stock_rng = _initial_state("StandardROIHeads")
    prior = 0.001
    for loss, tau in [("softmax", "0.0"), ("sigmoid", "0.0"), ("seesaw", "20.0")]:
        ours, rng = _initial_state(
            "BalmsROIHeads",
            "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
            loss,
            "MODEL.ROI_BOX_HEAD.BALMS.PRIOR_PROB",
            str(prior),
            "MODEL.ROI_BOX_HEAD.BALMS.NORMED_CLASSIFIER_TAU",
            tau,
        )
        assert torch.equal(rng, stock_rng), loss  # the same random stream after the model
        extra = {k[len("roi_heads.box_predictor.") :] for k in set(ours) - set(stock)}
        assert extra == {
            "class_counts",
            "num_train_images",
            "class_image_counts",
            "class_weights",
            "seesaw_counts",
            "eqlv2_pos_grad",
            "eqlv2_neg_grad",
            "dataset_meta",  # class names and count source (serving)
        }
        assert set(stock) <= set(ours)
        bias = "roi_heads.box_predictor.cls_score.bias"
        differ = {k for k in stock if not torch.equal(stock[k], ours[k])}
        if LOSS_FAMILIES[loss] == "sigmoid":  # the only difference: the prior bias
            assert differ == {bias}
            expected = torch.full((12 + 1,), -math.log((1 - prior) / prior))
            expected[-1] = 0
            assert torch.equal(ours[bias], expected)
        else:
            assert differ == set(), (loss, differ)


# -- direct construction (LazyConfig) ---------------------------------------------------------
def test_direct_construction_needs_a_balms_predictor():
    args = StandardROIHeads.from_config(_heads_cfg(), SHAPES)
    assert type(args["box_predictor"]) is FastRCNNOutputLayers
    with pytest.raises(TypeError, match=r"L\(BalmsFastRCNNOutputLayers\).*loss=.*class_counts"):
        BalmsROIHeads(**args)
    p = _predictor(loss="balanced_softmax")
    args["box_predictor"] = p
    assert BalmsROIHeads(**args).box_predictor is p


def test_lazy_config_target():
    """Detectron2's model zoo mask_rcnn_fpn.py: replacing only roi_heads._target_ is an error
    naming the fix; with the predictor replaced as the error says, the head is the balms one."""
    from detectron2 import model_zoo

    roi = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model.roi_heads
    roi.num_classes = K
    roi.box_head.fc_dims = [8]
    roi.box_predictor.input_shape = ShapeSpec(channels=8)
    roi.mask_head.conv_dims = [4]
    roi._target_ = BalmsROIHeads
    with pytest.raises(TypeError, match="BalmsFastRCNNOutputLayers"):
        instantiate(roi)
    roi.box_predictor._target_ = BalmsFastRCNNOutputLayers
    roi.box_predictor.loss = "balanced_softmax"
    roi.box_predictor.class_counts = COUNTS
    heads = instantiate(roi)
    assert isinstance(heads, BalmsROIHeads)
    assert heads.box_predictor.loss_name == "balanced_softmax"
    assert heads.box_predictor.class_counts.tolist() == COUNTS
