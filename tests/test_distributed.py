"""Many processes, same answer: training, evaluation and BTM through Detectron2's launch with
two CPU processes (gloo), as `tools/train_net.py --num-gpus 2 MODEL.DEVICE cpu` runs them."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, mixed_aspect_dataset, tiny_cfg
from test_resume import FAST, assert_same_checkpoint

TINY = os.path.join(CONFIGS, "synthetic", "tiny.yaml")
LAZY_TINY = os.path.join(CONFIGS, "lazy", "mask_rcnn_R18_FPN_synthetic_tiny.py")


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
# Training in 2 processes (one launch, four runs): tools/train_net.py's main with the Meta
# Reweigher, RepeatFactorTrainingSampler and aspect-ratio groups, then resumed after its first
# checkpoint; tools/lazy_train_net.py with TrainingSampler, then resumed. Both ranks end with
# equal weights, the resumed runs with the uninterrupted ones', and the end-of-training
# evaluation is that of the saved checkpoint (test_cli_evaluation_... below).
# ------------------------------------------------------------------------------------------
def _load_tool(name="train_net"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _save_rank_state(out_dir, model, hooks=()):
    """What this rank holds at the end (the tools save rank 0's only)."""
    from detectron2.utils import comm

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = [h for h in hooks if type(h).__name__ == "MetaReweigher"]
    if meta:  # psi, the meta optimizer's state and the step count
        state["meta"] = copy.deepcopy(meta[0].state_dict())
    torch.save(state, os.path.join(out_dir, f"rank{comm.get_rank()}_state.pth"))


def _two_process_worker(yacs_argv, lazy_argv, out):
    from detectron2.engine import default_argument_parser
    from detectron2.utils import comm
    from test_resume import cut_after, shrink_lazy

    torch.set_num_threads(1)
    parse = default_argument_parser().parse_args
    tool = _load_tool()

    class Recording(tool.BalmsTrainer):
        def train(self):
            res = super().train()
            _save_rank_state(self.cfg.OUTPUT_DIR, self.model, self._hooks)
            return res

    tool.BalmsTrainer = Recording
    tool.main(parse([*yacs_argv, "OUTPUT_DIR", out["yacs"]]))
    if comm.is_main_process():
        cut_after(out["yacs"], 1, out["yacs_cut"])
    else:  # the main process chooses the checkpoint for all: rank 1 reads no candidate
        import balms_det.engine.resume as resume

        def _must_not_run(checkpointer):
            raise AssertionError("rank 1 chose a checkpoint of its own")

        resume.newest_loadable_checkpoint = _must_not_run
    comm.synchronize()
    tool.main(parse(["--resume", *yacs_argv, "DATASETS.TEST", "()", "OUTPUT_DIR", out["yacs_cut"]]))

    lazy = _load_tool("lazy_train_net")
    for key, resume in (("lazy", False), ("lazy_cut", True)):
        cfg = shrink_lazy(lazy.setup(parse([*lazy_argv, f"train.output_dir={out[key]}"])))
        trainer = lazy.do_train(cfg, resume=resume)
        _save_rank_state(out[key], trainer.model)
        if not resume and comm.is_main_process():
            cut_after(out["lazy"], 1, out["lazy_cut"])
        comm.synchronize()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from detectron2.engine import launch

    root = tmp_path_factory.mktemp("train2")
    out = {k: str(root / k) for k in ("yacs", "yacs_cut", "lazy", "lazy_cut")}
    json_file, image_root = mixed_aspect_dataset(root / "data")
    # the model, data and loss of the yacs runs (the evaluation test reuses them)
    opts = ["MODEL.DEVICE", "cpu", *FAST, "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax"]
    opts += [
        "BALMS.DATASETS.REGISTER",
        f'[["balms_test_mixed_train", "{json_file}", "{image_root}"]]',
    ]
    opts += ["DATASETS.TRAIN", '("balms_test_mixed_train",)']
    yacs = ["--config-file", TINY, "--num-gpus", "2", *opts, "SOLVER.IMS_PER_BATCH", "4"]
    yacs += ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"]
    yacs += ["DATALOADER.REPEAT_THRESHOLD", "0.3", "BALMS.META.ENABLED", "True"]
    yacs += ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0"]
    lazy = ["--config-file", LAZY_TINY, "--num-gpus", "2", "train.max_iter=4"]
    lazy += ["train.checkpointer.period=2"]
    launch(_two_process_worker, 2, dist_url="auto", args=(yacs, lazy, out))
    return {"yacs_opts": opts, **{k: root / k for k in out}}


def _check_equal_ranks(out_dir, meta, synced):
    r0, r1 = (torch.load(out_dir / f"rank{r}_state.pth") for r in (0, 1))
    assert r0.keys() == r1.keys()
    if meta:
        m0, m1 = r0.pop("meta"), r1.pop("meta")
        assert m0["meta_steps"] == m1["meta_steps"] == 4
        assert torch.equal(m0["psi"], m1["psi"]) and m0["psi"].abs().max() > 0
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(m0["optimizer"]["state"][0][k], m1["optimizer"]["state"][0][k])
    # Every parameter and every balms-det buffer is bitwise equal. Plain BatchNorm keeps
    # per-process running statistics in training (Detectron2's DDP runs with
    # broadcast_buffers=False); an evaluation copies the main process's into every process
    # (``synced``: every tensor equal), and the checkpoint holds rank 0's.
    bn_stats = ("running_mean", "running_var", "num_batches_tracked")
    shared = [k for k in r0 if synced or not k.endswith(bn_stats)]
    assert len(shared) > 100 and all(torch.equal(r0[k], r1[k]) for k in shared)
    assert synced or not all(torch.equal(r0[k], r1[k]) for k in r0)  # BN stats did differ
    saved = torch.load(out_dir / "model_final.pth")["model"]  # written by rank 0
    assert all(torch.equal(saved[k.replace("module.", "", 1)], v) for k, v in r0.items())
    w = r1["module.roi_heads.box_predictor.class_weights"]
    if meta:  # the hook moved the weights, identically on both ranks
        assert not torch.all(w == 1.0)
    else:
        assert torch.all(w == 1.0)


def test_two_process_meta_training_ends_with_equal_weights_on_both_ranks(runs):
    _check_equal_ranks(runs["yacs"], meta=True, synced=True)
    assert not (runs["yacs"] / "log.txt.rank2").exists()
    assert (runs["yacs"] / "log.txt.rank1").exists()


def test_two_process_lazy_training_ends_with_equal_weights_on_both_ranks(runs):
    _check_equal_ranks(runs["lazy"], meta=False, synced=False)


@pytest.mark.parametrize("route", ["yacs", "lazy"])
def test_two_process_resume_equals_the_uninterrupted_run(runs, route):
    assert_same_checkpoint(
        runs[route] / "model_final.pth", runs[f"{route}_cut"] / "model_final.pth"
    )
    # rank 1 too, but for its BatchNorm statistics: a resume starts them from the checkpoint's
    a, b = (torch.load(runs[k] / "rank1_state.pth") for k in (route, f"{route}_cut"))
    keys = [k for k in a if k != "meta" and "running_" not in k and "batches_tracked" not in k]
    assert len(keys) > 100 and all(torch.equal(a[k], b[k]) for k in keys)


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


def test_cli_evaluation_with_two_processes_equals_one_and_the_end_of_training(runs, tmp_path):
    """The checkpoint of the 2-process run evaluated by the tool's evaluation in this one
    process and by the command line with two processes (while Detectron2's default port is
    taken: the tool picks a free one): the same detections and every metric equal, and equal
    to those the 2-process run printed at its end (its rank 1 evaluated with rank 0's
    BatchNorm statistics, the checkpoint's)."""
    import socket

    from detectron2.engine import default_argument_parser

    weights = str(runs["yacs"] / "model_final.pth")
    opts = [*runs["yacs_opts"], "MODEL.WEIGHTS", weights]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the command (OMP_NUM_THREADS=1): same sums
    try:
        _load_tool().evaluate(tiny_cfg(*opts, output_dir=tmp_path / "eval1"))
    finally:
        torch.set_num_threads(threads)
    port = int(default_argument_parser().get_default("dist_url").rsplit(":", 1)[1])
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", port))
        busy.listen()
    except OSError:
        pass  # taken already: the same situation
    cli = ["--config-file", TINY, "--num-gpus", "2", "--eval-only", *opts]
    try:
        p = _tool(*cli, "OUTPUT_DIR", str(tmp_path / "eval2"))
    finally:
        busy.close()
    assert "Long-tail results" in p.stdout
    outs = {n: tmp_path / f"eval{n}" / "inference" / "synth_lt_tiny_val" for n in (1, 2)}
    outs["train"] = runs["yacs"] / "inference" / "synth_lt_tiny_val"
    d = {n: _detections(o / "lvis_instances_results.json") for n, o in outs.items()}
    assert len(d[1]) >= 100 and d[1] == d[2] == d["train"]
    m = {n: json.loads((o / "lvis_metrics.json").read_text()) for n, o in outs.items()}
    assert m[1] == m[2] == m["train"] and set(m[1]) >= {"bbox", "segm"}


# ------------------------------------------------------------------------------------------
# Faults on the way
# ------------------------------------------------------------------------------------------
def test_eval_only_without_weights_is_refused(tmp_path):
    cfg = tiny_cfg("MODEL.WEIGHTS", "", output_dir=tmp_path)
    with pytest.raises(ValueError, match="--eval-only needs trained weights: MODEL.WEIGHTS is"):
        _load_tool().evaluate(cfg)
    assert not (tmp_path / "inference").exists()


def test_a_single_machine_run_gets_a_free_port_by_default():
    """The three tools' parser: no --dist-url on one machine -> 'auto' (Detectron2's launch picks
    a free port); an explicit URL and multi-machine runs as Detectron2 has them."""
    from detectron2.engine import default_argument_parser

    from balms_det.engine.launching import argument_parser, dist_url

    fixed = default_argument_parser().get_default("dist_url")
    parse = argument_parser().parse_args
    assert dist_url(parse(["--num-gpus", "2"])) == "auto"
    assert dist_url(parse(["--dist-url", "tcp://10.0.0.1:1234"])) == "tcp://10.0.0.1:1234"
    assert dist_url(parse(["--num-machines", "2", "--machine-rank", "1"])) == fixed
    assert dist_url(parse(["--num-machines", "2", "--dist-url", "tcp://h:1"])) == "tcp://h:1"
    for tool in ("train_net", "lazy_train_net", "btm"):
        source = open(os.path.join(REPO, "tools", f"{tool}.py")).read()
        assert "dist_url=dist_url(args)" in source and "default_argument_parser" not in source
