"""Meta Reweigher: meta-gradient math, hook step, resume, bad input (two processes:
tests/test_distributed.py)."""

import copy
import logging
import random

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from torch.nn import functional as F

from balms_det import losses as L
from balms_det.data.meta_sampler import class_balanced_repeat_factors
from balms_det.engine.meta_reweigher import MetaReweigher, lookahead_meta_loss, meta_gradient

# Small and fast: no mask head, few ROIs, tiny batches (the CPU is shared).
FAST = [
    "MODEL.MASK_ON",
    "False",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "BALMS.META.IMS_PER_BATCH",
    "2",
    "TEST.EVAL_PERIOD",
    "0",
    "DATASETS.TEST",
    "()",
    "INPUT.RANDOM_FLIP",
    "none",
    "SEED",
    "0",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "200",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "64",
]


def meta_cfg(*opts, output_dir=None):
    return tiny_cfg(
        "BALMS.META.ENABLED",
        "True",
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
        *FAST,
        *opts,
        output_dir=output_dir,
    )


def _hook(trainer):
    return next(h for h in trainer._hooks if isinstance(h, MetaReweigher))


@pytest.fixture
def one_thread():
    """One torch thread for the training tests: on a shared 2-core CPU, two threads stall at
    every op's barrier whenever another process holds a core (several times slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------
# Math
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["softmax", "sigmoid"])
@pytest.mark.parametrize("weight_fn,normalize", [("sigmoid", True), ("exp", False)])
def test_meta_gradient_matches_central_differences(layout, weight_fn, normalize):
    g = torch.Generator().manual_seed(0)
    K, D, R, Rm = 4, 5, 12, 9
    dt = torch.float64
    C = K + 1 if layout == "softmax" else K
    counts = torch.tensor([40.0, 10.0, 3.0, 1.0])
    tx, mx = torch.randn(R, D, generator=g, dtype=dt), torch.randn(Rm, D, generator=g, dtype=dt)
    ty = torch.tensor([0, 1, 2, 3, 4, 0, 1, 4, 4, 2, 0, 3])
    my = torch.tensor([0, 1, 2, 3, 4, 1, 2, 3, 4])
    W = 0.3 * torch.randn(C, D, generator=g, dtype=dt)
    b = 0.1 * torch.randn(C, generator=g, dtype=dt)
    bufs = (
        0.05 * torch.randn(C, D, generator=g, dtype=dt),
        0.05 * torch.randn(C, generator=g, dtype=dt),
    )
    psi0 = 0.5 * torch.randn(K, generator=g, dtype=dt)
    if layout == "softmax":

        def train_loss(z, y, w):
            return L.balanced_softmax_loss(z, y, counts, weights=w)

        meta_loss = L.softmax_loss
    else:

        def train_loss(z, y, w):
            return L.balanced_sigmoid_loss(z, y, counts, 60, weights=w)

        meta_loss = L.sigmoid_loss
    kw = dict(
        train_loss=train_loss,
        meta_loss=meta_loss,
        lr=0.5,
        num_classes=K,
        weight_fn=weight_fn,
        normalize=normalize,
        weight_decay=1e-3,
        momentum=0.9,
        momentum_buffers=bufs,
    )
    grad, _ = meta_gradient(psi0, tx, ty, mx, my, W, b, **kw)
    eps = 1e-6
    fd = torch.zeros(K, dtype=dt)
    for c in range(K):
        e = torch.zeros(K, dtype=dt)
        e[c] = eps
        with torch.no_grad():
            fd[c] = (
                lookahead_meta_loss(psi0 + e, tx, ty, mx, my, W, b, **kw)
                - lookahead_meta_loss(psi0 - e, tx, ty, mx, my, W, b, **kw)
            ) / (2 * eps)
    assert grad.abs().max() > 1e-6  # a real signal
    rel = (grad - fd).norm() / fd.norm()
    assert rel < 1e-3, (grad, fd)


def _toy_model(cfg):
    from balms_det.engine.trainer import BalmsTrainer

    torch.manual_seed(0)
    return BalmsTrainer.build_model(cfg)


@pytest.mark.parametrize("normalize", [True, False])
def test_meta_step_direction_hand_checked(normalize):
    """All weights equal (psi = 0), meta batch = training batch, classifier at zero, every ROI
    with the same feature e_0, labels (0, 0, 0, 1), K = 12 softmax classes (13 columns).

    With p = 1/13 everywhere and v_c = p - onehot(c), the per-ROI gradient of class c w.r.t.
    (W, b) is v_c [e_0; 1] (squared norm factor 2), v_a . v_c = [a == c] - 1/13, so with
    G_c = n_c v_c and g = sum_c G_c: g.G_c = n_c (n_c - N/13), i.e. 105/13 (class 0) and
    9/13 (class 1), |g|^2 = 114/13. To first order in lr:
    * unnormalised: dL/dpsi_c = -(lr / R^2) * 2 * g.G_c * sigmoid'(0): both classes go up;
    * normalised (mean foreground weight 1): w~_i = w_{y_i} N_fg / sum_fg w, so
      dL/dpsi_c = -(lr / R^2) * 2 * (g.G_c - n_c/N_fg |g|^2) * sigmoid'(0) / w0 = -/+ 1.5 *
      lr / 16 for classes 0 / 1: the majority label of the ambiguous feature goes up, the
      minority one down.
    Classes absent from both batches get zero gradient and stay at 0 (Adam moves nothing).
    """
    cfg = tiny_cfg(
        "BALMS.META.ENABLED", "True", "BALMS.META.NORMALIZE", str(normalize), "DATASETS.TEST", "()"
    )
    model = _toy_model(cfg)
    pred = model.roi_heads.box_predictor
    with torch.no_grad():
        pred.cls_score.weight.zero_()
        pred.cls_score.bias.zero_()
    lr = 1e-3
    opt = torch.optim.SGD(pred.cls_score.parameters(), lr=lr)
    hook = MetaReweigher(cfg, model, opt)
    K = pred.num_classes
    x = torch.zeros(4, pred.cls_score.in_features)
    x[:, 0] = 1.0
    y = torch.tensor([0, 0, 0, 1])

    grad, _ = meta_gradient(
        hook.psi,
        x,
        y,
        x,
        y,
        pred.cls_score.weight,
        pred.cls_score.bias,
        train_loss=hook.train_loss,
        meta_loss=hook.meta_loss,
        lr=lr,
        num_classes=K,
        normalize=normalize,
    )
    if normalize:
        expected = torch.tensor([-1.5, 1.5]) * lr / 16
    else:
        expected = -torch.tensor([105 / 13, 9 / 13]) * 2 * 0.25 * lr / 16
    torch.testing.assert_close(grad[:2], expected, rtol=1e-2, atol=0)
    assert torch.all(grad[2:] == 0)

    hook.meta_step(x, y, x, y)
    psi = hook.psi.detach()
    assert psi[0] > 0.009  # Adam's first step: lr_meta * sign
    assert (psi[1] < -0.009) if normalize else (psi[1] > 0.009)
    assert torch.all(psi[2:] == 0)
    torch.testing.assert_close(pred.class_weights, torch.sigmoid(psi))
    if normalize:  # the predictor's loss now weights class 0 above 1 (mean fg weight 1)
        w = pred.roi_weights(y)
        assert w[0] > 1 > w[3]
        torch.testing.assert_close(w.mean(), torch.tensor(1.0))


def test_class_balanced_repeat_factors():
    def img(*cats):
        return {"annotations": [{"category_id": c} for c in cats]}

    # f(A) = 3/4, f(B) = f(C) = 1/4 -> r = 4/3, 4/3, 4, 4 (max over the image's classes)
    dicts = [img(0), img(0), img(0, 1), img(2, 2)]
    r = class_balanced_repeat_factors(dicts, normalize=False)
    torch.testing.assert_close(r, torch.tensor([4 / 3, 4 / 3, 4.0, 4.0]))
    rn = class_balanced_repeat_factors(dicts)
    torch.testing.assert_close(rn, r * 4 / r.sum())


def test_softmax_with_class_weights_is_weighted_cross_entropy():
    """LOSS softmax is Detectron2's cross-entropy until class weights are set; then each ROI's
    cross-entropy is weighted (foreground weights renormalised to mean 1, background 1)."""
    from detectron2.structures import Boxes, Instances

    cfg = tiny_cfg("BALMS.META.ENABLED", "True", "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "softmax")
    model = _toy_model(cfg)
    pred = model.roi_heads.box_predictor
    MetaReweigher(cfg, model, dataset_dicts=[{"annotations": [{"category_id": 0}]}])
    assert not pred.use_sigmoid_ce  # Detectron2's flag keeps its own meaning
    z = torch.randn(6, 13)
    y = torch.tensor([0, 3, 12, 5, 12, 0])
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 8, 8]] * 6))
    inst.gt_boxes = Boxes(torch.tensor([[1.0, 1, 8, 8]] * 6))
    inst.gt_classes = y
    deltas = torch.zeros(6, 12 * 4)
    torch.testing.assert_close(pred.losses((z, deltas), [inst])["loss_cls"], F.cross_entropy(z, y))
    pred.class_weights[0] = 3.0
    w = torch.tensor([3.0, 1, 1, 1, 1, 3.0])
    w[[0, 1, 3, 5]] *= 4 / w[[0, 1, 3, 5]].sum()  # mean foreground weight 1
    expected = (F.cross_entropy(z, y, reduction="none") * w).mean()
    torch.testing.assert_close(pred.losses((z, deltas), [inst])["loss_cls"], expected)


def test_meta_features_keep_bn_stats_and_cache(tmp_path, one_thread):
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg = meta_cfg("BALMS.TRAINABLE_PARAMS", "['cls_score']", "BALMS.META.CACHE_FEATURES", "True")
    model = _toy_model(cfg)
    model.train()
    hook = MetaReweigher(cfg, model)
    mapper = DatasetMapper(cfg, True)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get("synth_lt_tiny_train")[:2]]
    bn_before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }
    x1, y1 = hook.meta_features(batch)
    x2, y2 = hook.meta_features(batch)
    assert len(hook.cache) == 2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape[0] == y1.shape[0] > 0 and x1.shape[1] == hook.predictor.cls_score.in_features
    hook.cache = None  # uncached path: train-mode BN with batch statistics, stats restored
    hook.meta_features(batch)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in bn_before.items())


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_loss_that_cannot_take_weights_is_rejected(tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    cfg = meta_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "softmax",
        "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE",
        "True",
        output_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        BalmsTrainer(cfg)


def test_balanced_meta_loss_of_a_softmax_loss_needs_no_image_count(tmp_path):
    """META_LOSS balanced with balanced softmax: the trainer builds (the counts are the
    training set's; the number of images is needed only by the sigmoid family's balanced
    loss, and was refused for want of it after the counts began to be read lazily)."""
    from balms_det.engine.trainer import BalmsTrainer

    cfg = meta_cfg(
        "BALMS.META.META_LOSS",
        "balanced",
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
        output_dir=tmp_path,
    )
    pred = BalmsTrainer(cfg).model.roi_heads.box_predictor
    assert not bool((pred.class_counts == 1).all()) and pred.class_counts.sum() > 0


def test_unregistered_meta_dataset_is_rejected(tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    cfg = meta_cfg("BALMS.META.DATASET", "no_such_meta_set", output_dir=tmp_path)
    with pytest.raises(KeyError, match="no_such_meta_set"):
        BalmsTrainer(cfg)


def test_cache_needs_frozen_features():
    cfg = meta_cfg("BALMS.META.CACHE_FEATURES", "True")
    with pytest.raises(ValueError, match="CACHE_FEATURES"):
        MetaReweigher(cfg, _toy_model(cfg))


def test_meta_set_missing_classes_stay_put_with_warning():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    train = DatasetCatalog.get("synth_lt_tiny_train")
    counts = np.zeros(12)
    for d in train:
        for c in {a["category_id"] for a in d["annotations"]}:
            counts[c] += 1
    drop = sorted(np.argsort(counts, kind="stable")[:2].tolist())  # the two rarest classes
    part = [d for d in train if not {a["category_id"] for a in d["annotations"]} & set(drop)]
    name = "synth_lt_tiny_meta_partial"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(part))
    cfg = meta_cfg("BALMS.META.DATASET", name)
    model = _toy_model(cfg)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("balms_det.engine.meta_reweigher")
    log.addHandler(handler)
    try:
        hook = MetaReweigher(cfg, model, torch.optim.SGD(model.parameters(), lr=0.02))
    finally:
        log.removeHandler(handler)
    msg = " ".join(r.getMessage() for r in records)
    names = MetadataCatalog.get("synth_lt_tiny_train").thing_classes
    assert all(names[c] in msg for c in drop), msg
    assert hook.missing_classes == drop
    g = torch.Generator().manual_seed(1)
    D = model.roi_heads.box_predictor.cls_score.in_features
    y = torch.arange(13).repeat(3)
    for _ in range(3):
        hook.meta_step(torch.randn(39, D, generator=g), y, torch.randn(39, D, generator=g), y)
    psi = hook.psi.detach()
    assert torch.all(psi[drop] == 0.0)
    keep = [c for c in range(12) if c not in drop]
    assert torch.all(psi[keep] != 0.0)


# ------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------
class _Killed(Exception):
    pass


class _IterBatches:
    """Training batches as a function of the iteration (Detectron2's loader restarts its
    stream on resume, which would make the two runs see different data)."""

    def __init__(self, batches):
        self.batches = batches
        self.start = 0

    def __iter__(self):
        i = self.start
        while True:
            yield copy.deepcopy(self.batches[i % len(self.batches)])
            i += 1


def _resumable_trainer(cfg, kill_after=None):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.engine import HookBase

    from balms_det.engine.trainer import BalmsTrainer

    class Seed(HookBase):
        def before_step(self):
            it = self.trainer.iter
            torch.manual_seed(1000 + it)
            np.random.seed(1000 + it)
            random.seed(1000 + it)

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter == kill_after:
                raise _Killed()

    class Trainer(BalmsTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            mapper = DatasetMapper(cfg, True)
            dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:8]
            mapped = [mapper(d) for d in dicts]
            return _IterBatches([mapped[i : i + 2] for i in range(0, 8, 2)])

        def build_hooks(self):
            hooks = super().build_hooks()
            hooks.insert(0, Seed())
            if kill_after is not None:
                hooks.append(Kill())  # after the PeriodicCheckpointer
            return hooks

    torch.manual_seed(0)
    return Trainer(cfg)


def test_kill_and_resume_matches_uninterrupted(tmp_path, one_thread):
    k = 2
    opts = ["SOLVER.MAX_ITER", str(2 * k), "SOLVER.CHECKPOINT_PERIOD", str(k)]

    full = _resumable_trainer(meta_cfg(*opts, output_dir=tmp_path / "full"))
    full.resume_or_load(resume=False)
    full.train()

    first = _resumable_trainer(meta_cfg(*opts, output_dir=tmp_path / "cut"), kill_after=k - 1)
    first.resume_or_load(resume=False)
    with pytest.raises(_Killed):
        first.train()
    del first
    second = _resumable_trainer(meta_cfg(*opts, output_dir=tmp_path / "cut"))
    second.resume_or_load(resume=True)
    assert second.start_iter == k
    second._trainer.data_loader.start = second.start_iter
    second.train()

    a, b = _hook(full), _hook(second)
    assert a.meta_steps == b.meta_steps == 2 * k and a.meta_batches == b.meta_batches
    tol = dict(rtol=0, atol=1e-6)
    torch.testing.assert_close(b.psi.detach(), a.psi.detach(), **tol)
    wa = full.model.roi_heads.box_predictor.class_weights
    wb = second.model.roi_heads.box_predictor.class_weights
    torch.testing.assert_close(wb, wa, **tol)
    sa, sb = a.meta_optimizer.state_dict()["state"][0], b.meta_optimizer.state_dict()["state"][0]
    assert float(sa["step"]) == float(sb["step"]) == 2 * k
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(sb[key], sa[key], **tol)
    assert a.psi.detach().abs().max() > 0
