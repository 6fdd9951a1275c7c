"""Mask R-CNN R18-FPN from scratch on the tiny synthetic long-tailed set (12 classes, 96 px),
balanced softmax head: the LazyConfig twin of configs/synthetic/tiny.yaml (same model family
as configs/synthetic/Base-Synthetic-R18.yaml), sized for a CPU smoke run.

    python tools/lazy_train_net.py --config-file configs/lazy/mask_rcnn_R18_FPN_synthetic_tiny.py
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from balms_det.class_counts import lazy_class_counts
from balms_det.data.training_set import training_set
from balms_det.evaluation.lvis_evaluator import BalmsLVISEvaluator
from balms_det.modeling.roi_heads import BalmsFastRCNNOutputLayers

from .common.mask_rcnn_R18_FPN import model

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train

# -- data: the tiny synthetic set (registered by balms_det.data.datasets on import) --------------
# read once (balms_det/data/training_set.py): the loader, the counts and the meta set share it
dataloader.train.dataset = L(training_set)(names="synth_lt_tiny_train", filter_empty=True)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(96,), max_size=96, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "synth_lt_tiny_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.test.num_workers = 0
dataloader.evaluator = L(BalmsLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    max_dets_per_image=300,
    train_dataset_names=["${dataloader.train.dataset.names}"],
)

# -- model: R18-FPN from scratch (configs/lazy/common/mask_rcnn_R18_FPN.py), 12 classes ---------
model.proposal_generator.anchor_generator.sizes = [[12], [24], [48], [96], [160]]
model.roi_heads.num_classes = 12
model.pixel_mean = [110.0, 110.0, 110.0]
model.pixel_std = [50.0, 50.0, 50.0]

# -- the balms head: balanced softmax with the training set's image counts, resolved when the
# model is instantiated (read from the dataset once and cached in its metadata) --------------
model.roi_heads.box_predictor = L(BalmsFastRCNNOutputLayers)(
    input_shape=ShapeSpec(channels=256),
    test_score_thresh=0.0001,
    test_topk_per_image=100,
    box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
    num_classes="${..num_classes}",
    loss="balanced_softmax",
    class_counts=L(lazy_class_counts)(
        dataset_names="${dataloader.train.dataset.names}", count_type="image_count"
    ),
    class_image_counts=L(lazy_class_counts)(dataset_names="${dataloader.train.dataset.names}"),
    diagnostics_period=20,
)

# -- schedule -----------------------------------------------------------------------------------
optimizer.lr = 0.02
train.max_iter = 2
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0], milestones=[], num_updates="${train.max_iter}"
    ),
    warmup_length=0.5,  # one of two iterations
    warmup_factor=0.001,
)
train.update(
    output_dir="output/lazy_synthetic_tiny",
    init_checkpoint="",
    device="cpu",
    seed=0,
    eval_period=0,  # evaluate after training only
    log_period=20,
    checkpointer=dict(period=1000, max_to_keep=2),
)

# -- balms-det's procedures (balms_det/engine/lazy.py): decoupled training and the Meta Reweigher
train.balms = dict(
    # regexes of the parameters to train, the rest frozen; [] = everything (stage 2: cls_score)
    trainable_params=[],
    # the Meta Reweigher: `enabled` + keyword arguments of MetaReweigher (meta set, mapper,
    # seed, AMP and workers default to the training loader's / train.*)
    meta=dict(
        enabled=False,
        lr=0.01,
        period=1,
        meta_batch_size=2,
        weight_fn="sigmoid",
        init=0.0,
        meta_loss="plain",
        cache_features=False,
    ),
)
