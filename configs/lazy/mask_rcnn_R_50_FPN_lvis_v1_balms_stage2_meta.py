"""Decoupled stage 2 on LVIS v1 (the published BALMS schedule's second stage): from the model of
mask_rcnn_R_50_FPN_1x_lvis_v1_balms.py, re-train only the classifier (cls_score) with balanced
softmax and the Meta Reweigher, 22k iterations, lr 0.02, steps at 11k / 18k (as
configs/lvis/stage2_balanced_softmax_r50.yaml, plus BALMS.META of stage2_balms_meta_r50.yaml).

    python tools/lazy_train_net.py --num-gpus 8 \
        --config-file configs/lazy/mask_rcnn_R_50_FPN_lvis_v1_balms_stage2_meta.py
"""

from .mask_rcnn_R_50_FPN_1x_lvis_v1_balms import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

train.init_checkpoint = "output/lazy_lvis_v1_balms_r50/model_final.pth"
train.output_dir = "output/lazy_lvis_v1_balms_r50_stage2_meta"
train.max_iter = 22000
optimizer.lr = 0.02
lr_multiplier.scheduler.milestones = [11000, 18000, 22000]
lr_multiplier.warmup_length = 1000 / train.max_iter

train.balms.trainable_params = ["cls_score"]
# 8 meta images per step (1 per GPU on 8 GPUs); features before the classifier are frozen, so
# cache_features=True would be allowed, but at 512 ROIs x 1024 floats (2 MB) per distinct meta
# image it is left off for LVIS
train.balms.meta.enabled = True
train.balms.meta.meta_batch_size = 8
