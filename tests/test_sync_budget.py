"""Host-device sync budget: the calls that would make a GPU wait for the host (``item``,
``bool(t)``, ``tolist``, boolean-mask indexing, ``nonzero``, copies to the CPU, ...) made by
balms-det's own code in one training step of every LOSS and in one Meta Reweigher step,
counted on CPU by ``balms_det.sync_counter.SyncCounter``. Detectron2's own reads are the same
with its StandardROIHeads and are not counted."""

import pytest
import torch
from conftest import tiny_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from balms_det.modeling.roi_heads import (
    LOSS_FAMILIES,
    BalmsFastRCNNOutputLayers,
    resolve_class_counts,
)
from balms_det.sync_counter import SyncCounter

FAST = [
    "MODEL.MASK_ON",
    "False",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "40",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "MODEL.ROI_BOX_HEAD.BALMS.DIAGNOSTICS_PERIOD",
    "4",
]
# what balms-det's code may add per training step (0) and per diagnostics iteration (one
# read of the group means)
BUDGET_STEP, BUDGET_DIAGNOSTICS = 0, 1


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_cfg(*FAST)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:2]]
    return cfg, model, batch


def _with_loss(setup, loss):
    cfg, model, batch = setup
    heads = model.roi_heads
    c = tiny_cfg(*FAST, "MODEL.ROI_BOX_HEAD.BALMS.LOSS", loss)
    heads.box_predictor = BalmsFastRCNNOutputLayers(c, heads.box_head.output_shape)
    return model, batch


@pytest.fixture(scope="module")
def roi_inputs(setup):
    """Images, backbone features, proposals and targets of the batch (Detectron2's part of the
    step, the same for every LOSS), for training steps of the ROI heads alone."""
    _, model, batch = setup
    with torch.no_grad(), EventStorage(0):
        images = model.preprocess_image(batch)
        gt = [x["instances"] for x in batch]
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, gt)
    return images, features, proposals, gt


def _count(step, it, backward=True):
    with EventStorage(it), SyncCounter() as sc:
        losses = step()
        if backward:
            sum(losses.values()).backward()
    return sc


def test_full_training_step_adds_no_sync(setup):
    """The whole model's training forward (the backward runs no Python code of balms-det: the
    per-LOSS steps below run it through the ROI heads)."""
    _, model, batch = setup
    resolve_class_counts(model)  # what BalmsTrainer does before training (a read, once)
    sc = _count(lambda: model(batch), 1, backward=False)  # the first step
    assert sc.count <= BUDGET_STEP, sc.report()


@pytest.mark.parametrize("loss", list(LOSS_FAMILIES))
def test_training_step_adds_no_sync(setup, roi_inputs, loss):
    model, _ = _with_loss(setup, loss)
    pred = model.roi_heads.box_predictor

    def step():
        return model.roi_heads(*roi_inputs)[1]

    resolve_class_counts(model)  # what BalmsTrainer does before training (a read, once)
    sc = _count(step, 1)  # the first step
    assert sc.count <= BUDGET_STEP, f"{loss}:\n{sc.report()}"
    # non-trivial class weights, written through the predictor (no read-back)
    pred.set_class_weights(torch.linspace(0.5, 2.0, pred.num_classes))
    sc = _count(step, 2)
    assert sc.count <= BUDGET_STEP, f"{loss} with class weights:\n{sc.report()}"
    # a diagnostics iteration (DIAGNOSTICS_PERIOD 4): one read of the three group means
    sc = _count(step, 4)
    assert sc.count <= BUDGET_DIAGNOSTICS, f"{loss} diagnostics:\n{sc.report()}"


def test_meta_reweigher_step_syncs_only_on_its_log_period(setup, roi_inputs):
    """Meta steps read nothing back; the log every LOG_PERIOD iterations reads once."""
    import types

    from balms_det.engine.meta_reweigher import MetaReweigher

    cfg, _, _ = setup
    model, _ = _with_loss(setup, "balanced_softmax")
    opt = torch.optim.SGD(model.roi_heads.parameters(), lr=0.01, momentum=0.9)
    hook = MetaReweigher(
        model=model,
        meta_dataset=DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:8],
        meta_mapper=DatasetMapper(cfg, is_train=True),
        optimizer=opt,
        meta_batch_size=2,
        seed=0,
        log_period=2,
    )
    hook.trainer = types.SimpleNamespace(iter=0, max_iter=100)
    hook.before_train()
    counts = []
    for it in range(2):
        hook.trainer.iter = it
        with EventStorage(it) as storage:
            sum(model.roi_heads(*roi_inputs)[1].values()).backward()
            opt.step()
            opt.zero_grad()
            with SyncCounter() as sc:
                hook.after_step()
        counts.append(sc.count)
    assert counts == [0, 1], sc.report()
    assert hook.meta_steps == 2 and "meta/loss" in storage.latest()


def test_counter_sees_each_kind_of_read_in_package_code_only():
    """Code compiled under a balms_det file name is counted, once per read; the same code
    elsewhere is not."""
    import os

    import balms_det

    src = """
def reads(t, m, r):
    t[0].item(); t.tolist(); bool(t[0] > 0); float(t[0]); int(t[1]); t.numpy()
    t[m]; t[m] = 0.0; t.nonzero(); torch.nonzero(t); torch.where(m); t.masked_select(m)
    t.repeat_interleave(r); torch.unique(t); t.cpu(); t.to("cpu"); torch.equal(t, t)
    r.bincount()
    return f"{t[0]}"

def free(t, m, r):
    t.to(t.device); t.repeat_interleave(r, output_size=2); t.masked_fill(m, 0.0)
    torch.where(m, t, t); t[r]; t.sum(); t.to("cpu", non_blocking=True)
"""
    t, m, r = (
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([True, False, True]),
        torch.tensor([1, 0, 1]),
    )
    ours = {"torch": torch}
    exec(compile(src, os.path.join(os.path.dirname(balms_det.__file__), "_fake.py"), "exec"), ours)
    theirs = {"torch": torch}
    exec(compile(src, os.path.join(os.path.dirname(__file__), "_fake.py"), "exec"), theirs)
    with SyncCounter() as sc:
        ours["reads"](t.clone(), m, r)
    ops = [e[0] for e in sc.events]
    assert len(ops) == 19, sc.report()  # one per read, the f-string's included
    for op in (
        "Tensor.item",
        "Tensor[mask]",
        "Tensor[mask]=",
        "torch.where(cond)",
        "Tensor.repeat_interleave",
        "Tensor.to(cpu)",
        "Tensor.numpy",
        "torch.equal",
    ):
        assert op in ops, (op, ops)
    with SyncCounter() as sc:
        ours["free"](t.clone(), m, r)
        theirs["reads"](t.clone(), m, r)
    assert sc.count == 0, sc.report()
    assert torch.Tensor.item is torch._C.TensorBase.item  # unpatched on exit
