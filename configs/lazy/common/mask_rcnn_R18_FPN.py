"""Mask R-CNN R18-FPN trained from scratch, sized for a CPU: R18 (BasicBlock, stem 32, BatchNorm
everywhere: no pretrained weights), FPN of 64 channels, small proposal and ROI budgets. The
model of configs/synthetic/Base-Synthetic-R18.yaml and configs/own_data/cpu_r18.yaml as a
LazyConfig ``model``; the configs that import it set the anchors, the pixel statistics, the
number of classes and the box predictor.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

bottom_up = model.backbone.bottom_up
bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=32, norm="BN")
bottom_up.stages = [
    L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        stride_per_block=[stride, 1],
        in_channels=c_in,
        out_channels=c_out,
        norm="BN",
    )
    for stride, c_in, c_out in [(1, 32, 64), (2, 64, 128), (2, 128, 256), (2, 256, 512)]
]
bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.pre_nms_topk = (600, 300)
model.proposal_generator.post_nms_topk = (200, 100)
model.proposal_generator.batch_size_per_image = 128
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [64, 64, 64]  # 2 convolutions + the upsampling
