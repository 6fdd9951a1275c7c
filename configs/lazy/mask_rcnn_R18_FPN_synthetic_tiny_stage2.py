"""Decoupled stage 2 on the tiny synthetic set: from the stage-1 model of
mask_rcnn_R18_FPN_synthetic_tiny.py, re-train only the classifier (cls_score) with the balanced
softmax loss and the Meta Reweigher (meta ROI features cached: everything before the
classifier is frozen).

    python tools/lazy_train_net.py --config-file configs/lazy/mask_rcnn_R18_FPN_synthetic_tiny.py
    python tools/lazy_train_net.py \
        --config-file configs/lazy/mask_rcnn_R18_FPN_synthetic_tiny_stage2.py
"""

from .mask_rcnn_R18_FPN_synthetic_tiny import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = "output/lazy_synthetic_tiny/model_final.pth"
train.output_dir = "output/lazy_synthetic_tiny_stage2"
train.balms.trainable_params = ["cls_score"]
train.balms.meta.enabled = True
train.balms.meta.cache_features = True
