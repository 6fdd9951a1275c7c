import json
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cfg
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from balms_det import BalmsFastRCNNOutputLayers, add_balms_config
from balms_det import losses as L

K = 5
SHAPE = ShapeSpec(channels=16)


def _proposals(n_per_image=(6, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_per_image:
        inst = Instances((64, 64))
        xy = torch.rand(n, 2, generator=g) * 40
        wh = torch.rand(n, 2, generator=g) * 20 + 4
        inst.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_boxes = Boxes(torch.cat([xy + 1, xy + wh - 1], 1))
        inst.gt_classes = torch.randint(0, K + 1, (n,), generator=g)
        out.append(inst)
    return out


def _predictor(loss, counts=(50, 20, 5, 1, 0), **kw):
    return BalmsFastRCNNOutputLayers(
        SHAPE,
        box2box_transform=_b2b(),
        num_classes=K,
        loss=loss,
        class_counts=list(counts),
        num_train_images=60,
        test_score_thresh=0.0,
        **kw,
    )


def _b2b():
    from detectron2.modeling.box_regression import Box2BoxTransform

    return Box2BoxTransform(weights=(10, 10, 5, 5))


def test_softmax_head_is_numerically_the_stock_head():
    torch.manual_seed(0)
    ours = _predictor("softmax")
    stock = FastRCNNOutputLayers(
        SHAPE, box2box_transform=_b2b(), num_classes=K, test_score_thresh=0.0
    )
    missing, unexpected = stock.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and set(unexpected) == {
        "class_counts",
        "num_train_images",
        "class_image_counts",
        "class_weights",
        "seesaw_counts",
        "eqlv2_pos_grad",
        "eqlv2_neg_grad",
        "dataset_meta",
    }
    x = torch.randn(10, 16, requires_grad=True)
    props = _proposals()
    p1, p2 = ours(x), stock(x)
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[1], p2[1])
    l1, l2 = ours.losses(p1, props), stock.losses(p2, props)
    assert l1.keys() == l2.keys()
    for k in l1:
        assert torch.equal(l1[k], l2[k])
    g1 = torch.autograd.grad(sum(l1.values()), x)[0]
    g2 = torch.autograd.grad(sum(l2.values()), x)[0]
    assert torch.equal(g1, g2)
    for a, b in zip(ours.predict_probs(p1, props), stock.predict_probs(p2, props)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "loss",
    [
        "balanced_softmax",
        "label_over_smooth",
        "label_over_smooth_fg",
        "sigmoid",
        "balanced_sigmoid",
    ],
)
def test_head_loss_is_the_pure_function(loss):
    torch.manual_seed(0)
    if loss == "label_over_smooth_fg":
        pred = _predictor("label_over_smooth", los_delta=0.5, los_foreground_only=True)
    else:
        pred = _predictor(loss, los_delta=0.5)
    x = torch.randn(10, 16)
    props = _proposals()
    scores, deltas = pred(x)
    assert scores.shape == (10, K + 1)
    labels = torch.cat([p.gt_classes for p in props])
    counts = torch.tensor([50.0, 20, 5, 1, 0])
    expected = {
        "balanced_softmax": lambda: L.balanced_softmax_loss(scores, labels, counts),
        "label_over_smooth": lambda: L.label_over_smooth_loss(scores, labels, 0.5),
        "label_over_smooth_fg": lambda: L.label_over_smooth_loss(
            scores, labels, 0.5, foreground_only=True
        ),
        "sigmoid": lambda: L.sigmoid_loss(scores[:, :K], labels),
        "balanced_sigmoid": lambda: L.balanced_sigmoid_loss(scores[:, :K], labels, counts, 60),
    }[loss]()
    got = pred.losses((scores, deltas), props)
    assert torch.allclose(got["loss_cls"], expected)
    assert torch.isfinite(got["loss_box_reg"])


def test_sigmoid_family_keeps_the_layout_and_ignores_background():
    pred = _predictor("balanced_sigmoid", prior_prob=0.01)
    assert pred.cls_score.out_features == K + 1  # Detectron2's layout, background last
    assert torch.allclose(pred.cls_score.bias[:K], torch.full((K,), -torch.log(torch.tensor(99.0))))
    x = torch.randn(10, 16)
    probs = torch.cat(pred.predict_probs(pred(x), _proposals()))
    assert torch.equal(probs[:, -1], torch.zeros(10))
    assert torch.allclose(probs[:, :K], torch.sigmoid(pred.cls_score(x))[:, :K])
    # the background column takes no part in the loss: its weights get no gradient
    scores, deltas = pred(x)
    pred.losses((scores, deltas), _proposals())["loss_cls"].backward()
    assert torch.all(pred.cls_score.weight.grad[-1] == 0) and pred.cls_score.bias.grad[-1] == 0
    assert pred.cls_score.weight.grad[:K].abs().sum() > 0


def test_inference_ignores_the_prior():
    torch.manual_seed(0)
    a = _predictor("softmax")
    b = _predictor("balanced_softmax", counts=(1000, 1, 1, 1, 1))
    b.load_state_dict(a.state_dict(), strict=False)
    x = torch.randn(10, 16)
    props = _proposals()
    for pa, pb in zip(a.predict_probs(a(x), props), b.predict_probs(b(x), props)):
        assert torch.equal(pa, pb)
    assert torch.allclose(torch.cat(b.predict_probs(b(x), props)), F.softmax(b.cls_score(x), -1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="Unknown MODEL.ROI_BOX_HEAD.BALMS.LOSS 'focal'"):
        _predictor("focal")
    with pytest.raises(ValueError, match="3 entries but the model has 5 classes"):
        _predictor("balanced_softmax", counts=(1, 2, 3))
    # without counts the predictor builds (inference needs none); its training step refuses,
    # naming the constructor argument and the config keys
    pred = BalmsFastRCNNOutputLayers(
        SHAPE, box2box_transform=_b2b(), num_classes=K, loss="balanced_softmax"
    )
    with pytest.raises(ValueError, match="needs the class counts.*class_counts=.*CAT_INFO"):
        pred.losses(pred(torch.randn(10, 16)), _proposals())
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        _predictor("balanced_softmax", use_sigmoid_ce=True)


def test_zero_count_class_is_clamped_and_named(caplog):
    with caplog.at_level(logging.WARNING):
        pred = _predictor(
            "balanced_softmax", counts=(5, 0, 3, 0, 1), class_names=["a", "zebra", "c", "yak", "e"]
        )
    assert "zebra" in caplog.text and "yak" in caplog.text
    scores, deltas = pred(torch.randn(10, 16))
    loss = pred.losses((scores, deltas), _proposals())["loss_cls"]
    assert torch.isfinite(loss)


def _tiny_model(loss):
    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        loss,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "40",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
    )
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _batch(cfg, n=2):
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


@pytest.mark.parametrize(
    "family",
    [("softmax", "balanced_softmax", "label_over_smooth"), ("sigmoid", "balanced_sigmoid")],
)
def test_head_in_full_model(family):
    outputs = []
    batch = None
    for loss in family:
        cfg, model = _tiny_model(loss)
        batch = batch or _batch(cfg)  # one batch (the train mapper flips at random)
        if outputs:  # same weights for every loss of the family
            model.load_state_dict(ref_state)
        else:
            ref_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.eval()
        with torch.no_grad():
            out = model([{k: v for k, v in b.items() if k == "image"} for b in batch])
        outputs.append(out[0]["instances"])
        model.train()
        losses = model(batch)
        assert set(losses) == {
            "loss_cls",
            "loss_box_reg",
            "loss_mask",
            "loss_rpn_cls",
            "loss_rpn_loc",
        }
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert len(outputs[0]) > 0
    for o in outputs[1:]:
        assert torch.equal(o.scores, outputs[0].scores)
        assert torch.equal(o.pred_classes, outputs[0].pred_classes)
        assert torch.equal(o.pred_boxes.tensor, outputs[0].pred_boxes.tensor)


def test_import_into_a_plain_detectron2_config():
    """What another project does: get_cfg + add_balms_config + ROI_HEADS.NAME, nothing else."""
    from detectron2.data import MetadataCatalog

    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NAME = "BalmsROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 12
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.BALMS.LOSS = "balanced_softmax"
    cfg.DATASETS.TRAIN = ("synth_lt_tiny_train",)
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    assert type(pred) is BalmsFastRCNNOutputLayers
    assert pred.counts_origin() == "none"  # building reads no training data
    assert pred.resolve_class_counts() and pred.counts_origin() == "data"
    with open(MetadataCatalog.get("synth_lt_tiny_train").json_file) as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    assert pred.class_counts.tolist() == [float(c["image_count"]) for c in cats]
    # without training data nor CAT_INFO the balanced loss says what it needs when it trains
    cfg.DATASETS.TRAIN = ()
    pred = BalmsFastRCNNOutputLayers(cfg, ShapeSpec(channels=16))  # the predictor alone
    with pytest.raises(ValueError, match="needs the class counts.*class_counts=.*CAT_INFO"):
        pred.resolve_class_counts()


def test_cat_info_feeds_the_prior(tmp_path):
    from detectron2.data import MetadataCatalog

    names = MetadataCatalog.get("synth_lt_tiny_train").thing_classes  # the file must match them
    info = [
        {"id": i + 1, "name": n, "image_count": 10 * (i + 1), "instance_count": 11 * (i + 1)}
        for i, n in enumerate(names)
    ]
    path = tmp_path / "cat_info.json"
    path.write_text(json.dumps({"num_images": 200, "categories": info}))
    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_sigmoid",
        "MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO",
        str(path),
        "MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE",
        "instance_count",
    )
    pred = build_model(cfg).roi_heads.box_predictor
    pred.resolve_class_counts()
    assert pred.class_counts.tolist() == [11.0 * (i + 1) for i in range(12)]
    assert pred.num_train_images.item() == 200
    # saved with the model
    assert "roi_heads.box_predictor.class_counts" in build_model(cfg).state_dict()


def test_posthoc_logit_adjustment_hand_computed():
    """Counts (3, 1) and zero logits: adjusted logits (-log 1.5, -log 0.5, 0), so the
    probabilities are (2/3, 2, 1) / (11/3) = (2/11, 6/11, 3/11)."""
    pred = BalmsFastRCNNOutputLayers(
        SHAPE,
        box2box_transform=_b2b(),
        num_classes=2,
        loss="softmax",
        class_counts=[3, 1],
        posthoc_tau=1.0,
        test_score_thresh=0.0,
    ).eval()
    props = _proposals((1,))
    probs = pred.predict_probs((torch.zeros(1, 3), torch.zeros(1, 8)), props)[0]
    assert torch.allclose(probs, torch.tensor([[2 / 11, 6 / 11, 3 / 11]]), atol=1e-6)
    # tau scales the shift; training losses are untouched (inference only)
    pred.posthoc_tau = 0.5
    logits = torch.randn(4, 3)
    shift = 0.5 * torch.log(torch.tensor([1.5, 0.5, 1.0]))
    assert torch.allclose(
        pred.predict_probs((logits, torch.zeros(4, 8)), _proposals((4,)))[0],
        F.softmax(logits - shift, dim=1),
        atol=1e-6,
    )
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.allclose(
        pred.classification_loss(logits, labels), F.cross_entropy(logits, labels), rtol=1e-6, atol=0
    )


def test_posthoc_logit_adjustment_needs_softmax_and_counts():
    with pytest.raises(ValueError, match="POSTHOC_TAU adjusts softmax logits"):
        _predictor("balanced_sigmoid", posthoc_tau=1.0)
    pred = BalmsFastRCNNOutputLayers(
        SHAPE, box2box_transform=_b2b(), num_classes=K, loss="softmax", posthoc_tau=1.0
    ).eval()
    # no counts given, resolved nor loaded: inference with the adjustment refuses
    with pytest.raises(ValueError, match="POSTHOC_TAU needs the class counts.*class_counts="):
        pred.predict_probs(pred(torch.randn(10, 16)), _proposals())
    # a checkpoint's counts serve inference
    pred.load_state_dict(_predictor("softmax").state_dict())
    assert pred.counts_origin() == "checkpoint"
    assert pred.class_counts.tolist() == [50.0, 20.0, 5.0, 1.0, 0.0]
    pred.predict_probs(pred(torch.randn(10, 16)), _proposals())
