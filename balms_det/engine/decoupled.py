"""Decoupled training: train only the parameters that match given name patterns.

Stage 2 of the published schedule re-trains the classifier (``cls_score``) of a stage-1 detector
with everything else frozen. Frozen parameters get ``requires_grad=False`` (so Detectron2's
optimizer skips them) and the normalisation layers of frozen modules stay in eval mode: a hook
re-applies that before every step, because evaluation (``inference_context``) switches the whole
model back to train mode.
"""

import logging
import re

from detectron2.engine import HookBase
from torch import nn

__all__ = ["freeze_except", "frozen_norm_layers", "FrozenNormHook"]

logger = logging.getLogger(__name__)

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def freeze_except(model, patterns, *, key="BALMS.TRAINABLE_PARAMS"):
    """Freeze every parameter whose name matches none of ``patterns`` (``re.search``).

    Args:
        model: the module (before the optimizer is built: Detectron2's optimizer builders skip
            frozen parameters).
        patterns (list[str] or str): regular expressions; empty leaves the model as it is.
        key (str): how errors name the setting (``train.balms.trainable_params`` in
            ``tools/lazy_train_net.py``).

    Returns:
        list[str]: names of the parameters left trainable.

    Raises:
        ValueError: when a pattern matches no parameter (naming it and ``key``).
    """
    if isinstance(patterns, str):  # one pattern, not a sequence of characters
        patterns = [patterns]
    if not patterns:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    compiled = [(p, re.compile(p)) for p in patterns]
    used = set()
    trainable = []
    for name, param in model.named_parameters():
        hits = [p for p, rx in compiled if rx.search(name)]
        used.update(hits)
        param.requires_grad_(bool(hits))
        if hits:
            trainable.append(name)
    unused = [p for p, _ in compiled if p not in used]
    if unused:
        raise ValueError(
            f"{key} patterns {unused} match no parameter of the model "
            f"(e.g. '{next(iter(dict(model.named_parameters())))}')"
        )
    logger.info(
        "Decoupled training: %d parameter tensors trainable (%s), the rest frozen",
        len(trainable),
        ", ".join(trainable[:8]) + (" ..." if len(trainable) > 8 else ""),
    )
    return trainable


def frozen_norm_layers(model):
    """Normalisation modules none of whose parameters is trainable."""
    out = []
    for m in model.modules():
        if isinstance(m, _NORMS):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                out.append(m)
            elif not params and isinstance(m, nn.modules.batchnorm._BatchNorm):
                out.append(m)  # affine-free BN: its running stats must not move either
    return out


class FrozenNormHook(HookBase):
    """Keep the normalisation layers of frozen modules in eval mode during training."""

    def __init__(self, model):
        self._layers = frozen_norm_layers(model)

    def before_step(self):
        for m in self._layers:
            m.eval()
