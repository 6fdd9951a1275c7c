"""Mask R-CNN R50-FPN on LVIS v1 with the balms head (balanced softmax), 1x schedule: the
LazyConfig twin of configs/Base-LVIS-R50.yaml with MODEL.ROI_BOX_HEAD.BALMS.LOSS
"balanced_softmax", in the style of Detectron2's Python configs (its COCO R50-FPN 1x config
with the LVIS changes of its ViTDet LVIS configs).

The class counts are not in this file: ``lazy_class_counts`` reads them when the model is
instantiated, from Detectron2's builtin LVIS v1 metadata (``class_image_count``: no file read).
The training set is read once (``training_set``, shared by the loader, the repeat factors of
its sampler and the Meta Reweigher's meta set under ``tools/lazy_train_net.py``), where
Detectron2's own ``L(get_detection_dataset_dicts)`` with an interpolated repeat-factor node
would read the annotation file twice.

    python tools/lazy_train_net.py --num-gpus 8 \
        --config-file configs/lazy/mask_rcnn_R_50_FPN_1x_lvis_v1_balms.py
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from balms_det.class_counts import lazy_class_counts
from balms_det.data.training_set import training_repeat_factors, training_set
from balms_det.evaluation.lvis_evaluator import BalmsLVISEvaluator
from balms_det.modeling.roi_heads import BalmsFastRCNNOutputLayers

_coco = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
model, dataloader, optimizer, lr_multiplier, train = (
    _coco.model,
    _coco.dataloader,
    _coco.optimizer,
    _coco.lr_multiplier,
    _coco.train,
)

# -- data: LVIS v1 (Detectron2's builtin registration), repeat-factor sampling at t = 0.001 ----
dataloader.train.dataset = L(training_set)(names="lvis_v1_train", filter_empty=True)
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    # Detectron2's repeat factors, from the training set's class index (no second pass)
    repeat_factors=L(training_repeat_factors)(
        dataset="${dataloader.train.dataset}", repeat_thresh=0.001
    )
)
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(BalmsLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    max_dets_per_image=300,
)

# -- the balms head -----------------------------------------------------------------------------
model.roi_heads.num_classes = 1203
model.roi_heads.box_predictor = L(BalmsFastRCNNOutputLayers)(
    input_shape=ShapeSpec(channels=1024),
    box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
    num_classes="${..num_classes}",
    test_score_thresh=0.0001,
    test_topk_per_image=300,  # LVIS allows up to 300 detections per image
    loss="balanced_softmax",
    # the K counts of the prior, evaluated at instantiate time from the training set's metadata
    class_counts=L(lazy_class_counts)(
        dataset_names="${dataloader.train.dataset.names}", count_type="image_count"
    ),
    # image counts of the per-frequency-group diagnostics (balms/fg_score_{r,c,f})
    class_image_counts=L(lazy_class_counts)(dataset_names="${dataloader.train.dataset.names}"),
    diagnostics_period=20,
)

# -- schedule: 90k iterations of 16 images (Detectron2's 1x), ImageNet-pretrained R50 ----------
train.output_dir = "output/lazy_lvis_v1_balms_r50"
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
train.eval_period = 0  # evaluate after training only

# -- balms-det's procedures (balms_det/engine/lazy.py) --------------------------------------------
train.balms = dict(
    # decoupled stage 2: ["cls_score"] (see mask_rcnn_R_50_FPN_lvis_v1_balms_stage2_meta.py)
    trainable_params=[],
    # the Meta Reweigher: `enabled` + keyword arguments of MetaReweigher; the meta set is the
    # training set drawn class-balanced, with the training mapper minus masks
    meta=dict(enabled=False, lr=0.01, period=1, meta_batch_size=8, meta_loss="plain"),
    # LVIS's own annotation files: not checked by the input rules (about half a read at 100k
    # images; the yacs LVIS configs alike)
    check_annotations=False,
)
