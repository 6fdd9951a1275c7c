"""The balms-det ROI head: Detectron2's StandardROIHeads with a long-tail-aware box predictor.

``BalmsROIHeads`` changes one thing of ``StandardROIHeads``: its box predictor is a
``BalmsFastRCNNOutputLayers``, whose classification loss is chosen by
``MODEL.ROI_BOX_HEAD.BALMS.LOSS`` in one place (:meth:`BalmsFastRCNNOutputLayers.losses`).
Box regression, proposal sampling, the mask head and inference stay Detectron2's.

One classifier layout for every loss: ``cls_score`` has Detectron2's K+1 outputs, background
last. The sigmoid family (``sigmoid``, ``balanced_sigmoid``, ``eqlv2``) ignores the background
column, as Detectron2's own ``USE_SIGMOID_CE`` does; ``seesaw`` reads it as the objectness
(background vs foreground) logit. So any checkpoint of the head loads into the head with any
other loss with Detectron2's plain ``DetectionCheckpointer``. The formulas are in
``docs/METHODS.md``.

No host-device synchronisation per training step: the loss path reads no tensor value into
Python (value checks are asserted on the device, see ``balms_det.losses``); the per-group
diagnostics read their three means once per ``diagnostics_period``.

Extension point (what the Meta Reweigher hook uses; the model never calls a hook):

* ``class_weights`` (K,): a buffer of per-class loss weights that anyone may set (all ones by
  default); a foreground ROI of class c is weighted ``class_weights[c]`` (renormalised to mean 1
  over the foreground ROIs of the batch when ``normalize_class_weights``), background ROIs 1.
  Set them with :meth:`BalmsFastRCNNOutputLayers.set_class_weights` (no read-back); a buffer
  changed otherwise is read once (one host-device sync) at the next training step.
* ``record_train_rois`` (bool, default False): when set, every training forward keeps the
  detached box-head features and labels of its ROIs in ``last_train_features`` (R, D) and
  ``last_train_labels`` (R,) for readers (the features through a forward hook the predictor
  registers on itself, so its ``forward`` stays Detectron2's and compiles with TorchScript).

Serving with names: the predictor's ``dataset_meta`` buffer carries the training set's class
names and where the class counts came from (mmdetection keeps the same as its checkpoints'
``dataset_meta``), so a checkpoint names its classes wherever it is loaded, and a model that
loads it gives the names to the ``MetadataCatalog`` entries that Detectron2's
``DefaultPredictor`` and ``Visualizer`` read (``serve_metadata``: the yacs route's
``DATASETS.TEST``).
"""

import json
import logging
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import cat, cross_entropy
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .. import losses as L
from ..class_counts import CountSource
from ..distributed import all_reduce_sum
from ..longtail import COMMON_MAX_IMAGES, GROUPS, RARE_MAX_IMAGES
from ..utils import format_examples
from .normed_linear import NormedLinear

__all__ = [
    "LOSS_FAMILIES",
    "NEEDS_COUNTS",
    "BalmsFastRCNNOutputLayers",
    "BalmsROIHeads",
    "class_roi_weights",
    "decode_dataset_meta",
    "encode_dataset_meta",
    "resolve_class_counts",
]

logger = logging.getLogger(__name__)

# LOSS -> how its logits are read: "softmax" (softmax over K+1 columns), "sigmoid" (sigmoid of
# the K foreground columns, background column ignored), "seesaw" (softmax over the K foreground
# columns times the objectness of column K).
LOSS_FAMILIES = {
    "softmax": "softmax",
    "balanced_softmax": "softmax",
    "label_over_smooth": "softmax",
    "sigmoid": "sigmoid",
    "balanced_sigmoid": "sigmoid",
    "eqlv2": "sigmoid",
    "seesaw": "seesaw",
}
# losses whose prior comes from the training class counts
NEEDS_COUNTS = ("balanced_softmax", "balanced_sigmoid")
_COUNT_BUFFERS = ("class_counts", "num_train_images", "class_image_counts")
# where the predictor's counts came from: the constructor, the count source (training data),
# a loaded checkpoint, or nowhere yet (buffers hold the placeholder: counts 1, 0 images)
_GIVEN, _DATA, _CHECKPOINT, _NONE = "given", "data", "checkpoint", "none"
# The dataset_meta buffer: UTF-8 JSON ({"thing_classes": [...], "count_source": "..."}),
# zero-padded to a size fixed by K. A fixed shape, because Detectron2's checkpointer skips a
# tensor whose shape differs from the model's: so a model without names loads a checkpoint's.
DATASET_META_BYTES_PER_CLASS = 128
DATASET_META_EXTRA_BYTES = 512


def encode_dataset_meta(meta, num_classes):
    """``meta`` (a JSON-serialisable dict) as the (K * 128 + 512,) uint8 ``dataset_meta``
    buffer of a K-class predictor; the count source is shortened, and the class names dropped
    (with a warning), when they do not fit."""
    size = num_classes * DATASET_META_BYTES_PER_CLASS + DATASET_META_EXTRA_BYTES
    meta = {k: v for k, v in meta.items() if v is not None}
    blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    if len(blob) > size and len(meta.get("count_source", "")) > 200:
        meta["count_source"] = meta["count_source"][:200] + "..."
        blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    if len(blob) > size:
        logger.warning(
            "The class names (%d bytes as JSON) do not fit the %d bytes a %d-class checkpoint "
            "keeps for them: they are not saved",
            len(blob),
            size,
            num_classes,
        )
        meta.pop("thing_classes", None)
        blob = json.dumps(meta, ensure_ascii=False).encode("utf-8")[:size]
    out = torch.zeros(size, dtype=torch.uint8)
    out[: len(blob)] = torch.tensor(list(blob), dtype=torch.uint8)
    return out


def decode_dataset_meta(tensor):
    """The dict of a ``dataset_meta`` buffer (``{}`` for an empty or unreadable one)."""
    data = bytes(tensor.detach().cpu().to(torch.uint8).tolist()).rstrip(b"\0")
    if not data:
        return {}
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("A checkpoint's dataset_meta cannot be decoded: its class names are ignored")
        return {}
    return meta if isinstance(meta, dict) else {}


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
        (R,) tensor in the dtype of ``class_weights``. Computed on the device (no sync).
    """
    w = L.expand_class_weights(gt_classes, class_weights, num_classes)
    if not normalize:
        return w
    fg = gt_classes < num_classes
    n_fg = fg.sum()
    total = (w * fg.to(w.dtype)).sum()
    total = torch.where(n_fg > 0, total, torch.ones_like(total))  # no foreground: all ones
    scale = total.reciprocal() * n_fg.to(w.dtype)
    return torch.where(fg, w * scale, torch.ones_like(w))


def resolve_class_counts(model):
    """Resolve the training class counts of every ``BalmsFastRCNNOutputLayers`` of ``model``
    (what their first training step would do; see
    :meth:`BalmsFastRCNNOutputLayers.resolve_class_counts`), so that a missing source fails
    before training starts and the counts are logged; and their class names (saved in
    checkpoints). Returns the predictors."""
    found = [m for m in model.modules() if isinstance(m, BalmsFastRCNNOutputLayers)]
    for m in found:
        m.resolve_class_counts()
        m.resolve_class_names()
    return found


def _record_train_rois(
    predictor, inputs: Tuple[torch.Tensor], outputs: Tuple[torch.Tensor, torch.Tensor]
):
    """Forward hook of the predictor: the recording of ``record_train_rois`` (module doc).

    A hook, so the predictor's ``forward`` stays Detectron2's (TorchScript has no ``super()``);
    compiled into a scripted predictor, it is empty (``torch.jit.is_scripting()``)."""
    if not torch.jit.is_scripting():
        predictor._record_train_features(inputs[0])


class BalmsFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` whose classification loss corrects for a long-tailed prior.

    Buffers (saved with the model, present whatever the loss, so checkpoints load across
    losses): ``class_counts`` (K,) the prior counts, ``num_train_images`` (), ``class_image_counts``
    (K,) training image counts (frequency groups of the diagnostics), ``class_weights`` (K,)
    per-class loss weights, ``seesaw_counts`` (K,) foreground ROIs seen per class (Seesaw), and
    ``eqlv2_pos_grad`` / ``eqlv2_neg_grad`` (K,) accumulated gradient magnitudes (EQLv2).

    Counts. Given to the constructor (``class_counts=``), they are the training data's. Else a
    ``count_source`` (the yacs route: ``CountSource.from_cfg``) is resolved when they are first
    needed: at the first training step (:meth:`resolve_class_counts`, which ``BalmsTrainer``
    calls before training starts), never when the model is built, so a model builds and
    serves without its training set; at inference the counts of the loaded checkpoint serve.
    The training data's counts win over a checkpoint's. Only a training step of a loss that
    needs counts, with none to be found, is an error.

    TorchScript and tracing: ``forward`` is Detectron2's and the inference path
    (``predict_probs``, ``posthoc_adjust``, Detectron2's ``inference`` / ``predict_boxes``)
    compiles for every loss; training (``losses``) stays eager, as Detectron2's does.
    """

    # a Python property on the scripted path would be compiled (once per scripting, which
    # fails the second time): left out of TorchScript, as is the training-only weights record
    __jit_unused_properties__ = ["takes_class_weights"]
    __jit_ignored_attributes__ = ["_weights_seen"]

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        loss="softmax",
        class_counts=None,
        num_train_images=0,
        class_image_counts=None,
        class_names=None,
        tau=1.0,
        posthoc_tau=0.0,
        los_delta=0.9,
        los_foreground_only=False,
        prior_prob=0.001,
        min_count=1.0,
        diagnostics_period=0,
        normalize_class_weights=True,
        seesaw_p=0.8,
        seesaw_q=2.0,
        seesaw_eps=1e-2,
        eqlv2_gamma=12.0,
        eqlv2_mu=0.8,
        eqlv2_alpha=4.0,
        normed_classifier_tau=0.0,
        count_source=None,
        serve_metadata=(),
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as ``FastRCNNOutputLayers``.
            loss (str): a key of ``LOSS_FAMILIES``.
            class_counts (sequence of K numbers): prior counts (image or instance counts): what
                the balanced losses train with and ``posthoc_tau`` adjusts by; None: from
                ``count_source`` when needed, or a loaded checkpoint's at inference.
            num_train_images (int): number of training images (balanced_sigmoid's prior).
            class_image_counts (sequence of K numbers): training image counts, used for the
                frequency-group diagnostics; defaults to ``class_counts``.
            class_names (list[str]): the K class names (warnings; saved in checkpoints). None:
                the training set's (``count_source``), taken at the first training step.
            tau (float): prior exponent of balanced softmax.
            posthoc_tau (float): inference-time logit adjustment of the softmax family: the
                foreground logits minus ``posthoc_tau * log(K * n_j / sum n)``; 0 = off.
            los_delta (float): Label Over-Smoothing strength.
            los_foreground_only (bool): smooth foreground ROIs over the foreground classes
                only, background ROIs one-hot (see ``losses.label_over_smooth_loss``).
            prior_prob (float): initial foreground probability of the sigmoid family's
                classifier bias.
            min_count (float): counts are clamped to at least this value.
            diagnostics_period (int): log per-group diagnostics every this many iterations
                (only when training image counts are known: ``class_image_counts`` given,
                resolved from the count source, or loaded).
            normalize_class_weights (bool): renormalise the ``class_weights`` of the foreground
                ROIs of a batch to mean 1; see :func:`class_roi_weights`.
            seesaw_p, seesaw_q, seesaw_eps: Seesaw's mitigation and compensation exponents
                and its probability floor.
            eqlv2_gamma, eqlv2_mu, eqlv2_alpha: EQLv2's weighting function.
            normed_classifier_tau (float): > 0 makes ``cls_score`` a cosine classifier with this
                temperature (``NormedLinear``: same parameters, so the layout is unchanged).
            count_source (CountSource): where to find the counts when ``class_counts`` is None,
                resolved at the first training step (the yacs route sets it).
            serve_metadata (tuple[str]): ``MetadataCatalog`` names that receive a loaded
                checkpoint's class names as ``thing_classes`` when they have none (the yacs
                route: ``DATASETS.TEST``, or ``"__unused"`` when empty: what Detectron2's
                ``DefaultPredictor`` and demo read).
        """
        super().__init__(input_shape, **kwargs)
        self._check_loss(loss, posthoc_tau)
        if normed_classifier_tau > 0:
            c = self.cls_score
            self.cls_score = NormedLinear(c.in_features, c.out_features, tau=normed_classifier_tau)
        self.loss_name = loss
        self.loss_family = LOSS_FAMILIES[loss]
        self.tau = tau
        self.posthoc_tau = float(posthoc_tau)
        self.los_delta = los_delta
        self.los_foreground_only = bool(los_foreground_only)
        self.min_count = float(min_count)
        self.diagnostics_period = diagnostics_period
        self.normalize_class_weights = bool(normalize_class_weights)
        self.seesaw = dict(p=float(seesaw_p), q=float(seesaw_q), eps=float(seesaw_eps))
        self.eqlv2 = dict(gamma=float(eqlv2_gamma), mu=float(eqlv2_mu), alpha=float(eqlv2_alpha))
        self._register_state()
        self.count_source = count_source
        self._counts_state = _NONE
        self._counts_tried = False  # a quiet resolution (diagnostics only) found none
        self._group_counts = False  # class_image_counts hold real training image counts
        self.class_names = list(class_names) if class_names is not None else None
        self.serve_metadata = tuple(serve_metadata)
        self._meta_own = False  # dataset_meta holds the training side's (not a checkpoint's)
        self._dataset_meta = {}  # the buffer's content, in Python
        if class_names is not None:
            self.set_dataset_meta(thing_classes=class_names)
        if class_counts is not None:
            self._set_counts(class_counts, class_image_counts, num_train_images, class_names)
            self._counts_state = _GIVEN
            self.set_dataset_meta(count_source="class_counts= given to the predictor")
        if LOSS_FAMILIES[loss] == "sigmoid":  # foreground bias at the prior probability
            with torch.no_grad():
                self.cls_score.bias[:-1].fill_(-math.log((1 - prior_prob) / prior_prob))
        # extension point for readers (module doc)
        self.record_train_rois = False
        self.last_train_features = None
        self.last_train_labels = None
        self.register_forward_hook(_record_train_rois)

    def _check_loss(self, loss, posthoc_tau):
        if loss not in LOSS_FAMILIES:
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.BALMS.LOSS '{loss}'; choose one of "
                f"{list(LOSS_FAMILIES)}"
            )
        if loss != "softmax" and (self.use_sigmoid_ce or self.use_fed_loss):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.BALMS.LOSS '{loss}' replaces the classification loss: "
                "leave MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE and USE_FED_LOSS off (a LazyConfig's "
                "use_sigmoid_ce= / use_fed_loss=, e.g. ViTDet's LVIS configs; they apply to "
                "LOSS 'softmax', Detectron2's stock loss)"
            )
        if posthoc_tau:
            if LOSS_FAMILIES[loss] != "softmax" or self.use_sigmoid_ce or self.use_fed_loss:
                raise ValueError(
                    "MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU adjusts softmax logits: it needs a "
                    f"softmax-family LOSS (got '{loss}') without Detectron2's USE_SIGMOID_CE / "
                    "USE_FED_LOSS"
                )

    def _register_state(self):
        K = self.num_classes
        # placeholders until counts are given, resolved or loaded (separate tensors: tracing
        # rejects buffers that share memory)
        self.register_buffer("class_counts", torch.ones(K))
        self.register_buffer("num_train_images", torch.tensor(0.0))
        self.register_buffer("class_image_counts", torch.ones(K))
        self.register_buffer("class_weights", torch.ones(K))
        self._note_class_weights(True)
        # running state of Seesaw and EQLv2, float64 (counts beyond 2^24 stay exact)
        for name in ("seesaw_counts", "eqlv2_pos_grad", "eqlv2_neg_grad"):
            self.register_buffer(name, torch.zeros(K, dtype=torch.float64))
        # class names and count source, saved with the weights (module doc)
        self.register_buffer("dataset_meta", encode_dataset_meta({}, K))

    # -- class names and the count source (dataset_meta) -----------------------------------
    @torch.jit.unused
    def get_dataset_meta(self):
        """``{"thing_classes": [K names], "count_source": str}`` as far as known (from the
        training side, or from a loaded checkpoint); ``{}`` when neither said. (A Python copy
        of the ``dataset_meta`` buffer: reading it costs no host-device sync.)"""
        return dict(self._dataset_meta)

    @torch.jit.unused
    def set_dataset_meta(self, thing_classes=None, count_source=None):
        """Record the training set's class names and/or where the counts came from (saved in
        checkpoints; a loaded checkpoint's no longer replace them)."""
        meta = dict(self._dataset_meta)
        if thing_classes is not None:
            names = [str(n) for n in thing_classes]
            if len(names) != self.num_classes:
                raise ValueError(
                    f"{len(names)} class names for a predictor of {self.num_classes} classes "
                    "(MODEL.ROI_HEADS.NUM_CLASSES)"
                )
            meta["thing_classes"] = names
            self.class_names = names
        if count_source is not None:
            meta["count_source"] = str(count_source)
        with torch.no_grad():
            self.dataset_meta.copy_(encode_dataset_meta(meta, self.num_classes))
        self._dataset_meta = meta
        self._meta_own = True

    @torch.jit.unused
    def resolve_class_names(self):
        """Take the training set's class names (``thing_classes`` metadata of the count
        source's first dataset; nothing is read) unless the training side gave them. Returns
        the names (None when unknown)."""
        if not (self._meta_own and self.get_dataset_meta().get("thing_classes")):
            src = self.count_source
            names = None
            if src is not None and src.dataset_names:
                names = MetadataCatalog.get(src.dataset_names[0]).get("thing_classes", None)
            if names is not None and len(names) == self.num_classes:
                self.set_dataset_meta(thing_classes=names)
        return self.class_names

    def _load_dataset_meta(self, state_dict, key):
        """``dataset_meta`` of a checkpoint being loaded: the training side's names win (with a
        warning when the checkpoint's differ); else the checkpoint's serve, and are given to
        the ``serve_metadata`` entries that have none. A checkpoint without it (saved before
        names were kept) loads as it is."""
        own = self.dataset_meta.detach().clone()
        if key not in state_dict or tuple(state_dict[key].shape) != tuple(own.shape):
            state_dict[key] = own
            return
        loaded = decode_dataset_meta(state_dict[key])
        names = loaded.get("thing_classes")
        if self._meta_own:
            mine = self.get_dataset_meta().get("thing_classes")
            if names and mine and list(names) != list(mine):
                differ = [i for i, (a, b) in enumerate(zip(names, mine)) if a != b]
                logger.warning(
                    "The checkpoint's class names differ from the training set's in %d of %d "
                    "classes (e.g. %r in the checkpoint, %r in the training set): the training "
                    "set's are kept",
                    len(differ),
                    len(mine),
                    names[differ[0]],
                    mine[differ[0]],
                )
            state_dict[key] = own
            return
        self._dataset_meta = loaded
        if not names or len(names) != self.num_classes:
            return
        self.class_names = list(names)
        for entry in self.serve_metadata:
            meta = MetadataCatalog.get(entry)
            have = meta.get("thing_classes", None)
            if have is None:
                meta.set(thing_classes=list(names))
            elif list(have) != list(names):
                logger.warning(
                    "The checkpoint's %d class names differ from the %d thing_classes of '%s', "
                    "which keeps its own",
                    len(names),
                    len(have),
                    entry,
                )

    def _set_counts(self, class_counts, class_image_counts, num_train_images, class_names=None):
        """Copy counts into the buffers (``class_image_counts`` defaults to ``class_counts``);
        warn, naming them, about the classes the prior clamps to ``min_count``."""
        K = self.num_classes
        counts = torch.as_tensor(class_counts, dtype=torch.float32).flatten()
        if counts.numel() != K:
            raise ValueError(
                f"class_counts has {counts.numel()} entries but the model has {K} classes "
                "(MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        names = class_names or self.class_names
        low = (counts < self.min_count).nonzero().flatten().tolist()
        if low and self.loss_name in NEEDS_COUNTS:
            logger.warning(
                "%d classes have fewer than %g training samples and are clamped to %g in the "
                "prior: %s",
                len(low),
                self.min_count,
                self.min_count,
                format_examples([names[i] if names else str(i) for i in low], 50, sort=False),
            )
        image = counts if class_image_counts is None else class_image_counts
        image = torch.as_tensor(image, dtype=torch.float32).flatten()
        if image.numel() != K:
            raise ValueError(f"class_image_counts has {image.numel()} entries, not K = {K}")
        with torch.no_grad():
            self.class_counts.copy_(counts)
            self.class_image_counts.copy_(image)
            self.num_train_images.fill_(float(num_train_images))
        self._group_counts = class_image_counts is not None
        if class_names is not None:
            self.class_names = list(class_names)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint's class counts are loaded only when this predictor has none from the
        training data (then they serve inference): the counts of the data it trains on win (a
        stage-1 checkpoint of another dataset, or one saved without counts, cannot change the
        prior of stage 2). The class names likewise (:meth:`_load_dataset_meta`)."""
        self._load_dataset_meta(state_dict, prefix + "dataset_meta")
        if self._counts_state in (_GIVEN, _DATA):
            differ = []
            for name in _COUNT_BUFFERS:
                key, own = prefix + name, getattr(self, name)
                if key in state_dict and not torch.equal(state_dict[key].to(own), own):
                    differ.append(name)
                state_dict[key] = own.detach().clone()
            if differ:
                logger.info(
                    "Checkpoint's %s differ from the training data's: the data's are kept",
                    "/".join(differ),
                )
        elif prefix + "class_counts" in state_dict:
            # a checkpoint saved before any counts were known holds the placeholder (all 1)
            if not bool((state_dict[prefix + "class_counts"] == 1).all()):
                self._counts_state = _CHECKPOINT
                self._group_counts = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
            seesaw_p=b.SEESAW.P,
            seesaw_q=b.SEESAW.Q,
            seesaw_eps=b.SEESAW.EPS,
            eqlv2_gamma=b.EQLV2.GAMMA,
            eqlv2_mu=b.EQLV2.MU,
            eqlv2_alpha=b.EQLV2.ALPHA,
            normed_classifier_tau=b.NORMED_CLASSIFIER_TAU,
        )
        source = CountSource.from_cfg(cfg)
        if b.LOSS in NEEDS_COUNTS or b.POSTHOC_TAU != 0:
            source.check()  # a bad PRIOR / sampler fails at build; nothing is read here
        ret["count_source"] = source
        # what Detectron2's DefaultPredictor and demo read: DATASETS.TEST[0], or "__unused"
        ret["serve_metadata"] = tuple(cfg.DATASETS.TEST) or ("__unused",)
        return ret

    # -- class counts ----------------------------------------------------------------------
    def counts_origin(self):
        """Where the count buffers came from: "given" (constructor), "data" (resolved from the
        count source), "checkpoint" (a loaded checkpoint's) or "none" (placeholders)."""
        return self._counts_state

    def resolve_class_counts(self, required=None, what=None):
        """Fill the count buffers from the training data, once (the first training step does
        this; ``BalmsTrainer`` does it before training starts).

        Args:
            required (bool): raise ValueError, naming every place counts are looked for, when
                none can be found (default: whether the loss needs counts). Otherwise the
                count source is asked only for what costs no read of the training set, and a
                failure leaves the diagnostics off (one INFO line).
            what (str): what needs the counts, for the error (default: the loss).

        Returns:
            True when the buffers hold the training data's counts (given or resolved).
        """
        if self._counts_state in (_GIVEN, _DATA):
            return True
        if required is None:
            required = self.loss_name in NEEDS_COUNTS
        if self._counts_tried and not required:
            return False
        found, reason = None, "no count source: class_counts= was not given"
        if self.count_source is not None:
            try:
                found = self.count_source.resolve(
                    need_num_images=self.loss_name == "balanced_sigmoid", read=required
                )
                reason = "they need a read of the training set"
            except Exception as e:  # unregistered name, missing or malformed file, ...
                if required:
                    raise ValueError(self._missing_counts_message(what, e)) from e
                reason = f"{type(e).__name__}: {e}"
        if found is None:
            if required:
                raise ValueError(self._missing_counts_message(what, reason))
            self._counts_tried = True
            if self.diagnostics_period > 0:
                logger.info(
                    "No class counts (%s): the per-group diagnostics (DIAGNOSTICS_PERIOD) are "
                    "off; set MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO to have them",
                    reason,
                )
            return False
        prior = found["prior"]
        if self._counts_state == _CHECKPOINT:
            logger.info("The training data's class counts replace the loaded checkpoint's")
        self._set_counts(
            prior.get(self.count_source.count_type),
            found["image_count"],
            prior.num_images,
            found["names"],
        )
        self._counts_state = _DATA
        names = found["names"]
        self.set_dataset_meta(
            thing_classes=names if names is not None and len(names) == self.num_classes else None,
            count_source=found["description"],
        )
        logger.info(found["description"])
        return True

    @torch.jit.unused
    def _posthoc_counts(self):
        """POSTHOC_TAU at inference: the given, resolved or loaded counts; resolved from the
        training data only when there are none of these."""
        if self._counts_state == _NONE:
            self.resolve_class_counts(True, "MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU")

    def _missing_counts_message(self, what, reason):
        what = what or f"MODEL.ROI_BOX_HEAD.BALMS.LOSS '{self.loss_name}'"
        src = self.count_source
        places = [
            "the class_counts= argument of BalmsFastRCNNOutputLayers (with num_train_images= "
            "for balanced_sigmoid; a LazyConfig passes them there)"
        ]
        if src is not None:
            places.append(src.where())
        else:
            places.append("MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO / DATASETS.TRAIN (yacs configs only)")
        return (
            f"{what} needs the class counts of the training data, and none were found "
            f"({reason}). Looked for in: " + "; ".join(places) + ". A CAT_INFO file "
            "(tools/write_cat_info.py) uses the dataset's own category ids (COCO's 1..90 with "
            "gaps); a checkpoint's counts serve inference only."
        )

    @torch.no_grad()
    def _take_initial_weights(self, stock):
        """Copy the randomly drawn initial weights of a stock ``FastRCNNOutputLayers`` of the
        same shape (``cls_score.weight``, ``bbox_pred``); the classifier bias keeps this
        predictor's (deterministic) initialisation: 0, or the sigmoid family's prior."""
        if self.cls_score.weight.shape != stock.cls_score.weight.shape or (
            self.bbox_pred.weight.shape != stock.bbox_pred.weight.shape
        ):
            raise ValueError(
                "_take_initial_weights: the stock predictor's layers "
                f"{tuple(stock.cls_score.weight.shape)} / {tuple(stock.bbox_pred.weight.shape)} "
                f"do not match this predictor's {tuple(self.cls_score.weight.shape)} / "
                f"{tuple(self.bbox_pred.weight.shape)}"
            )
        self.cls_score.weight.copy_(stock.cls_score.weight)
        self.bbox_pred.load_state_dict(stock.bbox_pred.state_dict())

    # -- training --------------------------------------------------------------------------
    @torch.jit.unused
    def _record_train_features(self, x: torch.Tensor) -> None:
        """Called by the forward hook ``_record_train_rois`` with the input of ``forward``."""
        if self.training and self.record_train_rois:
            self.last_train_features = (x.flatten(1) if x.dim() > 2 else x).detach()

    @property
    def takes_class_weights(self):
        """False only for LOSS 'softmax' with Detectron2's USE_SIGMOID_CE / USE_FED_LOSS, whose
        loss is Detectron2's own and takes no weights."""
        return not (self.use_sigmoid_ce or self.use_fed_loss)

    def losses(self, predictions, proposals):
        """Detectron2's losses with the classification loss of ``loss_name`` (the one place the
        loss is chosen). Box regression and the classification statistics are Detectron2's;
        LOSS 'softmax' with no class weights is Detectron2's cross-entropy (and with
        Detectron2's USE_SIGMOID_CE / USE_FED_LOSS, Detectron2's losses unchanged). No
        host-device sync (module doc)."""
        if self.loss_name in NEEDS_COUNTS or self.diagnostics_period > 0:
            self.resolve_class_counts()  # once: the first training step
        if not self._meta_own:
            self.resolve_class_names()
        scores, proposal_deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        else:
            gt_classes = torch.empty(0, dtype=torch.long, device=scores.device)
        if self.record_train_rois:
            self.last_train_labels = gt_classes
        if not self.takes_class_weights:
            if not self._class_weights_trivial(read=True):
                raise ValueError(
                    "class_weights are set, but LOSS 'softmax' with Detectron2's "
                    "USE_SIGMOID_CE / USE_FED_LOSS cannot take them"
                )
            return super().losses(predictions, proposals)
        _log_classification_stats(scores, gt_classes)
        weights = self.roi_weights(gt_classes)
        self._log_diagnostics(scores, gt_classes)
        if self.loss_name == "softmax" and weights is None:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")  # Detectron2's
        elif self.training and self.loss_name in ("seesaw", "eqlv2"):
            loss_cls = self._stateful_loss(scores, gt_classes, weights)
        else:
            loss_cls = self.classification_loss(scores, gt_classes, weights=weights)
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes
            ),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    # -- class weights ---------------------------------------------------------------------
    def set_class_weights(self, weights):
        """Copy (K,) ``weights`` into the ``class_weights`` buffer without reading them back:
        the next training steps weight their ROIs on the device (all-equal weights still give
        exactly the unweighted loss), with no host-device sync. What the Meta Reweigher uses."""
        with torch.no_grad():
            self.class_weights.copy_(weights)
        self._note_class_weights(None)

    def _note_class_weights(self, trivial):
        """Remember the state of the buffer as it is now: trivial (True), not (False), or
        written without a read (None)."""
        w = self.class_weights
        self._weights_seen = (w, _version(w), trivial)

    def _trivial_on_device(self):
        """0-d bool tensor: the class weights change no loss (all 1, or all equal and
        normalised)."""
        w = self.class_weights
        trivial = (w == 1).all()
        if self.normalize_class_weights:
            trivial = trivial | (w == w[0]).all()
        return trivial

    def _class_weights_trivial(self, read=False):
        """True / False, or None for weights written by :meth:`set_class_weights` (read all
        the same with ``read``). A buffer changed since it was last seen (loaded, moved,
        written in place) is read once: one host-device sync."""
        w, (seen, version, trivial) = self.class_weights, self._weights_seen
        if seen is w and version == _version(w) and (trivial is not None or not read):
            return trivial
        trivial = bool(self._trivial_on_device())
        self._note_class_weights(trivial)
        return trivial

    def roi_weights(self, gt_classes):
        """Per-ROI weights from ``class_weights`` (None when they are all 1, or all equal and
        normalised); see :func:`class_roi_weights`. No host-device sync: a buffer changed
        behind the predictor's back is read once (:meth:`_class_weights_trivial`); weights
        from :meth:`set_class_weights` are never read (all-equal ones give exactly 1)."""
        trivial = self._class_weights_trivial()
        if trivial:
            return None
        w = class_roi_weights(
            gt_classes, self.class_weights, self.num_classes, self.normalize_class_weights
        )
        if trivial is None:
            w = torch.where(self._trivial_on_device(), torch.ones_like(w), w)
        return w

    def classification_loss(self, logits, gt_classes, weights=None):
        """The loss of ``loss_name`` on (R, K+1) logits (background last), with optional (R,)
        ROI weights; a pure function of its inputs and the predictor's buffers."""
        name, fg = self.loss_name, logits[:, :-1]
        kw = dict(weights=weights)
        if name == "softmax":
            return L.softmax_loss(logits, gt_classes, **kw)
        if name == "balanced_softmax":
            counts = self.class_counts
            return L.balanced_softmax_loss(
                logits, gt_classes, counts, tau=self.tau, min_count=self.min_count, **kw
            )
        if name == "label_over_smooth":
            return L.label_over_smooth_loss(
                logits, gt_classes, self.los_delta, foreground_only=self.los_foreground_only, **kw
            )
        if name == "sigmoid":
            return L.sigmoid_loss(fg, gt_classes, **kw)
        if name == "balanced_sigmoid":
            return L.balanced_sigmoid_loss(
                fg,
                gt_classes,
                self.class_counts,
                self.num_train_images,
                min_count=self.min_count,
                **kw,
            )
        if name == "seesaw":
            return L.seesaw_loss(logits, gt_classes, self.seesaw_counts, **self.seesaw, **kw)
        return L.eqlv2_loss(
            logits, gt_classes, self.eqlv2_pos_grad, self.eqlv2_neg_grad, **self.eqlv2, **kw
        )

    def _stateful_loss(self, logits, gt_classes, weights):
        """Training loss of Seesaw / EQLv2 with the update of their running state (buffers),
        summed over processes so that every rank holds the same state. Seesaw: this batch's
        foreground ROIs join the counts before the loss; EQLv2: this batch's gradient
        magnitudes are accumulated after the loss used the previous ones (as published)."""
        K = self.num_classes
        if self.loss_name == "seesaw":
            with torch.no_grad():
                batch = L.seesaw_batch_counts(gt_classes, K).to(self.seesaw_counts)
                self.seesaw_counts += all_reduce_sum(batch)
            return self.classification_loss(logits, gt_classes, weights=weights)
        loss, pos, neg = L.eqlv2_loss_and_stats(
            logits,
            gt_classes,
            self.eqlv2_pos_grad,
            self.eqlv2_neg_grad,
            weights=weights,
            **self.eqlv2,
        )
        with torch.no_grad():
            stats = all_reduce_sum(torch.stack([pos, neg]).to(self.eqlv2_pos_grad))
            self.eqlv2_pos_grad += stats[0]
            self.eqlv2_neg_grad += stats[1]
        return loss

    # -- inference -------------------------------------------------------------------------
    def posthoc_adjust(self, scores: torch.Tensor) -> torch.Tensor:
        """(R, K+1) softmax-layout logits with ``posthoc_tau`` times the balanced-softmax shift
        subtracted from the K foreground columns (the background column is kept)."""
        shift = L.balanced_softmax_shift(self.class_counts, self.posthoc_tau, self.min_count)
        shift = torch.cat([shift, shift.new_zeros((1,))]).to(scores)
        return scores - shift

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ):
        """Per-image (Ri, K+1) scores of the loss family (``LOSS_FAMILIES``): softmax (after
        ``posthoc_adjust`` when ``posthoc_tau``; Detectron2's sigmoid of every column with its
        USE_SIGMOID_CE), sigmoid of the foreground columns (background score 0), or Seesaw's
        (``losses.seesaw_probs``). Only the length of each proposal is read."""
        scores = predictions[0]
        if self.loss_family == "softmax":
            if self.posthoc_tau != 0.0:
                if not torch.jit.is_scripting():
                    self._posthoc_counts()
                scores = self.posthoc_adjust(scores)
            probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        elif self.loss_family == "sigmoid":  # background column ignored (score 0)
            probs = torch.cat([scores[:, :-1].sigmoid(), torch.zeros_like(scores[:, -1:])], 1)
        else:
            probs = L.seesaw_probs(scores)
        # __len__, not len(): a traced int, so a trace generalises to other numbers of ROIs
        # (Detectron2's patch_builtin_len does this for its own modules only)
        return probs.split([p.__len__() for p in proposals], dim=0)

    @torch.no_grad()
    def _log_diagnostics(self, logits, gt_classes):
        """Mean predicted probability of the true class of the foreground ROIs, per LVIS group
        (``balms/fg_score_{r,c,f}``), every ``diagnostics_period`` iterations: computed on the
        device, read with one host-device sync."""
        if self.diagnostics_period <= 0 or not self._group_counts:
            return
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a trainer
            return
        if storage.iter % self.diagnostics_period or gt_classes.numel() == 0:
            return
        K = self.num_classes
        probs = self.predict_probs((logits, None), [range(logits.shape[0])])[0]
        true_score = probs.gather(1, gt_classes[:, None])[:, 0]
        counts = self.class_image_counts[gt_classes.clamp(max=K - 1)]
        group = (counts > RARE_MAX_IMAGES).long() + (counts > COMMON_MAX_IMAGES).long()
        member = F.one_hot(group, len(GROUPS)).to(true_score.dtype)
        member *= (gt_classes < K).to(true_score.dtype)[:, None]  # foreground ROIs only
        n = member.sum(0)
        means = (member * true_score[:, None]).sum(0) / n.clamp(min=1)
        for name, (mean, size) in zip(GROUPS, torch.stack([means, n], 1).tolist()):  # the read
            if size > 0:
                storage.put_scalar(f"balms/fg_score_{name}", mean)


@ROI_HEADS_REGISTRY.register()
class BalmsROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box predictor is ``BalmsFastRCNNOutputLayers``.

    From a yacs config (``MODEL.ROI_HEADS.NAME: BalmsROIHeads``) the predictor is built from
    ``MODEL.ROI_BOX_HEAD.BALMS``. Constructed directly (Python, a LazyConfig ``_target_``), the
    ``box_predictor`` argument must be a ``BalmsFastRCNNOutputLayers``: a stock
    ``FastRCNNOutputLayers`` is an error, not silently the stock loss.
    """

    # constants for TorchScript (dead mask / keypoint branches compile away), as Detectron2's
    # export patches them on StandardROIHeads: a subclass with annotations of its own (which
    # Detectron2's freeze_training_mode gives it) does not inherit those
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, box_predictor, **kwargs):
        """
        Args:
            box_predictor (BalmsFastRCNNOutputLayers): the box predictor.
            kwargs: as ``StandardROIHeads``.
        """
        if not isinstance(box_predictor, BalmsFastRCNNOutputLayers):
            raise TypeError(
                "BalmsROIHeads needs a BalmsFastRCNNOutputLayers box_predictor (it carries the "
                f"long-tail loss), got {type(box_predictor).__name__}. In a LazyConfig, replace "
                "the predictor too: box_predictor=L(BalmsFastRCNNOutputLayers)(input_shape=..., "
                "box2box_transform=..., num_classes=..., loss='balanced_softmax', "
                "class_counts=[...]); or keep StandardROIHeads for Detectron2's own head"
            )
        super().__init__(box_predictor=box_predictor, **kwargs)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        """Detectron2's pooler and box head, and a ``BalmsFastRCNNOutputLayers`` that starts
        from exactly the weights the stock predictor drew: with one seed the model's initial
        weights and the random stream of the heads built after it are a ``StandardROIHeads``
        model's (only the loss's own initialisation, e.g. the sigmoid family's bias, differs)."""
        ret = super()._init_box_head(cfg, input_shape)
        stock = ret["box_predictor"]
        with torch.random.fork_rng(devices=_cuda_devices(stock)):
            predictor = BalmsFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        predictor._take_initial_weights(stock)
        ret["box_predictor"] = predictor
        return ret


def _version(t):
    """The in-place version counter of ``t`` (-1 for inference tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _cuda_devices(module):
    """Indices of the CUDA devices holding ``module``'s parameters (their RNG is forked too)."""
    devices = {p.device for p in module.parameters() if p.device.type == "cuda"}
    return sorted(torch.cuda.current_device() if d.index is None else d.index for d in devices)
