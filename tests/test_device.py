"""Everything follows the model's device and precision, and multi-process collectives suit the
backend: the predictor, every loss and the Meta Reweigher's look-ahead run with parameters and
inputs on PyTorch's ``meta`` device (a CPU tensor mixed in, or a read of a value, raises
there); the hook's state follows the model; its autocast follows the trainer's; a CPU model
under an NCCL default group goes over Detectron2's gloo group."""

import copy
import logging
import os
import types

import pytest
import torch
import torch.distributed as dist
from conftest import REPO, tiny_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm

from balms_det.engine.device_adam import DeviceAdam
from balms_det.engine.meta_reweigher import MetaReweigher
from balms_det.modeling import roi_heads
from balms_det.modeling.roi_heads import LOSS_FAMILIES, BalmsFastRCNNOutputLayers

FAST = [
    "MODEL.MASK_ON",
    "False",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
    "balanced_softmax",
    "BALMS.META.ENABLED",
    "True",
]
K, R, D = 5, 16, 8


def _predictor(loss, **kw):
    return BalmsFastRCNNOutputLayers(
        ShapeSpec(channels=D),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=K,
        loss=loss,
        class_counts=[50, 20, 8, 3, 1],
        num_train_images=60,
        **kw,
    )


@pytest.mark.parametrize("loss", list(LOSS_FAMILIES))
def test_predictor_and_every_loss_run_on_the_meta_device(loss, monkeypatch):
    """The predictor's whole ``losses`` (Detectron2's statistics and box loss, which need
    values, stubbed) with class weights, its state updates and inference, on ``meta``."""
    pred = _predictor(loss).to("meta").train()
    monkeypatch.setattr(roi_heads, "_log_classification_stats", lambda *a: None)
    monkeypatch.setattr(pred, "box_reg_loss", lambda *a: torch.zeros((), device="meta"))
    x = torch.randn(R, D, device="meta")
    scores, deltas = pred(x)
    labels = torch.randint(0, K + 1, (R,), device="meta")
    from detectron2.structures import Boxes, Instances

    boxes = Boxes(torch.rand(R, 4, device="meta"))
    inst = Instances((32, 32), gt_classes=labels, proposal_boxes=boxes)
    pred.set_class_weights(torch.rand(K, device="meta"))
    out = pred.losses((scores, deltas), [inst])
    assert out["loss_cls"].device.type == "meta" and out["loss_cls"].dim() == 0
    out["loss_cls"].backward()
    assert pred.cls_score.weight.grad.device.type == "meta"
    for name in ("seesaw_counts", "eqlv2_pos_grad", "class_weights"):
        assert getattr(pred, name).device.type == "meta"
    (probs,) = pred.predict_probs((scores, deltas), [inst])
    assert probs.device.type == "meta" and probs.shape == (R, K + 1)


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_cfg(*FAST)
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model


def _hook(cfg, model, **kw):
    kw.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.01))
    return MetaReweigher(
        model=model,
        meta_dataset=DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:8],
        meta_mapper=DatasetMapper(cfg, is_train=True),
        meta_batch_size=2,
        seed=0,
        **kw,
    )


def _rois(n, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = torch.arange(n) % 13  # every class and background
    return x.to(device), y.to(device)


def test_meta_reweigher_follows_the_model_to_its_device(tiny):
    """Built before the model moves (psi on the CPU), it moves psi, its Adam state and the
    class mask in before_train, and steps there; a loaded state moves too."""
    cfg, model = tiny
    model = copy.deepcopy(model)
    hook = _hook(cfg, model, optimizer=None)
    assert hook.psi.device.type == "cpu"
    model.to("meta")
    hook.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    hook.before_train()
    opt = hook.meta_optimizer
    for t in (hook.psi, hook.class_mask, opt.exp_avg, opt.exp_avg_sq, opt.step_count):
        assert t.device.type == "meta"
    x, y = _rois(26, "meta")
    loss = hook.meta_step(x, y, x, y)
    assert loss.device.type == "meta" and hook.meta_steps == 1
    assert model.roi_heads.box_predictor.class_weights.device.type == "meta"
    # a checkpointed state (CPU tensors) loads onto the device of the model
    state = _hook(cfg, copy.deepcopy(tiny[1])).state_dict()
    hook.load_state_dict(state)
    assert hook.psi.device.type == "meta" and hook.meta_optimizer.exp_avg.device.type == "meta"


def test_meta_reweigher_autocast_follows_the_trainer(tiny):
    from detectron2.engine import AMPTrainer, SimpleTrainer

    cfg, model = tiny
    hook = _hook(cfg, model, amp="float16")
    amp = AMPTrainer.__new__(AMPTrainer)  # its precision is all that is read
    amp.precision = torch.bfloat16
    hook.trainer = types.SimpleNamespace(_trainer=amp, optimizer=hook.optimizer)
    hook.before_train()
    assert hook.amp == torch.bfloat16
    hook.trainer = types.SimpleNamespace(_trainer=SimpleTrainer.__new__(SimpleTrainer))
    hook.before_train()
    assert hook.amp is None  # no AMP in the trainer: none in the meta forward
    hook.amp = torch.bfloat16
    assert hook._autocast().__class__.__name__ == "nullcontext"  # a CPU model: no autocast
    from balms_det.utils import amp_dtype

    assert amp_dtype("bf16") == torch.bfloat16 and amp_dtype(True) == torch.float16
    with pytest.raises(ValueError, match="BALMS.AMP_DTYPE"):
        tiny_cfg("BALMS.AMP_DTYPE", "float8")


def test_non_finite_meta_gradient_skips_the_step_on_the_device(tiny, caplog):
    cfg, model = tiny
    model = copy.deepcopy(model)
    hook = _hook(cfg, model, log_period=1)
    x, y = _rois(26)
    hook.meta_step(x, y, x, y)
    psi, opt = hook.psi.detach().clone(), copy.deepcopy(hook.meta_optimizer.state_dict())
    bad = x.clone()
    bad[0, 0] = float("nan")
    hook.meta_step(bad, y, x, y)  # NaN features: NaN meta-gradient
    assert torch.equal(hook.psi.detach(), psi) and hook.meta_steps == 2
    after = hook.meta_optimizer.state_dict()["state"][0]
    for k in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(after[k], opt["state"][0][k]), k
    from detectron2.utils.events import EventStorage

    hook.trainer = types.SimpleNamespace(iter=1)
    with caplog.at_level(logging.WARNING), EventStorage(1) as storage:
        hook._log()
    assert "1 non-finite meta-gradient" in caplog.text
    assert storage.latest()["meta/loss"][0] == pytest.approx(float(hook._last_loss))
    hook.meta_step(x, y, x, y)
    assert float(hook.meta_optimizer.step_count) == 2 and not torch.equal(hook.psi.detach(), psi)


def test_device_adam_is_torch_adam():
    """The iterates of torch.optim.Adam; a skipped step changes nothing; torch's state loads."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, generator=g) for _ in range(5)]
    p_ref = torch.nn.Parameter(torch.zeros(7))
    ref = torch.optim.Adam([p_ref], lr=0.05)
    p = torch.zeros(7)
    ours = DeviceAdam(p, lr=0.05)
    for i, gr in enumerate(grads):
        p_ref.grad = gr.clone()
        ref.step()
        ours.step(gr)
        assert torch.equal(p, p_ref.detach()), i  # the same arithmetic, bit for bit
        if i == 2:
            frozen = p.clone()
            ours.step(gr * float("nan"), torch.isfinite(gr * float("nan")).all())
            assert torch.equal(p, frozen) and float(ours.step_count) == 3
    other = DeviceAdam(torch.zeros(7), lr=1.0)
    other.load_state_dict(ref.state_dict())
    assert other.lr == 0.05 and float(other.step_count) == 5
    torch.testing.assert_close(other.exp_avg, ref.state[p_ref]["exp_avg"])


# ------------------------------------------------------------------------------------------
# A CPU model under an NCCL default group
# ------------------------------------------------------------------------------------------
@pytest.fixture
def nccl_default(monkeypatch, tmp_path):
    """A one-process gloo group that reports itself as NCCL, a world size of 2, a second gloo
    group standing for Detectron2's, and the groups every all-reduce was given."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        gloo = dist.new_group(backend="gloo")
        real = dist.get_backend
        monkeypatch.setattr(dist, "get_backend", lambda g=None: "nccl" if g is None else real(g))
        monkeypatch.setattr(comm, "_get_global_gloo_group", lambda: gloo)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        groups, all_reduce = [], dist.all_reduce

        def spy(t, *a, group=None, **kw):
            groups.append(group)
            return all_reduce(t, *a, group=group, **kw)

        monkeypatch.setattr(dist, "all_reduce", spy)
        yield gloo, groups
    finally:
        dist.destroy_process_group()


def test_cpu_model_under_nccl_uses_the_gloo_group(tiny, nccl_default):
    from balms_det.distributed import group_for
    from balms_det.engine.trainer import build_ddp_model

    gloo, groups = nccl_default
    cfg, model = tiny
    assert group_for("cpu") is gloo and group_for("cuda") is None
    ddp = build_ddp_model(copy.deepcopy(model), broadcast_buffers=False)
    assert ddp.process_group is gloo and ddp.device_ids is None
    # the per-step all-reduces: Seesaw's counts, EQLv2's statistics, the meta-gradient
    for loss in ("seesaw", "eqlv2"):
        pred = _predictor(loss).train()
        scores = torch.randn(R, K + 1)
        pred._stateful_loss(scores, torch.arange(R) % (K + 1), None)
    hook = _hook(cfg, copy.deepcopy(model))
    x, y = _rois(26)
    hook.meta_step(x, y, x, y)
    assert groups == [gloo, gloo, gloo]


def test_cpu_rehearsal_hides_cuda_from_the_processes(monkeypatch):
    """tools/train_net.py with --num-gpus 2 MODEL.DEVICE cpu launches with CUDA hidden, so
    that Detectron2's launch picks gloo on a machine with GPUs; a CUDA run is left alone."""
    import importlib.util
    import sys

    from balms_det.distributed import hide_cuda_for_cpu_processes

    env = {}
    assert not hide_cuda_for_cpu_processes("cuda", 2, env) and env == {}
    assert not hide_cuda_for_cpu_processes("cpu", 1, env) and env == {}
    assert hide_cuda_for_cpu_processes("cpu", 2, env) and env == {"CUDA_VISIBLE_DEVICES": ""}

    spec = importlib.util.spec_from_file_location(
        "train_net_tool_device", os.path.join(REPO, "tools", "train_net.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    seen = {}
    monkeypatch.setattr(
        tool, "launch", lambda *a, **k: seen.update(env=os.environ.get("CUDA_VISIBLE_DEVICES"))
    )
    tiny_yaml = os.path.join(REPO, "configs", "synthetic", "tiny.yaml")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for device, expected in (("cuda", None), ("cpu", "")):
        argv = ["train_net.py", "--config-file", tiny_yaml, "--num-gpus", "2"]
        monkeypatch.setattr(sys, "argv", argv + ["MODEL.DEVICE", device])
        tool.invoke_main()
        assert seen["env"] == expected, device
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
