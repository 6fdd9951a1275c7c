"""Many processes, same answer: training, evaluation and BTM through Detectron2's launch with
two CPU processes (gloo), as `tools/train_net.py --num-gpus 2 MODEL.DEVICE cpu` runs them."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, tiny_cfg

TINY = os.path.join(CONFIGS, "synthetic", "tiny.yaml")
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


def _tool(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    return p


# ------------------------------------------------------------------------------------------
# Training: tools/train_net.py's main in 2 processes; both ranks end with equal weights
# ------------------------------------------------------------------------------------------
def _load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_net_tool", os.path.join(REPO, "tools", "train_net.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _cli_worker(argv, out_dir):
    """tools/train_net.py's main on this rank, with a trainer that also saves what this rank
    holds at the end (the tool itself saves rank 0's only)."""
    from detectron2.engine import default_argument_parser
    from detectron2.utils import comm

    tool = _load_tool()
    torch.set_num_threads(1)

    class Recording(tool.BalmsTrainer):
        def train(self):
            res = super().train()
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            hooks = [h for h in self._hooks if type(h).__name__ == "MetaReweigher"]
            if hooks:  # psi, the meta optimizer's state and the step count
                state["meta"] = copy.deepcopy(hooks[0].state_dict())
            torch.save(state, os.path.join(out_dir, f"rank{comm.get_rank()}_state.pth"))
            return res

    tool.BalmsTrainer = Recording
    tool.main(default_argument_parser().parse_args(argv))


def _train_two_processes(out_dir, *opts):
    from detectron2.engine import launch

    argv = ["--config-file", TINY, "--num-gpus", "2", "MODEL.DEVICE", "cpu", *FAST]
    argv += ["SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
    argv += [*opts, "OUTPUT_DIR", str(out_dir)]
    launch(_cli_worker, 2, dist_url="auto", args=(argv, str(out_dir)))
    return out_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _train_two_processes(tmp_path_factory.mktemp("train2"))


def _check_equal_ranks(out_dir, meta):
    r0, r1 = (torch.load(out_dir / f"rank{r}_state.pth") for r in (0, 1))
    assert r0.keys() == r1.keys()
    if meta:
        m0, m1 = r0.pop("meta"), r1.pop("meta")
        assert m0["meta_steps"] == m1["meta_steps"] == 3
        assert torch.equal(m0["psi"], m1["psi"]) and m0["psi"].abs().max() > 0
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(m0["optimizer"]["state"][0][k], m1["optimizer"]["state"][0][k])
    # Every parameter and every balms-det buffer is bitwise equal. Plain BatchNorm keeps
    # per-process running statistics (Detectron2's DDP runs with broadcast_buffers=False; use
    # SyncBN or FrozenBN for one set): those alone may differ, and the checkpoint holds rank 0's.
    bn_stats = ("running_mean", "running_var", "num_batches_tracked")
    shared = [k for k in r0 if not k.endswith(bn_stats)]
    assert len(shared) > 100 and all(torch.equal(r0[k], r1[k]) for k in shared)
    saved = torch.load(out_dir / "model_final.pth")["model"]  # written by rank 0
    assert all(torch.equal(saved[k.replace("module.", "", 1)], v) for k, v in r0.items())
    w = r1["module.roi_heads.box_predictor.class_weights"]
    if meta:  # the hook moved the weights, identically on both ranks
        assert not torch.all(w == 1.0)
    else:
        assert torch.all(w == 1.0)


def test_two_process_training_ends_with_equal_weights_on_both_ranks(trained):
    _check_equal_ranks(trained, meta=False)
    assert not (trained / "log.txt.rank2").exists() and (trained / "log.txt.rank1").exists()


def test_two_process_meta_training_ends_with_equal_weights_on_both_ranks(tmp_path):
    meta = ["BALMS.META.ENABLED", "True", "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax"]
    _check_equal_ranks(_train_two_processes(tmp_path, *meta), meta=True)


# ------------------------------------------------------------------------------------------
# Evaluation of one checkpoint with 1 and 2 processes (the command line): one answer
# ------------------------------------------------------------------------------------------
def _detections(path):
    with open(path) as f:
        dets = json.load(f)
    return sorted(
        (
            d["image_id"],
            d["category_id"],
            d["score"],
            tuple(d["bbox"]),
            json.dumps(d["segmentation"]),
        )
        for d in dets
    )


def test_cli_evaluation_with_two_processes_equals_one(trained, tmp_path):
    """The same checkpoint evaluated by the tool's evaluation in this one process and by the
    command line with two processes: the same detections and every metric equal."""
    weights = str(trained / "model_final.pth")
    opts = ["MODEL.DEVICE", "cpu", *FAST, "MODEL.WEIGHTS", weights]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the command (OMP_NUM_THREADS=1): same sums
    try:
        _load_tool().evaluate(tiny_cfg(*opts, output_dir=tmp_path / "eval1"))
    finally:
        torch.set_num_threads(threads)
    p = _tool(
        "--config-file",
        TINY,
        "--num-gpus",
        "2",
        "--eval-only",
        *opts,
        "OUTPUT_DIR",
        str(tmp_path / "eval2"),
    )
    assert "Long-tail results" in p.stdout
    outs = {n: tmp_path / f"eval{n}" / "inference" / "synth_lt_tiny_val" for n in (1, 2)}
    d1 = _detections(outs[1] / "lvis_instances_results.json")
    d2 = _detections(outs[2] / "lvis_instances_results.json")
    assert len(d1) >= 100 and d1 == d2
    m1, m2 = (json.loads((outs[n] / "lvis_metrics.json").read_text()) for n in (1, 2))
    assert m1 == m2 and set(m1) >= {"bbox", "segm"}


# ------------------------------------------------------------------------------------------
# Faults on the way
# ------------------------------------------------------------------------------------------
def test_eval_only_without_weights_is_refused(tmp_path):
    cfg = tiny_cfg("MODEL.WEIGHTS", "", output_dir=tmp_path)
    with pytest.raises(ValueError, match="--eval-only needs trained weights: MODEL.WEIGHTS is"):
        _load_tool().evaluate(cfg)
    assert not (tmp_path / "inference").exists()


def test_resume_skips_a_damaged_last_checkpoint(tmp_path, caplog):
    from balms_det.engine.trainer import BalmsTrainer

    opts = [
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
        *FAST,
    ]
    cfg = tiny_cfg(*opts, output_dir=tmp_path)
    trainer = BalmsTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final, third, first = (
        tmp_path / f for f in ("model_final.pth", "model_0000003.pth", "model_0000001.pth")
    )
    assert first.exists() and third.exists() and final.exists()
    final.write_bytes(b"\0" * final.stat().st_size)  # zero-filled (a crash while flushing)

    again = BalmsTrainer(cfg)
    with caplog.at_level("WARNING"):
        again.resume_or_load(resume=True)
    assert again.start_iter == 4  # from model_0000003.pth (iteration 3)
    assert "model_final.pth" in caplog.text and "cannot be read" in caplog.text

    third.write_bytes(third.read_bytes()[:1000])  # truncated
    again = BalmsTrainer(cfg)
    again.resume_or_load(resume=True)
    assert again.start_iter == 2  # from model_0000001.pth

    first.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match="no checkpoint in .* can be read") as e:
        BalmsTrainer(cfg).resume_or_load(resume=True)
    assert all(f.name in str(e.value) for f in (final, third, first))
