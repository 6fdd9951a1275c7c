"""MODEL.ROI_BOX_HEAD.BALMS.PRIOR 'sampler': the prior as the training sampler delivers it."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from balms_det.class_counts import (
    CountSource,
    counts_from_dataset_dicts,
    sampled_class_counts,
)

# 4 images, 3 classes: classes {0}, {0, 1 (twice)}, {0}, {2}
_BOX = dict(bbox=[0, 0, 4, 4], bbox_mode=1)  # (BoxMode.XYWH_ABS: training data has boxes)
HAND = [
    {"file_name": "a.png", "annotations": [dict(_BOX, category_id=0)]},
    {
        "file_name": "b.png",
        "annotations": [dict(_BOX, category_id=0)] + [dict(_BOX, category_id=1)] * 2,
    },
    {"file_name": "c.png", "annotations": [dict(_BOX, category_id=0)]},
    {"file_name": "d.png", "annotations": [dict(_BOX, category_id=2)]},
]


def _register_hand(name="sampler_prior_hand_train"):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d, image_id=i) for i, d in enumerate(HAND)])
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    return name


def test_sampled_counts_hand_computed():
    """Repeat factors (1, 2, 1, 2): class 0 is in images 1-3 (1 + 2 + 1 = 4), class 1 in image 2
    (2; its 2 instances give 4), class 2 in image 4 (2); 6 images per epoch."""
    c = sampled_class_counts(HAND, torch.tensor([1.0, 2.0, 1.0, 2.0]), 3)
    assert c.image_count.tolist() == [4.0, 2.0, 2.0]
    assert c.instance_count.tolist() == [4.0, 4.0, 2.0]
    assert c.num_images == 6
    # factors 1 are the dataset's counts
    ones, data = sampled_class_counts(HAND, [1] * 4, 3), counts_from_dataset_dicts(HAND, 3)
    assert ones.image_count.tolist() == data.image_count.tolist() == [3.0, 1.0, 1.0]
    assert ones.instance_count.tolist() == data.instance_count.tolist() == [3.0, 2.0, 1.0]
    assert ones.num_images == data.num_images == 4
    with pytest.raises(ValueError, match="3 repeat factors for 4 images"):
        sampled_class_counts(HAND, [1, 1, 1], 3)
    with pytest.raises(ValueError, match="non-negative"):
        sampled_class_counts(HAND, [1, -1, 1, 1], 3)


@pytest.mark.parametrize("sqrt", [False, True])
def test_repeat_factor_sampler_prior_through_detectron2(sqrt):
    """Detectron2's repeat factors at threshold 0.5: f = (3/4, 1/4, 1/4), so class factors
    (1, 2, 2) without the square root and (1, sqrt 2, sqrt 2) with it; image factors are the
    max over the image's classes: (1, r, 1, r) with r = 2 or sqrt 2."""
    name = _register_hand()
    src = CountSource(
        dataset_names=(name,),
        num_classes=3,
        prior="sampler",
        sampler="RepeatFactorTrainingSampler",
        repeat_threshold=0.5,
        repeat_sqrt=sqrt,
    )
    r = math.sqrt(2) if sqrt else 2.0
    found = src.resolve()
    assert np.allclose(found["prior"].image_count, [2 + r, r, r])
    assert np.allclose(found["prior"].instance_count, [2 + r, 2 * r, r])
    assert math.isclose(found["prior"].num_images, 2 + 2 * r, rel_tol=1e-6)  # float32 factors
    assert found["image_count"].tolist() == [3.0, 1.0, 1.0]  # the LVIS groups: the dataset's
    assert "RepeatFactorTrainingSampler" in found["description"]
    # PRIOR dataset, or the TrainingSampler: the dataset's counts
    for kw in (dict(prior="dataset"), dict(sampler="TrainingSampler")):
        other = CountSource(**{**src.__dict__, **kw}).resolve()
        assert other["prior"].image_count.tolist() == [3.0, 1.0, 1.0]
        assert other["prior"].num_images == 4


def _tiny_predictor(*opts):
    pred = build_model(tiny_cfg(*opts)).roi_heads.box_predictor
    pred.resolve_class_counts()
    return pred


RFS = ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD"]


def test_sampler_prior_equals_dataset_prior_under_training_sampler():
    a = _tiny_predictor("MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_sigmoid")
    b = _tiny_predictor(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_sigmoid",
        "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
        "sampler",
    )
    for buf in ("class_counts", "num_train_images", "class_image_counts"):
        assert torch.equal(getattr(a, buf), getattr(b, buf)), buf


@pytest.mark.parametrize("count_type", ["image_count", "instance_count"])
def test_predictor_holds_the_sampler_counts_under_rfs(count_type):
    """The predictor's prior (and balanced sigmoid's number of images) under RFS are the sums
    of the repeat factors Detectron2's sampler uses for this training set; the groups stay
    the dataset's."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    opts = ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_sigmoid", *RFS, "0.3"]
    opts += ["MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE", count_type]
    data = _tiny_predictor(*opts)
    pred = _tiny_predictor(*opts, "MODEL.ROI_BOX_HEAD.BALMS.PRIOR", "sampler")
    dicts = get_detection_dataset_dicts(["synth_lt_tiny_train"])
    rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.3)
    assert float(rf.max()) > 1.5  # RFS really repeats the tail here
    expect = np.zeros(12)
    for d, r in zip(dicts, rf.tolist()):
        classes = [a["category_id"] for a in d["annotations"]]
        for k in set(classes) if count_type == "image_count" else classes:
            expect[k] += r
    assert np.allclose(pred.class_counts.numpy(), expect, rtol=1e-6)
    assert math.isclose(pred.num_train_images.item(), float(rf.sum()), rel_tol=1e-6)
    assert torch.equal(pred.class_image_counts, data.class_image_counts)
    # rarer classes gain relative to frequent ones: the sampler prior is flatter
    ratio = pred.class_counts / data.class_counts
    tail, head = int(data.class_counts.argmin()), int(data.class_counts.argmax())
    assert ratio[tail] > ratio[head]


def test_sampler_prior_errors():
    with pytest.raises(ValueError, match="PRIOR must be one of"):
        build_model(
            tiny_cfg(
                "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
                "balanced_softmax",
                "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
                "uniform",
            )
        )
    with pytest.raises(
        ValueError, match="not by DATALOADER.SAMPLER_TRAIN 'RandomSubsetTrainingSampler'"
    ):
        build_model(
            tiny_cfg(
                "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
                "balanced_softmax",
                "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
                "sampler",
                "DATALOADER.SAMPLER_TRAIN",
                "RandomSubsetTrainingSampler",
            )
        )
