"""The ROI head (importing this package registers BalmsROIHeads with Detectron2)."""

from .roi_heads import BalmsFastRCNNOutputLayers, BalmsROIHeads  # noqa: F401
