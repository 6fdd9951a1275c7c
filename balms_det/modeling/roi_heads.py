"""The balms-det ROI head: Detectron2's StandardROIHeads with a long-tail-aware box predictor.

``BalmsROIHeads`` changes one thing of ``StandardROIHeads``: its box predictor is a
``BalmsFastRCNNOutputLayers``, whose classification loss is chosen by
``MODEL.ROI_BOX_HEAD.BALMS.LOSS``. Box regression, proposal sampling, the mask head and
inference stay Detectron2's.

Classifier layouts:
* softmax family (``softmax``, ``balanced_softmax``, ``label_over_smooth``): ``cls_score`` has
  K+1 outputs, background last (Detectron2's layout).
* sigmoid family (``sigmoid``, ``balanced_sigmoid``): ``cls_score`` has K outputs (the published
  BALMS layout, no background logit); ``forward`` appends a constant zero background column so
  that Detectron2's statistics and inference code see K+1 columns, and ``predict_probs`` reports
  sigmoid scores with a zero background score.
"""

import logging
import math

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from .. import losses as L
from ..class_counts import class_counts_from_cfg
from ..config import LOSSES, SIGMOID_LOSSES

__all__ = [
    "BalmsFastRCNNOutputLayers",
    "BalmsROIHeads",
    "class_roi_weights",
    "convert_classifier_layout",
]

logger = logging.getLogger(__name__)

_NEEDS_COUNTS = ("balanced_softmax", "balanced_sigmoid")
_GROUPS = ("r", "c", "f")


def class_roi_weights(gt_classes, class_weights, num_classes, normalize=True):
    """Per-ROI weights from per-foreground-class weights (differentiable in ``class_weights``).

    A foreground ROI of class ``c`` gets ``class_weights[c]``, a background ROI (label K) gets 1.
    With ``normalize`` the foreground weights are divided by their mean over the foreground ROIs
    of the batch (mean foreground weight 1; the Meta Reweigher's published normalisation);
    a batch without foreground ROIs gets all ones.

    Args:
        gt_classes: (R,) labels in [0, K], K = ``num_classes`` = background.
        class_weights: (K,) weights.
        num_classes: K.
        normalize (bool): renormalise the foreground weights of the batch to mean 1.

    Returns:
        (R,) tensor in the dtype of ``class_weights``.
    """
    w = L.expand_class_weights(gt_classes, class_weights, num_classes)
    if not normalize:
        return w
    fg = gt_classes < num_classes
    n_fg = int(fg.sum())
    if n_fg == 0:
        return torch.ones_like(w)
    scale = n_fg / (w * fg.to(w.dtype)).sum()
    return torch.where(fg, w * scale, torch.ones_like(w))


class _HookSlot:
    """Holds a callback set by a training hook. ``copy.deepcopy`` and pickling of the model drop
    it (a copied or saved model must not drag the trainer along)."""

    __slots__ = ("fn",)

    def __init__(self, fn=None):
        self.fn = fn

    def __deepcopy__(self, memo):
        return _HookSlot()

    def __reduce__(self):
        return (_HookSlot, ())


class BalmsFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` whose classification loss corrects for a long-tailed prior.

    Buffers (saved with the model): ``class_counts`` (K,) the prior counts, ``num_train_images``
    (), ``class_image_counts`` (K,) training image counts (frequency groups for diagnostics), and
    ``class_weights`` (K,) per-class loss weights (all 1 unless the Meta Reweigher sets them).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        loss="softmax",
        class_counts=None,
        num_train_images=0,
        class_image_counts=None,
        tau=1.0,
        posthoc_tau=0.0,
        los_delta=0.9,
        los_foreground_only=False,
        prior_prob=0.001,
        min_count=1.0,
        class_names=None,
        diagnostics_period=0,
        normalize_class_weights=True,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as ``FastRCNNOutputLayers``.
            loss (str): one of ``balms_det.config.LOSSES``.
            class_counts (sequence of K numbers): prior counts (image or instance counts);
                required by the balanced losses.
            num_train_images (int): number of training images (balanced_sigmoid's prior).
            class_image_counts (sequence of K numbers): training image counts, used for the
                frequency-group diagnostics; defaults to ``class_counts``.
            tau (float): prior exponent of balanced softmax.
            posthoc_tau (float): inference-time logit adjustment of the softmax family: the
                foreground logits minus ``posthoc_tau * log(K * n_j / sum n)`` (needs
                ``class_counts``); 0 = off.
            los_delta (float): Label Over-Smoothing strength.
            los_foreground_only (bool): smooth foreground ROIs over the foreground classes
                only, background ROIs one-hot (see ``losses.label_over_smooth_loss``).
            prior_prob (float): initial foreground probability of sigmoid classifiers.
            min_count (float): counts are clamped to at least this value.
            class_names (list[str]): names used in warnings.
            diagnostics_period (int): log per-group diagnostics every this many iterations.
            normalize_class_weights (bool): renormalise the ``class_weights`` of the foreground
                ROIs of a batch to mean 1 (``BALMS.META.NORMALIZE``); see ``roi_weights``.
        """
        super().__init__(input_shape, **kwargs)
        if loss not in LOSSES:
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.BALMS.LOSS '{loss}'; choose one of {list(LOSSES)}"
            )
        if loss != "softmax" and (self.use_sigmoid_ce or self.use_fed_loss):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.LOSS '{loss}' replaces the classification loss: "
                "leave MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE and USE_FED_LOSS off (they apply to "
                "LOSS 'softmax', Detectron2's stock loss)"
            )
        K = self.num_classes
        if loss in _NEEDS_COUNTS and class_counts is None:
            raise ValueError(f"LOSS '{loss}' needs class_counts of length {K}")
        if posthoc_tau:
            if loss in SIGMOID_LOSSES or self.use_sigmoid_ce or self.use_fed_loss:
                raise ValueError(
                    "MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU adjusts softmax logits: it needs a "
                    f"softmax-family LOSS (got '{loss}') without Detectron2's USE_SIGMOID_CE / "
                    "USE_FED_LOSS"
                )
            if class_counts is None:
                raise ValueError(f"POSTHOC_TAU needs class_counts of length {K}")
        counts = (
            torch.ones(K)
            if class_counts is None
            else torch.as_tensor(class_counts, dtype=torch.float32).flatten()
        )
        if counts.numel() != K:
            raise ValueError(
                f"class_counts has {counts.numel()} entries but the model has {K} classes "
                "(MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        low = (counts < min_count).nonzero().flatten().tolist()
        if low and loss in _NEEDS_COUNTS:
            names = [class_names[i] if class_names else str(i) for i in low]
            logger.warning(
                "%d classes have fewer than %g training samples and are clamped to %g in the "
                "prior: %s",
                len(low),
                min_count,
                min_count,
                ", ".join(names[:50]),
            )
        image_counts = (
            counts
            if class_image_counts is None
            else torch.as_tensor(class_image_counts, dtype=torch.float32)
        )
        self.loss_name = loss
        self.tau = tau
        self.posthoc_tau = float(posthoc_tau)
        self.los_delta = los_delta
        self.los_foreground_only = bool(los_foreground_only)
        self.min_count = min_count
        self.diagnostics_period = diagnostics_period
        self.register_buffer("class_counts", counts)
        self.register_buffer("num_train_images", torch.tensor(float(num_train_images)))
        self.register_buffer("class_image_counts", image_counts)
        self.register_buffer("class_weights", torch.ones(K))
        self.normalize_class_weights = bool(normalize_class_weights)
        # Detectron2's own USE_SIGMOID_CE flag (use_sigmoid_ce is also set below to route our
        # losses, and by enable_class_weights for LOSS 'softmax')
        self._stock_sigmoid_ce = bool(self.use_sigmoid_ce)
        # Meta Reweigher hand-over: when a hook sets the slot, forward() keeps the (detached)
        # box-head features of the training batch and the classification loss calls the hook
        # with them and the labels before it reads class_weights.
        self._roi_feature_hook = _HookSlot()
        self._roi_features = None
        if loss in SIGMOID_LOSSES:
            # K logits, no background column; bias set to the prior foreground probability
            self.cls_score = nn.Linear(self.cls_score.in_features, K)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        if loss != "softmax":
            # Detectron2's losses() routes classification through sigmoid_cross_entropy_loss
            # when this flag is set; that method is overridden below to dispatch to our losses,
            # so box regression and the statistics stay Detectron2's own code.
            self.use_sigmoid_ce = True

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        b = cfg.MODEL.ROI_BOX_HEAD.BALMS
        ret.update(
            loss=b.LOSS,
            tau=b.TAU,
            posthoc_tau=b.POSTHOC_TAU,
            los_delta=b.LOS_DELTA,
            los_foreground_only=b.LOS_FOREGROUND_ONLY,
            prior_prob=b.PRIOR_PROB,
            min_count=b.MIN_COUNT,
            diagnostics_period=b.DIAGNOSTICS_PERIOD,
            normalize_class_weights=cfg.BALMS.META.NORMALIZE,
        )
        needs_counts = b.LOSS in _NEEDS_COUNTS or b.POSTHOC_TAU != 0
        if needs_counts or (b.DIAGNOSTICS_PERIOD > 0 and cfg.DATASETS.TRAIN):
            try:
                counts = class_counts_from_cfg(cfg)
            except FileNotFoundError as e:
                if b.CAT_INFO:  # an explicitly named file must exist
                    raise
                # the training data is not on this machine (evaluation of a saved model, or a
                # training run that will stop at its data loader naming the missing files)
                if needs_counts:
                    logger.warning(
                        "Class counts unavailable (%s): the predictor starts with counts of 1 "
                        "and relies on the checkpoint's class_counts buffer",
                        e,
                    )
                    ret["class_counts"] = [1.0] * cfg.MODEL.ROI_HEADS.NUM_CLASSES
                return ret
            ret.update(
                class_counts=counts.get(b.COUNT_TYPE),
                class_image_counts=counts.image_count,
                num_train_images=counts.num_images,
                class_names=counts.names,
            )
        return ret

    @property
    def sigmoid_layout(self):
        return self.loss_name in SIGMOID_LOSSES

    def forward(self, x):
        if self.training and self._roi_feature_hook.fn is not None:
            self._roi_features = (x.flatten(1) if x.dim() > 2 else x).detach()
        scores, proposal_deltas = super().forward(x)
        if self.sigmoid_layout:
            scores = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
        return scores, proposal_deltas

    def roi_weights(self, gt_classes):
        """Per-ROI weights from ``class_weights`` (None when they are all 1, or all equal and
        normalised); see :func:`class_roi_weights`."""
        w = self.class_weights
        trivial = (w == 1).all()
        if self.normalize_class_weights:
            trivial = trivial | (w == w[0]).all()
        if bool(trivial):  # one device sync
            return None
        return class_roi_weights(gt_classes, w, self.num_classes, self.normalize_class_weights)

    def set_roi_feature_hook(self, fn):
        """Register ``fn(features, gt_classes)`` (the Meta Reweigher), or None to remove it.

        In training, the classification loss calls it with the detached box-head features
        (R, D) of the batch and their labels (R,), before reading ``class_weights``.
        """
        self._roi_feature_hook.fn = fn
        self._roi_features = None

    def enable_class_weights(self):
        """Make the classification loss take ``class_weights`` (the Meta Reweigher calls this).

        Every LOSS but 'softmax' already does. LOSS 'softmax' is routed through
        ``losses.softmax_loss`` (same cross-entropy, with weights), unless Detectron2's
        USE_SIGMOID_CE / USE_FED_LOSS are on: their loss cannot take weights (ValueError).
        """
        if self.loss_name != "softmax":
            return
        if self._stock_sigmoid_ce or self.use_fed_loss:
            raise ValueError(
                "BALMS.META.ENABLED needs a classification loss that takes class weights: "
                "MODEL.ROI_BOX_HEAD.BALMS.LOSS 'softmax' with Detectron2's USE_SIGMOID_CE / "
                "USE_FED_LOSS cannot; turn those off or choose another BALMS.LOSS "
                "(balanced_softmax, sigmoid, balanced_sigmoid, label_over_smooth)"
            )
        self.use_sigmoid_ce = True  # routes losses() through sigmoid_cross_entropy_loss

    def sigmoid_cross_entropy_loss(self, pred_class_logits, gt_classes):
        """Classification loss of every LOSS but 'softmax' (see the note in ``__init__``), and
        of 'softmax' once ``enable_class_weights`` routed it here.

        Args:
            pred_class_logits: (R, K+1), the background column last (a constant zero column in
                the sigmoid layout).
            gt_classes: (R,) labels in [0, K].
        """
        if self.loss_name == "softmax" and self._stock_sigmoid_ce:
            return super().sigmoid_cross_entropy_loss(pred_class_logits, gt_classes)
        self._log_diagnostics(pred_class_logits, gt_classes)
        features, self._roi_features = self._roi_features, None
        hook = self._roi_feature_hook.fn
        if hook is not None and features is not None and self.training:
            hook(features, gt_classes)  # may update class_weights (Meta Reweigher step)
        weights = self.roi_weights(gt_classes)
        return self.classification_loss(pred_class_logits, gt_classes, weights=weights)

    def classification_loss(self, logits, gt_classes, weights=None, class_weights=None):
        """The configured loss on (R, K+1) logits (background last)."""
        name = self.loss_name
        if name == "softmax":
            return L.softmax_loss(logits, gt_classes, weights=weights, class_weights=class_weights)
        if name == "balanced_softmax":
            return L.balanced_softmax_loss(
                logits,
                gt_classes,
                self.class_counts,
                tau=self.tau,
                min_count=self.min_count,
                weights=weights,
                class_weights=class_weights,
            )
        if name == "label_over_smooth":
            return L.label_over_smooth_loss(
                logits,
                gt_classes,
                self.los_delta,
                weights=weights,
                class_weights=class_weights,
                foreground_only=self.los_foreground_only,
            )
        fg_logits = logits[:, :-1]
        if name == "sigmoid":
            return L.sigmoid_loss(
                fg_logits, gt_classes, weights=weights, class_weights=class_weights
            )
        return L.balanced_sigmoid_loss(
            fg_logits,
            gt_classes,
            self.class_counts,
            self.num_train_images,
            min_count=self.min_count,
            weights=weights,
            class_weights=class_weights,
        )

    def posthoc_adjust(self, scores):
        """(R, K+1) softmax-layout logits with ``posthoc_tau`` times the balanced-softmax shift
        subtracted from the K foreground columns (the background column is kept)."""
        shift = L.balanced_softmax_shift(self.class_counts, self.posthoc_tau, self.min_count)
        shift = torch.cat([shift, shift.new_zeros(1)]).to(scores)
        return scores - shift

    def predict_probs(self, predictions, proposals):
        if self.posthoc_tau:
            scores, deltas = predictions
            predictions = (self.posthoc_adjust(scores), deltas)
        if self.loss_name == "softmax" and (self._stock_sigmoid_ce or not self.use_sigmoid_ce):
            return super().predict_probs(predictions, proposals)
        scores, _ = predictions
        num_inst_per_image = [len(p) for p in proposals]
        if self.sigmoid_layout:
            probs = torch.sigmoid(scores)
            probs[:, -1] = 0.0
        else:
            probs = F.softmax(scores, dim=-1)
        return probs.split(num_inst_per_image, dim=0)

    @torch.no_grad()
    def _log_diagnostics(self, logits, gt_classes):
        if self.diagnostics_period <= 0:
            return
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a trainer
            return
        if storage.iter % self.diagnostics_period:
            return
        fg = gt_classes < self.num_classes
        if not fg.any():
            return
        if self.sigmoid_layout:
            probs = torch.sigmoid(logits[fg, :-1])
        else:
            probs = F.softmax(logits[fg], dim=-1)
        labels = gt_classes[fg]
        true_score = probs.gather(1, labels[:, None])[:, 0]
        counts = self.class_image_counts[labels]
        group = (counts > 10).long() + (counts > 100).long()
        for g, name in enumerate(_GROUPS):
            sel = group == g
            if sel.any():
                storage.put_scalar(f"balms/fg_score_{name}", true_score[sel].mean().item())


def convert_classifier_layout(state_dict, predictor, prefix="roi_heads.box_predictor."):
    """Adapt a checkpoint's ``cls_score`` to the predictor's layout, in place.

    A softmax-layout classifier (K+1 rows) loaded into a sigmoid-layout predictor (K rows) loses
    its background row; a sigmoid-layout one (K rows) loaded into a softmax-layout predictor gets
    a zero background row. Returns True when something was converted.
    """
    wkey, bkey = prefix + "cls_score.weight", prefix + "cls_score.bias"
    if wkey not in state_dict:
        return False
    w, b = state_dict[wkey], state_dict.get(bkey)
    want = predictor.cls_score.weight.shape[0]
    have = w.shape[0]
    if have == want:
        return False
    if have == want + 1:
        state_dict[wkey] = w[:-1]
        if b is not None:
            state_dict[bkey] = b[:-1]
        logger.info("Dropped the background row of %s (softmax -> sigmoid layout)", wkey)
        return True
    if have + 1 == want:
        w = torch.as_tensor(w)
        state_dict[wkey] = torch.cat([w, w.new_zeros(1, w.shape[1])])
        if b is not None:
            b = torch.as_tensor(b)
            state_dict[bkey] = torch.cat([b, b.new_zeros(1)])
        logger.info("Added a zero background row to %s (sigmoid -> softmax layout)", wkey)
        return True
    raise ValueError(
        f"Checkpoint's {wkey} has {have} rows; the model's classifier has {want}: the number of "
        "classes differs"
    )


@ROI_HEADS_REGISTRY.register()
class BalmsROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box predictor is ``BalmsFastRCNNOutputLayers``."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = BalmsFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
