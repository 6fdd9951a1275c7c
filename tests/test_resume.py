"""Exact resume: the training data stream continues where it stopped (balms_det/data/resumable.py),
the steps draw the uninterrupted run's random numbers (DataStreamHook), and the checkpoint to
resume from is chosen once (balms_det/engine/resume.py). The two-process runs are in
test_distributed.py."""

import os
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, mixed_aspect_dataset, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from balms_det.data.resumable import build_resumable_train_loader

# small and fast (the CPU is shared); test_distributed.py uses the same
FAST = [
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "TEST.DETECTIONS_PER_IMAGE",
    "10",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "64",
    "DATALOADER.NUM_WORKERS",
    "0",
]
OPTS = [*FAST, "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax", "DATASETS.TEST", "()"]


# ------------------------------------------------------------------------------------------
# The loader alone: batches after a resume are the uninterrupted loader's, no image read to skip
# ------------------------------------------------------------------------------------------
class _Mapper:
    """A mapper that reads nothing, draws from the three global RNGs (as augmentations do) and
    counts its calls (in the main process)."""

    calls = 0

    def __call__(self, d):
        type(self).calls += 1
        return dict(d, r=(random.random(), float(np.random.rand()), float(torch.rand(())[()])))


def _dicts(n=13):
    # landscape (w > h) for every third image: the grouping holds images back at batch ends
    return [
        {"image_id": i, "file_name": f"{i}.png", "width": 40 if i % 3 == 0 else 30, "height": 30}
        for i in range(n)
    ]


def _loader(sampler_kind, grouping, workers, seed=7):
    dicts = _dicts()
    if sampler_kind == "rfs":
        factors = torch.tensor([3.0 if d["width"] > d["height"] else 0.7 for d in dicts])
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        sampler = TrainingSampler(len(dicts), seed=seed)
    return build_resumable_train_loader(
        dicts,
        mapper=_Mapper(),
        sampler=sampler,
        total_batch_size=3 * comm.get_world_size(),
        aspect_ratio_grouping=grouping,
        num_workers=workers,
        seed=seed + 1,
    )


def _take(loader, n):
    it, out, calls = iter(loader), [], []
    for _ in range(n):
        out.append([(d["image_id"], d["r"]) for d in next(it)])
        calls.append(_Mapper.calls)
    return out, calls


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("grouping", [True, False])
@pytest.mark.parametrize("sampler_kind", ["training", "rfs"])
def test_resumed_loader_continues_the_uninterrupted_stream(
    sampler_kind, grouping, rank, monkeypatch
):
    """Rank ``rank`` of 2 processes (its share of the sampler's stream); the resumed loader is
    built afresh and given the state after k batches. Workers 0 and 2 give the same stream."""
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    n, k = 11, 5
    if grouping:  # resume where the grouping holds images back (replayed on indices only)
        probe = _loader(sampler_kind, grouping, 0).stream
        k = next(k for k in range(2, 9) if probe.resume_after(k, 3) or probe.redo)
    _Mapper.calls = 0
    full = _loader(sampler_kind, grouping, 0)
    batches, calls = _take(full, n)
    assert len({i for b in batches for i, _ in b}) > 6  # a real stream, not one image

    state = _loader(sampler_kind, grouping, 0)
    _take(state, k)
    saved = state.state_dict()
    assert saved["batches"] == k

    resumed = _loader(sampler_kind, grouping, 0, seed=99)  # another seed: the state wins
    resumed.load_state_dict(saved)
    _Mapper.calls = 0
    again, resumed_calls = _take(resumed, n - k)
    assert again == batches[k:]
    # nothing read to skip: the images waiting in a bucket at the checkpoint, then new ones
    waiting = len(resumed.stream.redo)
    assert resumed_calls[-1] == calls[-1] - calls[k - 1] + waiting
    assert (waiting > 0) == grouping  # the grouping held images back at batch k

    workers = _loader(sampler_kind, grouping, 2)
    workers.load_state_dict(saved)
    assert _take(workers, n - k)[0] == batches[k:]  # workers prefetching ahead change nothing


def test_mapping_leaves_the_training_rng_alone():
    """Items mapped in the main process draw from their own random numbers: the training
    step's torch/numpy/random streams are those of a run that maps nothing."""
    loader = _loader("training", True, 0)
    seed = 123
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    _take(loader, 3)
    after = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]


def test_grouping_needs_the_annotated_size():
    dicts = _dicts()
    del dicts[4]["width"]
    with pytest.raises(ValueError, match=r"image 4 \('4.png'\) has none"):
        build_resumable_train_loader(
            dicts, mapper=None, total_batch_size=2, aspect_ratio_grouping=True, seed=0
        )


# ------------------------------------------------------------------------------------------
# Training: resume-and-continue ends with the uninterrupted run's weights, bitwise
# ------------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # one order of float sums: bitwise comparisons
    yield
    torch.set_num_threads(n)


def cut_after(full_dir, iteration, resume_dir):
    """The output folder of a run killed right after the checkpoint of ``iteration``."""
    os.makedirs(resume_dir)
    name = f"model_{iteration:07d}.pth"
    shutil.copy(os.path.join(full_dir, name), resume_dir)
    with open(os.path.join(resume_dir, "last_checkpoint"), "w") as f:
        f.write(name)


def assert_same_checkpoint(a, b):
    """Two checkpoint files hold bitwise-equal weights and buffers, optimizer state and
    data-stream position."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    assert sa["iteration"] == sb["iteration"]
    ma, mb = sa["model"], sb["model"]
    assert ma.keys() == mb.keys() and len(ma) > 100
    differ = [k for k in ma if not torch.equal(ma[k], mb[k])]
    assert not differ, differ[:5]
    # DefaultTrainer keeps SimpleTrainer's state under "_trainer"
    oa, ob = (s["trainer"].get("_trainer", s["trainer"])["optimizer"]["state"] for s in (sa, sb))
    assert oa.keys() == ob.keys() and len(oa) > 50
    assert all(torch.equal(oa[i]["momentum_buffer"], ob[i]["momentum_buffer"]) for i in oa)
    da, db = (s["trainer"]["hooks"]["DataStreamHook"] for s in (sa, sb))
    assert da == db and da["data_loader"]["batches"] == sa["iteration"] + 1


def test_yacs_resume_equals_uninterrupted_run_with_aspect_ratio_groups(tmp_path, one_thread):
    """TrainingSampler, aspect-ratio grouping over landscape and square images, balanced
    softmax, 1 process; cut where the grouping holds an image back that the uninterrupted run
    trains on before its end."""
    from balms_det.engine.trainer import BalmsTrainer

    json_file, image_root = mixed_aspect_dataset(tmp_path / "data")
    name = "balms_test_mixed_resume_train"  # (a name of its own: one folder per name)
    register = f'[["{name}", "{json_file}", "{image_root}"]]'
    opts = [*OPTS, "BALMS.DATASETS.REGISTER", register, "DATASETS.TRAIN", f'("{name}",)']
    opts += ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1"]

    np.random.seed(0)  # the sampler's seed (drawn at random: no default_setup here)
    full = BalmsTrainer(tiny_cfg(*opts, output_dir=tmp_path / "full"))
    full.resume_or_load(resume=False)
    full.train()

    stream = full._trainer.data_loader.stream  # the grouping replayed on indices only

    def waiting(batches):
        stream.resume_after(batches, 2)
        return set(stream.redo)

    k = next(k for k in range(2, 5) if waiting(k) - waiting(6))
    cut_after(tmp_path / "full", k - 1, tmp_path / "cut")
    np.random.seed(1)  # another sampler seed, unless the checkpoint's is restored
    resumed = BalmsTrainer(tiny_cfg(*opts, output_dir=tmp_path / "cut"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == k
    resumed.train()
    assert resumed._trainer.data_loader.stream.redo == tuple(sorted(waiting(k)))
    assert_same_checkpoint(
        tmp_path / "full" / "model_final.pth", tmp_path / "cut" / "model_final.pth"
    )


def shrink_lazy(cfg):
    """The tiny LazyConfig smaller (as FAST for yacs), without evaluation."""
    from detectron2.layers import ShapeSpec

    cfg.dataloader.pop("evaluator")
    cfg.model.proposal_generator.post_nms_topk = (50, 30)
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.model.roi_heads.box_head.fc_dims = [64, 64]
    cfg.model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
    return cfg


def _lazy_cfg(output_dir):
    """The tiny LazyConfig, smaller, RepeatFactorTrainingSampler with a seed drawn at random
    (restored from the checkpoint), 6 iterations, a checkpoint every 3, no evaluation."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig
    from detectron2.data import get_detection_dataset_dicts

    cfg = LazyConfig.load(os.path.join(CONFIGS, "lazy", "mask_rcnn_R18_FPN_synthetic_tiny.py"))
    over = [f"train.output_dir={output_dir}", "train.max_iter=6", "train.checkpointer.period=3"]
    cfg = shrink_lazy(LazyConfig.apply_overrides(cfg, over))
    factors = L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts=L(get_detection_dataset_dicts)(names="synth_lt_tiny_train"),
        repeat_thresh=0.3,
    )
    cfg.dataloader.train.sampler = L(RepeatFactorTrainingSampler)(repeat_factors=factors)
    return cfg


def test_lazy_resume_equals_uninterrupted_run(tmp_path, one_thread):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lazy_train_net", os.path.join(REPO, "tools", "lazy_train_net.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    full = tool.do_train(_lazy_cfg(tmp_path / "full"))
    seed = full.data_loader.stream.sampler._seed
    cut_after(tmp_path / "full", 2, tmp_path / "cut")
    np.random.seed(seed % 2**32 + 1)  # another random sampler seed, unless restored
    resumed = tool.do_train(_lazy_cfg(tmp_path / "cut"), resume=True)
    assert resumed.start_iter == 3 and resumed.data_loader.stream.sampler._seed == seed
    assert_same_checkpoint(
        tmp_path / "full" / "model_final.pth", tmp_path / "cut" / "model_final.pth"
    )


# ------------------------------------------------------------------------------------------
# Which checkpoint: chosen once, damaged or foreign files skipped with a warning naming them
# ------------------------------------------------------------------------------------------
class _TrainerState:
    def __init__(self):
        self.iter = 0

    def state_dict(self):
        return {"iteration": self.iter}

    def load_state_dict(self, state):
        self.iter = state["iteration"]


def _checkpointer(save_dir):
    torch.manual_seed(0)
    return DetectionCheckpointer(torch.nn.Linear(64, 64), str(save_dir), trainer=_TrainerState())


def _save(ck, name, iteration):
    ck.checkpointables["trainer"].iter = iteration
    ck.save(name, iteration=iteration)  # also writes last_checkpoint
    return os.path.join(ck.save_dir, name + ".pth")


@pytest.fixture
def folder(tmp_path):
    """model_0000001, model_0000003 and model_final (iteration 5): last_checkpoint names it."""
    ck = _checkpointer(tmp_path)
    paths = {i: _save(ck, n, i) for i, n in ((1, "model_0000001"), (3, "model_0000003"))}
    paths[5] = _save(ck, "model_final", 5)
    return ck, paths


def _choice(ck, caplog):
    from balms_det.engine.resume import resume_checkpoint

    caplog.clear()
    with caplog.at_level("WARNING", logger="balms_det"):
        return resume_checkpoint(ck)


def test_newest_checkpoint_chosen_and_damaged_ones_skipped(folder, caplog, monkeypatch):
    ck, paths = folder
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    assert _choice(ck, caplog) == paths[5] and not caplog.text
    # no candidate is read into memory: the pickled structure, memory-mapped
    assert len(loads) == 3 and all(k.get("mmap") for k in loads)

    data = bytearray(open(paths[5], "rb").read())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the weights: torch.load does not notice
    open(paths[5], "wb").write(bytes(data))
    assert _choice(ck, caplog) == paths[3]
    assert "model_final.pth" in caplog.text and "CRC-32" in caplog.text

    open(paths[3], "wb").write(open(paths[3], "rb").read()[:1000])  # truncated
    open(paths[5], "wb").write(b"\0" * len(data))  # zero-filled (a crash while flushing)
    assert _choice(ck, caplog) == paths[1]
    assert "model_0000003.pth" in caplog.text and "cannot be read" in caplog.text
    assert "model_final.pth" in caplog.text

    torch.save({"weights": torch.zeros(3)}, paths[1])  # loads, but is not a checkpoint
    with pytest.raises(RuntimeError, match="no checkpoint in .* can be resumed from") as e:
        _choice(ck, caplog)
    assert all(os.path.basename(p) in str(e.value) for p in paths.values())
    assert "no 'model' entry" in str(e.value)


def test_a_garbage_last_checkpoint_file_falls_back_to_the_newest_by_iteration(folder, caplog):
    ck, paths = folder
    last = os.path.join(ck.save_dir, "last_checkpoint")
    with open(last, "wb") as f:
        f.write(bytes(range(128, 256)))  # binary: Detectron2 raises UnicodeDecodeError
    assert _choice(ck, caplog) == paths[5]  # model_final by the iteration it holds
    assert "last_checkpoint names no checkpoint" in caplog.text
    # a model_final.pth older than a periodic checkpoint (a run resumed with a longer schedule)
    _save(ck, "model_0000009", 9)
    with open(last, "w") as f:
        f.write("model_0000042.pth")  # missing
    assert _choice(ck, caplog) == os.path.join(ck.save_dir, "model_0000009.pth")
    assert "model_0000042.pth" in caplog.text


def test_a_checkpoint_without_the_trainer_state_is_not_resumed_from(folder, caplog):
    ck, paths = folder
    torch.save({"model": ck.model.state_dict()}, paths[5])  # weights only (an export)
    assert _choice(ck, caplog) == paths[3]
    assert "not a training checkpoint (no 'trainer' state)" in caplog.text


def test_no_checkpoint_means_a_fresh_start(tmp_path, caplog):
    assert _choice(_checkpointer(tmp_path), caplog) is None
