"""Your own long-tailed dataset on a CPU, as a LazyConfig: the twin of
configs/own_data/cpu_r18.yaml (docs/OWN_DATA.md). Mask R-CNN R18-FPN from scratch (BatchNorm
everywhere, nothing frozen), balanced softmax with the prior of the repeat-factor sampler,
gradient clipping and a gentle warm-up; the number of classes is the training set's.

    python tools/lazy_train_net.py --config-file configs/own_data/lazy_cpu_r18.py \
        'train.balms.datasets=[[own_train,data/train.json,data/train_images],[own_val,data/val.json,data/val_images]]'
"""

import detectron2.data.transforms as T
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from balms_det.class_counts import lazy_class_counts, lazy_num_classes
from balms_det.data.training_set import training_repeat_factors, training_set
from balms_det.engine.lazy import optimizer_with_gradient_clipping
from balms_det.evaluation.lvis_evaluator import BalmsLVISEvaluator
from balms_det.modeling.roi_heads import BalmsFastRCNNOutputLayers

from ..lazy.common.mask_rcnn_R18_FPN import model

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
train = model_zoo.get_config("common/train.py").train

# -- data: your files, registered by tools/lazy_train_net.py from train.balms.datasets ----------
TRAIN, TEST = "own_train", "own_val"
# read once (balms_det/data/training_set.py): the loader, its sampler, K, the counts and the checks
dataloader.train.dataset = L(training_set)(names=TRAIN, filter_empty=True)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(160,), max_size=256, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(training_repeat_factors)(
        dataset="${dataloader.train.dataset}", repeat_thresh=0.1
    )
)
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.dataset.names = TEST
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=160, max_size=256)
]
dataloader.test.num_workers = 1
dataloader.evaluator = L(BalmsLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    max_dets_per_image=300,
    train_dataset_names=["${dataloader.train.dataset.names}"],
)

# -- model: R18-FPN from scratch (configs/lazy/common/mask_rcnn_R18_FPN.py) -----------------------
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
# the number of the training set's categories, read when the model is instantiated
model.roi_heads.num_classes = L(lazy_num_classes)(dataset_names="${dataloader.train.dataset.names}")
# ImageNet statistics (BGR), the usual normalisation of a network trained from scratch
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.12, 58.395]

# -- the balms head: balanced softmax with the counts as the repeat-factor sampler delivers them
model.roi_heads.box_predictor = L(BalmsFastRCNNOutputLayers)(
    input_shape=ShapeSpec(channels=256),
    test_score_thresh=0.0001,
    test_topk_per_image=300,
    box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
    num_classes="${..num_classes}",
    loss="balanced_softmax",
    class_counts=L(lazy_class_counts)(
        dataset_names="${dataloader.train.dataset.names}",
        prior="sampler",
        repeat_threshold="${dataloader.train.sampler.repeat_factors.repeat_thresh}",
    ),
    # the dataset's image counts: the frequency groups of the diagnostics
    class_image_counts=L(lazy_class_counts)(dataset_names="${dataloader.train.dataset.names}"),
    diagnostics_period=20,
)

# -- schedule: 300 iterations of 8 images, LR 0.01 after 100 warm-up iterations, clipping ------
optimizer = L(optimizer_with_gradient_clipping)(
    optimizer=torch.optim.SGD,
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
    clip_type="norm",
    clip_value=1.0,
)
train.max_iter = 300
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[225, 270], num_updates="${train.max_iter}"
    ),
    warmup_length=100 / 300,  # 100 iterations of 300
    warmup_factor=0.001,
)
train.update(
    output_dir="output/own_data_lazy_cpu_r18",
    init_checkpoint="",
    device="cpu",
    seed=0,
    eval_period=0,  # evaluate after training only
    log_period=20,
    checkpointer=dict(period=100, max_to_keep=3),
)

# -- balms-det's procedures (balms_det/engine/lazy.py) ------------------------------------------
train.balms = dict(
    trainable_params=[],
    meta=dict(enabled=False),
    # [[name, annotation_json, image_root], ...]: your files for TRAIN and TEST above
    datasets=[],
    allow_frozen_random_init=False,
)
