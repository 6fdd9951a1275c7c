"""Every loss is safe in half precision (AMP): fp16 / bf16 logits at LVIS size give finite values
and gradients equal to the float32 result, and a CPU training step under bf16 autocast gives
finite losses for every LOSS."""

import pytest
import torch
from conftest import tiny_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform

from balms_det.modeling.roi_heads import LOSS_FAMILIES, BalmsFastRCNNOutputLayers

K, R = 1203, 512  # LVIS v1 classes, ROIs per image
# Tolerance of a gradient computed from half-precision logits against the float32 gradient of
# the same (rounded) logits: the float32 result rounded once to the half format.
TOL = {torch.float16: dict(rtol=1e-3, atol=1e-7), torch.bfloat16: dict(rtol=8e-3, atol=1e-7)}


def _predictor(loss):
    counts = torch.logspace(0, 4, K).round()  # 1 .. 10,000 images, LVIS-like skew
    return BalmsFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=K,
        loss=loss,
        class_counts=counts,
        num_train_images=20000,
        los_delta=0.9,
    )


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(R, K + 1, generator=g) * 4 - 2
    labels = torch.randint(0, K, (R,), generator=g)
    labels[torch.rand(R, generator=g) < 0.75] = K  # 3/4 background, as sampled ROIs are
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", list(LOSS_FAMILIES))
def test_half_precision_logits_match_float32(loss, dtype):
    pred = _predictor(loss)
    logits, labels = _case()
    half = logits.to(dtype).requires_grad_()
    ref = half.detach().float().requires_grad_()  # the same rounded values, in float32
    value = pred.classification_loss(half, labels)
    value_ref = pred.classification_loss(ref, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.equal(value, value_ref)  # the computation itself is float32
    (g,) = torch.autograd.grad(value, half)
    (g_ref,) = torch.autograd.grad(value_ref, ref)
    assert g.dtype == dtype and torch.isfinite(g).all()
    torch.testing.assert_close(g.float(), g_ref, **TOL[dtype])
    # and against the unrounded float32 logits: the input rounding is all that differs
    exact = pred.classification_loss(logits, labels)
    torch.testing.assert_close(value, exact, rtol=2e-2 if dtype == torch.bfloat16 else 2e-3, atol=0)


def test_a_plain_half_sum_would_overflow():
    """What the float32 computation prevents: the sigmoid loss of this batch summed in fp16."""
    logits, labels = _case()
    per_element = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, :K], torch.zeros(R, K), reduction="none"
    )
    assert per_element.sum() > torch.finfo(torch.float16).max


@pytest.mark.parametrize("loss", list(LOSS_FAMILIES))
def test_bf16_autocast_training_step_is_finite(loss):
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        loss,
        "MODEL.MASK_ON",
        "False",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "40",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:2]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert losses["loss_cls"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
