"""The Meta Reweigher: per-class loss weights learned by one-step look-ahead (docs/METHODS.md).

One learnable scalar ``psi_c`` per foreground class; the weights ``w_c = WEIGHT_FN(psi_c)``
("sigmoid", published, or "exp") multiply the classification loss of
``BalmsFastRCNNOutputLayers`` (background ROIs: weight 1; with ``NORMALIZE`` the foreground
weights of a batch are renormalised to mean 1). Every ``BALMS.META.PERIOD`` iterations:

1. ``theta = (W, b)``, the classifier ``cls_score``. One differentiable SGD step on the weighted
   training loss of the TRAINING batch's ROIs:
   ``theta~ = theta - lr * d(theta)``, ``d = grad + wd * theta``, with momentum
   ``d <- mu * buf + (1 - dampening) * d`` (``d + mu * buf`` when Nesterov), exactly what the
   live ``torch.optim.SGD`` would do next to ``cls_score``: lr, weight decay, momentum buffer,
   dampening and Nesterov are read from the optimizer's param group of each of W and b at that
   moment (another optimizer type: plain ``theta - lr * grad`` with its lr, and a warning).
2. The meta loss of ``theta~`` on a META batch: "plain" (the paper: cross-entropy in the softmax
   layout, per-class logistic loss in the sigmoid layout) or "balanced" (what the published
   code did: balanced softmax / balanced sigmoid with the predictor's counts).
3. ``grad_psi`` of the meta loss, averaged over ranks (all-reduce; none on one process), zeroed
   for classes the meta set never shows; an Adam step (``BALMS.META.LR``) on ``psi``; the
   predictor's ``class_weights`` buffer is set to ``WEIGHT_FN(psi)``.

When. The meta step runs in the hook's ``after_step``: it looks ahead from the classifier as the
optimizer left it, on the training ROIs of the step that just ran, so its weights weight the
training loss from the next iteration on (a one-iteration lag against the published code, which
ran the meta step inside the same iteration's forward; the price of a model that never calls a
hook).

Cost. Only the classifier takes part in the look-ahead, so only ROI features are needed:

* the training batch's box-head features are the ones the training step computes anyway: with
  the predictor's ``record_train_rois`` set, it keeps them (detached) with their labels in
  ``last_train_features`` / ``last_train_labels``, which the hook reads after the step;
* the meta batch goes through Detectron2's backbone, proposal generator (its losses are
  discarded) and box head under ``torch.no_grad()``. The model stays in train mode (training-time
  proposals, batch statistics in BatchNorm, as the published full training forward on the meta
  batch), but BatchNorm running statistics are saved and restored around it, so the meta batch
  never moves them. Its event-storage writes (RPN / ROI sampling statistics) go to a throw-away
  storage. With ``CACHE_FEATURES`` (allowed only when backbone, proposal generator and box head
  are all frozen) norm layers run in eval mode and the ROI features and labels of each meta
  image are cached in host memory the first time it is drawn (``R x D x 4`` bytes per image:
  meant for the decoupled stage with a meta set of moderate size).

State. ``class_weights`` is a buffer of the predictor (saved with the model). ``psi``, the Adam
state, the counters and the meta sampler's seed are the hook's ``state_dict`` (Detectron2 stores
it in the checkpoint's "trainer" entry), so ``--resume`` continues the same meta stream and
optimizer. A fresh (non-resumed) run starts from ``psi = INIT`` whatever ``class_weights`` the
loaded weights carry.

Device and precision. ``psi``, its Adam state and the class mask follow the predictor's device:
they move there in ``before_train`` and when a state is loaded (a hook built before
``model.to("cuda")`` works). The meta batch's no-grad forward runs under the trainer's autocast
(Detectron2's ``AMPTrainer`` and its precision, float16 or bfloat16; yacs: ``SOLVER.AMP`` and
``BALMS.AMP_DTYPE``); the look-ahead is float32.

No host-device sync between logs. The meta step reads nothing back: a non-finite meta-gradient
skips the Adam step on the device (:class:`DeviceAdam`), the weights are written without a
read-back (``set_class_weights``), the meta-gradient's all-reduce goes over the group that
carries the tensor's device (``balms_det.distributed``). Every ``LOG_PERIOD`` iterations one
read fetches the weights summary, the meta loss and the number of skipped steps.

The math is in pure functions (:func:`lookahead_classifier`, :func:`lookahead_meta_loss`,
:func:`meta_gradient`) that take features, labels, classifier parameters and ``psi``.
"""

import logging
from contextlib import contextmanager, nullcontext

import torch
from detectron2.config import configurable
from detectron2.engine import HookBase
from detectron2.layers import cat
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, get_event_storage
from torch import nn
from torch.nn import functional as F

from .. import losses as L
from ..data.meta_sampler import (
    check_meta_batch_size,
    classes_in_dataset,
    meta_batch_loader,
    meta_mapper,
    meta_set,
)
from ..data.training_set import TrainingSet, training_set
from ..distributed import all_reduce_sum
from ..longtail import GROUPS, frequency_groups
from ..modeling.roi_heads import (
    LOSS_FAMILIES,
    NEEDS_COUNTS,
    BalmsFastRCNNOutputLayers,
    class_roi_weights,
)
from ..utils import amp_dtype, format_examples
from .device_adam import DeviceAdam

__all__ = [
    "WEIGHT_FNS",
    "META_LOSSES",
    "MetaReweigher",
    "class_weights_from_psi",
    "classifier_losses",
    "lookahead_classifier",
    "lookahead_meta_loss",
    "meta_gradient",
    "meta_roi_features",
    "sgd_settings",
]

logger = logging.getLogger(__name__)

WEIGHT_FNS = ("sigmoid", "exp")
META_LOSSES = ("plain", "balanced")


# ------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------
def class_weights_from_psi(psi, weight_fn="sigmoid"):
    """``w = sigmoid(psi)`` (published) or ``exp(psi)``; differentiable."""
    if weight_fn == "sigmoid":
        return torch.sigmoid(psi)
    if weight_fn == "exp":
        return torch.exp(psi)
    raise ValueError(f"BALMS.META.WEIGHT_FN must be one of {WEIGHT_FNS}, got '{weight_fn}'")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def lookahead_classifier(
    train_x,
    train_y,
    weight,
    bias,
    class_weights,
    *,
    train_loss,
    lr,
    num_classes,
    normalize=True,
    weight_decay=0.0,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    momentum_buffers=None,
):
    """One differentiable SGD step of the classifier on the weighted training loss.

    Args:
        train_x: (R, D) ROI features of the training batch (no graph needed).
        train_y: (R,) labels in [0, K], K = background.
        weight, bias: the classifier's parameters (C, D), (C,) (C = K+1 or K); detached here.
        class_weights: (K,) class weights (the graph to ``psi`` is kept).
        train_loss: ``train_loss(logits, labels, roi_weights) -> scalar`` on the raw
            ``F.linear(x, weight, bias)`` outputs.
        lr, weight_decay, momentum, dampening, nesterov: SGD settings, each a number or a pair
            (for weight, bias).
        momentum_buffers: pair of the optimizer's momentum buffers (or None entries).
        num_classes, normalize: see :func:`balms_det.modeling.roi_heads.class_roi_weights`.

    Returns:
        (weight~, bias~), functions of ``class_weights``.
    """
    params = [weight.detach().requires_grad_(True), bias.detach().requires_grad_(True)]
    with torch.enable_grad():  # the inner gradient is needed even under no_grad
        roi_w = class_roi_weights(train_y, class_weights, num_classes, normalize)
        loss = train_loss(F.linear(train_x, params[0], params[1]), train_y, roi_w)
        grads = torch.autograd.grad(loss, params, create_graph=True)
    bufs = momentum_buffers if momentum_buffers is not None else (None, None)
    out = []
    for p, g, lr_, wd, mu, damp, nest, buf in zip(
        params,
        grads,
        _pair(lr),
        _pair(weight_decay),
        _pair(momentum),
        _pair(dampening),
        _pair(nesterov),
        bufs,
    ):
        p = p.detach()
        d = g + wd * p if wd else g
        if mu:
            b = d if buf is None else mu * buf.to(d) + (1.0 - damp) * d
            d = d + mu * b if nest else b
        out.append(p - lr_ * d)
    return tuple(out)


def lookahead_meta_loss(
    psi,
    train_x,
    train_y,
    meta_x,
    meta_y,
    weight,
    bias,
    *,
    train_loss,
    meta_loss,
    lr,
    num_classes,
    weight_fn="sigmoid",
    normalize=True,
    **sgd,
):
    """Meta loss of the looked-ahead classifier, as a differentiable function of ``psi``.

    ``meta_loss(logits, labels) -> scalar`` on the raw outputs of the looked-ahead classifier on
    ``meta_x`` (R', D) / ``meta_y`` (R',). Other arguments: :func:`lookahead_classifier`.
    """
    w = class_weights_from_psi(psi, weight_fn)
    w1, b1 = lookahead_classifier(
        train_x,
        train_y,
        weight,
        bias,
        w,
        train_loss=train_loss,
        lr=lr,
        num_classes=num_classes,
        normalize=normalize,
        **sgd,
    )
    return meta_loss(F.linear(meta_x, w1, b1), meta_y)


def meta_gradient(psi, *args, **kwargs):
    """``(d meta_loss / d psi, meta_loss)`` (both detached); arguments as
    :func:`lookahead_meta_loss`."""
    psi = psi.detach().requires_grad_(True)
    loss = lookahead_meta_loss(psi, *args, **kwargs)
    (g,) = torch.autograd.grad(loss, psi, allow_unused=True)
    if g is None:  # no foreground ROI in the training batch: the weights play no part
        g = torch.zeros_like(psi)
    return g.detach(), loss.detach()


def classifier_losses(predictor, meta_loss="plain"):
    """Loss callables on raw (R, K+1) ``cls_score`` outputs for the look-ahead.

    Returns:
        ``train_loss(z, y, roi_weights)``: the predictor's configured classification loss;
        ``meta_loss(z, y)``: "plain" (``softmax_loss``, or ``sigmoid_loss`` on the foreground
        columns for the sigmoid family) or "balanced" (``balanced_softmax_loss`` with the
        predictor's tau / ``balanced_sigmoid_loss``).
    """
    if meta_loss not in META_LOSSES:
        raise ValueError(f"BALMS.META.META_LOSS must be one of {META_LOSSES}, got '{meta_loss}'")
    sigmoid = LOSS_FAMILIES[predictor.loss_name] == "sigmoid"

    def train_loss(z, y, w):
        return predictor.classification_loss(z, y, weights=w)

    def meta(z, y):
        if meta_loss == "plain":
            return L.sigmoid_loss(z[:, :-1], y) if sigmoid else L.softmax_loss(z, y)
        if sigmoid:
            return L.balanced_sigmoid_loss(
                z[:, :-1],
                y,
                predictor.class_counts,
                predictor.num_train_images,
                min_count=predictor.min_count,
            )
        return L.balanced_softmax_loss(
            z, y, predictor.class_counts, tau=predictor.tau, min_count=predictor.min_count
        )

    return train_loss, meta


def sgd_settings(optimizer, params):
    """Look-ahead settings of ``params`` (weight, bias) from the live optimizer.

    Returns a dict of pairs ``lr``, ``weight_decay``, ``momentum``, ``dampening``,
    ``nesterov``, ``momentum_buffers`` for :func:`lookahead_classifier`. A parameter the
    optimizer does not hold raises ValueError. A non-SGD optimizer gives plain SGD with its lr.
    """
    out = {
        k: []
        for k in ("lr", "weight_decay", "momentum", "dampening", "nesterov", "momentum_buffers")
    }
    sgd = isinstance(optimizer, torch.optim.SGD)
    for p in params:
        group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
        if group is None:
            raise ValueError("the optimizer does not hold the classifier (cls_score) parameters")
        out["lr"].append(float(group["lr"]))
        if sgd:
            out["weight_decay"].append(float(group.get("weight_decay", 0.0)))
            out["momentum"].append(float(group.get("momentum", 0.0)))
            out["dampening"].append(float(group.get("dampening", 0.0)))
            out["nesterov"].append(bool(group.get("nesterov", False)))
            out["momentum_buffers"].append(optimizer.state.get(p, {}).get("momentum_buffer"))
        else:
            out["weight_decay"].append(0.0)
            out["momentum"].append(0.0)
            out["dampening"].append(0.0)
            out["nesterov"].append(False)
            out["momentum_buffers"].append(None)
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------
# Meta-batch ROI features
# ------------------------------------------------------------------------------------------
_BN = nn.modules.batchnorm._BatchNorm


@contextmanager
def _norm_stats_kept(model, eval_norms=False):
    """BatchNorm running statistics are restored on exit (or norms run in eval mode)."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.training]
    if eval_norms:
        for m in bns:
            m.eval()
        try:
            yield
        finally:
            for m in bns:
                m.train()
        return
    saved = [
        (
            m,
            [
                b.clone()
                for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                if b is not None
            ],
        )
        for m in bns
        if m.track_running_stats
    ]
    try:
        yield
    finally:
        for m, bufs in saved:
            live = [
                b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None
            ]
            for b, s in zip(live, bufs):
                b.copy_(s)


def _unwrap(model):
    return getattr(model, "module", model)


@torch.no_grad()
def meta_roi_features(model, batched_inputs, eval_norms=False):
    """Box-head features and labels of the sampled ROIs of ``batched_inputs``, no graph.

    Runs a GeneralizedRCNN's own modules in their current (train) mode: ``preprocess_image``,
    the backbone, the proposal generator's forward (training-time proposals; its losses are
    discarded), the ROI heads' ``label_and_sample_proposals``, box pooler and box head.
    BatchNorm running stats are left untouched (see module doc) and event-storage writes are
    discarded.

    Returns:
        x (R, D), labels (R,) in [0, K], per-image ROI counts (list[int]).
    """
    m = _unwrap(model)
    try:
        it = get_event_storage().iter
    except AssertionError:
        it = 0
    with _norm_stats_kept(m, eval_norms), EventStorage(it):
        images = m.preprocess_image(batched_inputs)
        gt = [x["instances"].to(m.device) for x in batched_inputs]
        features = m.backbone(images.tensor)
        proposals, _ = m.proposal_generator(images, features, gt)
        heads = m.roi_heads
        proposals = heads.label_and_sample_proposals(proposals, gt)
        box = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        x = heads.box_head(box)
    x = x.flatten(1) if x.dim() > 2 else x
    labels = cat([p.gt_classes for p in proposals], dim=0)
    return x, labels, [len(p) for p in proposals]


def _image_key(d):
    return (d.get("file_name"), d.get("image_id"))


def _to_host(t):
    """``t`` in host memory: a CUDA tensor is copied asynchronously into pinned memory (the
    later copy back to the device is ordered after it on the same stream, no sync)."""
    if t.device.type == "cpu":
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
    return out.copy_(t, non_blocking=True)


# ------------------------------------------------------------------------------------------
# The hook
# ------------------------------------------------------------------------------------------
def _check_settings(weight_fn, meta_loss, period, lr, log_period=1):
    if weight_fn not in WEIGHT_FNS:
        raise ValueError(
            f"Meta Reweigher weight_fn (BALMS.META.WEIGHT_FN) must be one of {WEIGHT_FNS}, "
            f"got '{weight_fn}'"
        )
    if meta_loss not in META_LOSSES:
        raise ValueError(
            f"Meta Reweigher meta_loss (BALMS.META.META_LOSS) must be one of {META_LOSSES}, "
            f"got '{meta_loss}'"
        )
    if int(period) < 1:
        raise ValueError(f"Meta Reweigher period (BALMS.META.PERIOD) must be >= 1, got {period}")
    if not lr > 0:
        raise ValueError(f"Meta Reweigher lr (BALMS.META.LR) must be > 0, got {lr}")
    if int(log_period) < 1:
        raise ValueError(
            f"Meta Reweigher log_period (BALMS.META.LOG_PERIOD) must be >= 1, got {log_period}"
        )


def _checked_predictor(m, meta_loss):
    """The model's BalmsFastRCNNOutputLayers, checked to suit the Meta Reweigher."""
    predictor = getattr(getattr(m, "roi_heads", None), "box_predictor", None)
    if not isinstance(predictor, BalmsFastRCNNOutputLayers):
        raise ValueError(
            "The Meta Reweigher needs a BalmsFastRCNNOutputLayers box predictor at "
            "model.roi_heads.box_predictor (yacs: MODEL.ROI_HEADS.NAME 'BalmsROIHeads'; "
            "LazyConfig: model.roi_heads.box_predictor = L(BalmsFastRCNNOutputLayers)(...)), "
            f"got {type(predictor).__name__}"
        )
    for attr in ("backbone", "proposal_generator", "preprocess_image"):
        if getattr(m, attr, None) is None:
            raise ValueError(f"The Meta Reweigher needs a GeneralizedRCNN with a {attr}")
    if not predictor.takes_class_weights:
        raise ValueError(
            "The Meta Reweigher needs a classification loss that takes class weights: "
            "LOSS 'softmax' with Detectron2's USE_SIGMOID_CE / USE_FED_LOSS "
            "(use_sigmoid_ce= / use_fed_loss= of the predictor) cannot; turn those off or "
            "choose another loss (balanced_softmax, sigmoid, balanced_sigmoid, label_over_smooth)"
        )
    if predictor.loss_name in ("seesaw", "eqlv2"):
        raise ValueError(
            f"The Meta Reweigher with loss '{predictor.loss_name}': the look-ahead would "
            "differentiate through its running state; use a softmax or sigmoid family loss"
        )
    cls = predictor.cls_score
    if type(cls) is not torch.nn.Linear:
        raise ValueError(
            "The Meta Reweigher needs a plain linear classifier (the look-ahead is a linear "
            "layer step); set MODEL.ROI_BOX_HEAD.BALMS.NORMED_CLASSIFIER_TAU "
            "(normed_classifier_tau=) to 0"
        )
    if not (cls.weight.requires_grad and cls.bias is not None and cls.bias.requires_grad):
        raise ValueError(
            "The Meta Reweigher needs a trainable classifier with a bias (cls_score): it is "
            "frozen (check BALMS.TRAINABLE_PARAMS / train.balms.trainable_params)"
        )
    # the "balanced" meta loss and the group summaries read the training data's counts
    predictor.resolve_class_counts(
        required=meta_loss == "balanced" or predictor.loss_name in NEEDS_COUNTS
    )
    if meta_loss == "balanced":  # (the number of images: only the sigmoid family's)
        sigmoid = LOSS_FAMILIES[predictor.loss_name] == "sigmoid"
        if bool((predictor.class_counts == 1).all()) or (
            sigmoid and float(predictor.num_train_images) <= 0
        ):
            raise ValueError(
                "Meta Reweigher meta_loss 'balanced' (BALMS.META.META_LOSS) needs the class "
                "counts of the training set; the predictor has none (use a balanced loss, a "
                "CAT_INFO file, or class_counts= / num_train_images= of the predictor)"
            )
    return predictor


def _check_cacheable(m):
    trainable = [
        f"{prefix}.{n}"
        for prefix, mod in (
            ("backbone", m.backbone),
            ("proposal_generator", m.proposal_generator),
            ("roi_heads.box_head", m.roi_heads.box_head),
        )
        for n, p in mod.named_parameters()
        if p.requires_grad
    ]
    if trainable:
        raise ValueError(
            "BALMS.META.CACHE_FEATURES (cache_features=True) needs everything before the "
            "classifier frozen (e.g. BALMS.TRAINABLE_PARAMS / train.balms.trainable_params: "
            "['cls_score']); trainable: " + format_examples(trainable, limit=5, sort=False)
        )


def _class_names(cfg, K):
    from detectron2.data import MetadataCatalog

    try:
        names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
        if len(names) == K:
            return list(names)
    except (AttributeError, IndexError, KeyError):
        pass
    return [str(i) for i in range(K)]


def _meta_set(meta_dataset):
    """(TrainingSet, name for messages) of a ``meta_dataset`` argument: a ``TrainingSet`` (the
    train loader's, used as it is), registered dataset name(s) (read with empty images dropped;
    the shared read inside ``shared_training_sets``), or dataset dicts (serialized once)."""
    if isinstance(meta_dataset, TrainingSet):
        return meta_dataset, meta_dataset.describe()
    if isinstance(meta_dataset, str):
        meta_dataset = [meta_dataset]
    items = list(meta_dataset)
    if items and all(isinstance(n, str) for n in items):
        from detectron2.data import DatasetCatalog

        for n in items:
            if n not in DatasetCatalog.list():
                raise KeyError(
                    f"Meta Reweigher meta_dataset '{n}' is not a registered dataset (register it "
                    "with detectron2.data.DatasetCatalog before building the hook); registered: "
                    + ", ".join(sorted(DatasetCatalog.list())[:30])
                )
        return training_set(items, filter_empty=True), ", ".join(items)
    return (TrainingSet(items) if items else items), None


class MetaReweigher(HookBase):
    """Detectron2 hook learning the predictor's ``class_weights`` (see the module doc).

    Built from keyword arguments (Python, a LazyConfig ``L(MetaReweigher)(...)``, or the
    ``train.balms.meta`` entry of ``tools/lazy_train_net.py``), or from a yacs config as
    ``MetaReweigher(cfg, model, optimizer=None, dataset_dicts=None)`` (``BALMS.META``,
    :meth:`from_config`; ``BalmsTrainer.build_hooks`` adds it when ``BALMS.META.ENABLED``).
    Construction validates everything (loss, settings, meta set) so that a bad setup fails
    before training.

    The hook talks to the model only through the predictor's extension point: it sets
    ``record_train_rois`` and reads ``last_train_features`` / ``last_train_labels`` after each
    training step, and writes the ``class_weights`` buffer. Its meta step runs in
    ``after_step`` of every ``period``-th iteration, so the weights it learns from iteration
    t's training batch weight the loss from iteration t + 1 on. Register it first among the
    trainer's hooks (its ``after_step`` then runs before the timer and the checkpointer).
    """

    @configurable
    def __init__(
        self,
        *,
        model,
        meta_dataset,
        meta_mapper,
        optimizer=None,
        meta_batch_size=2,
        period=1,
        lr=0.01,
        weight_fn="sigmoid",
        init=0.0,
        normalize=None,
        meta_loss="plain",
        cache_features=False,
        seed=None,
        amp=False,
        num_workers=0,
        class_names=None,
        meta_set_name=None,
        log_period=20,
    ):
        """
        Args (the yacs key of each in parentheses):
            model: the detector, a GeneralizedRCNN whose ``roi_heads.box_predictor`` is a
                ``BalmsFastRCNNOutputLayers`` (possibly DDP-wrapped).
            meta_dataset: the meta set, drawn class-balanced: a ``TrainingSet`` (e.g. the train
                loader's dataset: its storage is shared, nothing is copied), Detectron2
                dataset dicts, or registered dataset name(s) (loaded with empty images
                dropped) (``BALMS.META.DATASET``, default ``DATASETS.TRAIN``: the train
                loader's ``TrainingSet``).
            meta_mapper (callable): dataset dict -> model input for meta images, e.g. the
                training ``DatasetMapper`` without instance masks (only boxes and classes are
                used).
            optimizer: the training optimizer (its current lr, weight decay and momentum drive
                the look-ahead); default: the trainer's, taken in ``before_train``.
            meta_batch_size (int): images per meta batch, in total over all processes
                (``BALMS.META.IMS_PER_BATCH``).
            period (int): a meta step every this many iterations (``PERIOD``).
            lr (float): Adam learning rate of ``psi`` (``LR``).
            weight_fn (str): "sigmoid" or "exp" (``WEIGHT_FN``).
            init (float): initial ``psi`` of every class (``INIT``).
            normalize (bool): foreground weights of a batch renormalised to mean 1
                (``NORMALIZE``); None: the predictor's ``normalize_class_weights``, which it
                must equal (the look-ahead is a step on the predictor's own loss).
            meta_loss (str): "plain" or "balanced" (``META_LOSS``).
            cache_features (bool): cache meta ROI features, only with everything before the
                classifier frozen (``CACHE_FEATURES``).
            seed (int): seed of the meta sampler, the same on every process; None: Detectron2's
                shared random seed (``SEED`` when >= 0).
            amp (bool or str or torch.dtype): run the meta batch's no-grad forward under CUDA
                autocast: False, True (float16), "float16" or "bfloat16" (``SOLVER.AMP.ENABLED``
                and ``BALMS.AMP_DTYPE``). Registered with a trainer, the hook follows the
                trainer's instead (an ``AMPTrainer``'s precision, or none). The look-ahead
                itself is always float32.
            num_workers (int): data-loading workers of the meta loader
                (``DATALOADER.NUM_WORKERS``).
            class_names (list[str]): names of the K classes, for warnings.
            meta_set_name (str): how warnings name the meta set.
            log_period (int): write the weights summary and the meta loss to the event storage
                every this many iterations (``LOG_PERIOD``); one read of the device each.
        """
        _check_settings(weight_fn, meta_loss, period, lr, log_period)
        m = _unwrap(model)
        predictor = _checked_predictor(m, meta_loss)
        own = bool(predictor.normalize_class_weights)
        if normalize is not None and bool(normalize) != own:
            raise ValueError(
                f"Meta Reweigher normalize={bool(normalize)} but the box predictor has "
                f"normalize_class_weights={own}: the look-ahead must step on the predictor's "
                "own loss; set both the same (yacs: BALMS.META.NORMALIZE sets both)"
            )
        self.meta_batch_size = int(meta_batch_size)
        check_meta_batch_size(self.meta_batch_size, "Meta Reweigher meta_batch_size")
        self.cache = None
        if cache_features:
            _check_cacheable(m)
            self.cache = {}
        self.model = model
        self.predictor = predictor
        self.optimizer = optimizer
        self.meta_mapper = meta_mapper
        self.num_workers = int(num_workers)
        self.amp = amp_dtype(amp, "Meta Reweigher amp")
        self.period = int(period)
        self.log_period = int(log_period)
        self.weight_fn = weight_fn
        self.normalize = own
        K = self.num_classes = predictor.num_classes
        dev = predictor.class_weights.device
        self.psi = nn.Parameter(torch.full((K,), float(init), device=dev))
        self.meta_optimizer = DeviceAdam(self.psi, lr=float(lr))
        self.train_loss, self.meta_loss = classifier_losses(predictor, meta_loss)
        self._set_meta_set(meta_dataset, class_names, meta_set_name)
        self.seed = int(seed) if seed is not None else int(comm.shared_random_seed())

        self._groups = None  # frequency groups of the logged weights, at the first log
        self.meta_steps = 0  # meta steps run (a skipped non-finite one too)
        self.meta_batches = 0  # meta batches drawn from the loader (resume skips them)
        self._meta_iter = None
        self._last_loss = None  # on the device, read at the next log
        self._skipped = torch.zeros((), device=dev)  # non-finite steps since the last log
        self._warned_optimizer = False

    @classmethod
    def from_config(cls, cfg, model, optimizer=None, dataset_dicts=None):
        """Arguments of a yacs config's ``BALMS.META`` (and ``SEED``, ``SOLVER.AMP.ENABLED``,
        ``DATALOADER.NUM_WORKERS``); ``dataset_dicts`` replaces the meta set of
        ``BALMS.META.DATASET`` / ``DATASETS.TRAIN`` (:func:`~balms_det.data.meta_sampler.meta_set`:
        the train loader's own ``TrainingSet`` while ``BalmsTrainer`` is built)."""
        mc = cfg.BALMS.META
        _check_settings(mc.WEIGHT_FN, mc.META_LOSS, mc.PERIOD, mc.LR, mc.LOG_PERIOD)
        _checked_predictor(_unwrap(model), mc.META_LOSS)  # before any read of the meta set
        return dict(
            model=model,
            optimizer=optimizer,
            meta_dataset=meta_set(cfg) if dataset_dicts is None else dataset_dicts,
            meta_mapper=meta_mapper(cfg),
            meta_batch_size=mc.IMS_PER_BATCH,
            period=mc.PERIOD,
            lr=mc.LR,
            weight_fn=mc.WEIGHT_FN,
            init=mc.INIT,
            normalize=mc.NORMALIZE,
            meta_loss=mc.META_LOSS,
            cache_features=mc.CACHE_FEATURES,
            seed=int(cfg.SEED) if cfg.SEED >= 0 else None,
            amp=cfg.BALMS.AMP_DTYPE if cfg.SOLVER.AMP.ENABLED else False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            class_names=_class_names(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES),
            meta_set_name=mc.DATASET or "DATASETS.TRAIN",
            log_period=mc.LOG_PERIOD,
        )

    def _set_meta_set(self, meta_dataset, class_names, meta_set_name):
        K = self.num_classes
        meta, loaded_name = _meta_set(meta_dataset)
        what = meta_set_name or loaded_name or "meta_dataset"
        if len(meta) == 0:
            raise ValueError(f"the meta set of the Meta Reweigher ({what}) has no image")
        present = classes_in_dataset(meta, K)
        names = list(class_names) if class_names is not None else []
        if len(names) != K:
            names = [str(i) for i in range(K)]
        missing = (~present).nonzero().flatten().tolist()
        if len(missing) == K:
            raise ValueError(
                f"the meta set of the Meta Reweigher ({what}) has no annotation of any class"
            )
        if missing:
            logger.warning(
                "The meta set (%s) has no image of %d classes; their weights stay at their "
                "initial value: %s",
                what,
                len(missing),
                format_examples([f"{names[c]} ({c})" for c in missing], limit=50, sort=False),
            )
        self.missing_classes = missing
        self.class_mask = present.to(device=self.psi.device, dtype=self.psi.dtype)
        self.meta_set = meta  # a TrainingSet; the meta loader draws from its storage

    # -- weights ---------------------------------------------------------------------------
    def class_weights(self):
        """(K,) ``WEIGHT_FN(psi)``, detached."""
        with torch.no_grad():
            return class_weights_from_psi(self.psi, self.weight_fn)

    def _write_buffer(self):
        self.predictor.set_class_weights(self.class_weights())

    # -- device and precision --------------------------------------------------------------
    def _follow_device(self):
        """Move ``psi``, its Adam state and the class mask to the predictor's device."""
        dev = self.predictor.class_weights.device
        if self.psi.device == dev:
            return
        self.psi = nn.Parameter(self.psi.detach().to(dev))
        self.meta_optimizer.param = self.psi
        self.meta_optimizer.to(dev)
        self.class_mask = self.class_mask.to(dev)
        self._skipped = self._skipped.to(dev)
        if self._last_loss is not None:
            self._last_loss = self._last_loss.to(dev)

    def _follow_trainer_precision(self):
        """Take the autocast dtype of the trainer this hook is registered with: an
        ``AMPTrainer``'s precision (itself, or the ``_trainer`` of a ``DefaultTrainer``), or
        none for a trainer without AMP."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        from detectron2.engine import AMPTrainer

        for t in (trainer, getattr(trainer, "_trainer", None)):
            if isinstance(t, AMPTrainer):
                precision = amp_dtype(getattr(t, "precision", True), "AMPTrainer precision")
                if self.amp is not None and precision != self.amp:
                    logger.info(
                        "Meta Reweigher: autocast %s follows the trainer's (amp=%s ignored)",
                        precision,
                        self.amp,
                    )
                self.amp = precision
                return
        if self.amp is not None:
            logger.info("Meta Reweigher: the trainer runs without AMP; the meta forward too")
        self.amp = None

    def _autocast(self):
        """The meta forward's autocast: the model's device when it is CUDA, ``self.amp``."""
        dev = self.predictor.cls_score.weight.device.type
        if self.amp is None or dev != "cuda":
            return nullcontext()
        return torch.autocast(dev, dtype=self.amp)

    # -- hook interface --------------------------------------------------------------------
    def before_train(self):
        if self.optimizer is None and getattr(self, "trainer", None) is not None:
            self.optimizer = self.trainer.optimizer
        self._follow_device()
        self._follow_trainer_precision()
        self._write_buffer()
        self.predictor.record_train_rois = True
        self._build_loader()

    def _build_loader(self):
        if self._meta_iter is not None:
            return
        loader = meta_batch_loader(
            self.meta_set,
            mapper=self.meta_mapper,
            total_batch_size=self.meta_batch_size,
            seed=self.seed,
            skip_batches=self.meta_batches,
            num_workers=self.num_workers,
        )
        self._meta_iter = iter(loader)

    def after_step(self):
        p = self.predictor
        train_x, train_y = p.last_train_features, p.last_train_labels
        p.last_train_features = p.last_train_labels = None
        if self.trainer.iter % self.period:
            return
        if train_x is None or train_y is None:
            raise RuntimeError(
                "Meta Reweigher: the box predictor recorded no training ROIs in this step "
                "(was its forward run in training mode?)"
            )
        self._build_loader()
        batch = next(self._meta_iter)
        self.meta_batches += 1
        meta_x, meta_y = self.meta_features(batch)
        self.meta_step(train_x, train_y, meta_x, meta_y)
        it, max_iter = self.trainer.iter, getattr(self.trainer, "max_iter", None)
        if (it + 1) % self.log_period == 0 or (max_iter is not None and it + 1 >= max_iter):
            self._log()

    def after_train(self):
        self.predictor.record_train_rois = False
        self.predictor.last_train_features = self.predictor.last_train_labels = None

    # -- meta step -------------------------------------------------------------------------
    def meta_features(self, batch):
        """(x, labels) of the ROIs of a meta batch (from the cache when enabled)."""
        if self.cache is None:
            with self._autocast():
                x, y, _ = meta_roi_features(self.model, batch)
            return x.float(), y
        keys = [_image_key(d) for d in batch]
        todo = [(k, d) for k, d in zip(keys, batch) if k not in self.cache]
        if todo:
            with self._autocast():
                x, y, sizes = meta_roi_features(self.model, [d for _, d in todo], eval_norms=True)
            for (k, _), xi, yi in zip(todo, x.float().split(sizes), y.split(sizes)):
                self.cache[k] = (_to_host(xi), _to_host(yi))
        dev = self.predictor.cls_score.weight.device
        x = torch.cat([self.cache[k][0].to(dev, non_blocking=True) for k in keys])
        y = torch.cat([self.cache[k][1].to(dev, non_blocking=True) for k in keys])
        return x, y

    def _sgd(self, params):
        if self.optimizer is None:
            raise RuntimeError(
                "Meta Reweigher: no optimizer to take the look-ahead's lr from; pass "
                "optimizer= or register the hook with a trainer (before_train takes its "
                "optimizer)"
            )
        if not isinstance(self.optimizer, torch.optim.SGD) and not self._warned_optimizer:
            logger.warning(
                "Meta Reweigher: optimizer %s is not SGD; the look-ahead is a plain SGD step "
                "with its lr",
                type(self.optimizer).__name__,
            )
            self._warned_optimizer = True
        return sgd_settings(self.optimizer, params)

    def meta_step(self, train_x, train_y, meta_x, meta_y):
        """One meta step from given ROI features: look-ahead, meta-gradient (all-reduced),
        Adam step on ``psi`` (skipped on the device when the meta-gradient is not finite),
        ``class_weights`` buffer updated. Returns the meta loss (a 0-d tensor, on the device).
        No host-device sync."""
        self._follow_device()
        cls = self.predictor.cls_score
        dtype, dev = cls.weight.dtype, cls.weight.device.type
        amp_off = torch.autocast(dev, enabled=False) if dev in ("cuda", "cpu") else nullcontext()
        with amp_off:
            g, loss = meta_gradient(
                self.psi,
                train_x.to(dtype),
                train_y,
                meta_x.to(dtype),
                meta_y,
                cls.weight,
                cls.bias,
                train_loss=self.train_loss,
                meta_loss=self.meta_loss,
                num_classes=self.num_classes,
                weight_fn=self.weight_fn,
                normalize=self.normalize,
                **self._sgd((cls.weight, cls.bias)),
            )
        g = g.to(self.psi.dtype) * self.class_mask
        world = comm.get_world_size()
        if world > 1:  # each rank its own meta images; the meta-gradient is averaged
            all_reduce_sum(g)
            g /= world
        ok = torch.isfinite(g).all()
        self.meta_optimizer.step(g, ok)  # skipped on the device when not finite
        self._skipped += (~ok).to(self._skipped.dtype)
        self._write_buffer()
        self.meta_steps += 1
        self._last_loss = torch.where(ok, loss.to(self._skipped), self._last_loss_or_nan())
        return loss

    def _last_loss_or_nan(self):
        if self._last_loss is None:
            return torch.full((), float("nan"), device=self._skipped.device)
        return self._last_loss

    def _set_frequency_groups(self, counts):
        """Group members, rarest and most frequent class of the predictor's image counts
        (host lists), taken at the first log (the counts are the predictor's by then, however
        it got them)."""
        labels = frequency_groups(counts)
        self._groups = {g: [i for i, x in enumerate(labels) if x == g] for g in GROUPS}
        self._rarest = min(range(len(counts)), key=counts.__getitem__)
        self._most_frequent = max(range(len(counts)), key=counts.__getitem__)

    def _log(self):
        """Weights summary per frequency group, meta loss and skipped steps: one read."""
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        K = self.num_classes
        parts = [
            self.predictor.class_weights.detach().float(),
            self._last_loss_or_nan().float().reshape(1),
            self._skipped.float().reshape(1),
        ]
        if self._groups is None:
            parts.append(self.predictor.class_image_counts.detach().float())
        values = torch.cat([p.to(parts[0].device) for p in parts]).tolist()  # the one read
        w, loss, skipped = values[:K], values[K], int(values[K + 1])
        if self._groups is None:
            self._set_frequency_groups(values[K + 2 :])
        vals = {}
        for g, members in self._groups.items():
            if members:
                ws = [w[i] for i in members]
                vals[f"meta/weight_{g}_min"] = min(ws)
                vals[f"meta/weight_{g}_mean"] = sum(ws) / len(ws)
                vals[f"meta/weight_{g}_max"] = max(ws)
        vals["meta/weight_rarest"] = w[self._rarest]
        vals["meta/weight_most_frequent"] = w[self._most_frequent]
        if self._last_loss is not None and loss == loss:  # not NaN
            vals["meta/loss"] = loss
        storage.put_scalars(smoothing_hint=False, **vals)
        if skipped:
            logger.warning(
                "Meta Reweigher: %d non-finite meta-gradient(s) since the last log (iteration "
                "%s); those Adam steps were skipped",
                skipped,
                getattr(getattr(self, "trainer", None), "iter", None),
            )
            self._skipped.zero_()

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self):
        return {
            "psi": self.psi.detach().cpu().clone(),
            "optimizer": self.meta_optimizer.state_dict(),
            "meta_steps": self.meta_steps,
            "meta_batches": self.meta_batches,
            "seed": self.seed,
        }

    def load_state_dict(self, state):
        psi = torch.as_tensor(state["psi"])
        if psi.shape != self.psi.shape:
            raise ValueError(
                f"checkpointed Meta Reweigher has {psi.numel()} class weights, the model "
                f"{self.psi.numel()}"
            )
        self._follow_device()
        with torch.no_grad():
            self.psi.copy_(psi)
        self.meta_optimizer.load_state_dict(state["optimizer"])
        self.meta_steps = int(state.get("meta_steps", 0))
        self.meta_batches = int(state.get("meta_batches", 0))
        self.seed = int(state.get("seed", self.seed))
        self._write_buffer()
        if self._meta_iter is not None:
            logger.warning(
                "Meta Reweigher state loaded after training started: the meta sampler is not "
                "rewound"
            )
