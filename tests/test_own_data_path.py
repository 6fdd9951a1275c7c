"""A new user's path on their own files, as docs/OWN_DATA.md tells it: register LVIS-format
files from the command line, train with the own-data CPU template (sized down), kill the run
after a checkpoint and resume it, evaluate, serve with the class names of the checkpoint alone,
run tools/demo.py."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch
from conftest import CONFIGS, REPO, flat_cfg, load_tool
from own_data_set import TINY, register_entries, write_own_set

TEMPLATE = os.path.join(CONFIGS, "own_data", "cpu_r18.yaml")
TRAIN, VAL = "userpath_train", "userpath_val"
MAX_ITER = 4  # checkpoints after iterations 2 and 4 (model_0000001.pth, model_final.pth)


def _argv(own, out, *extra, flags=()):
    """tools/train_net.py's command line: the template, the files registered by the user, the
    sizes of a test."""
    return [
        *flags,
        "--config-file",
        TEMPLATE,
        "BALMS.DATASETS.REGISTER",
        register_entries(own, TRAIN, VAL),
        "DATASETS.TRAIN",
        f"('{TRAIN}',)",
        "DATASETS.TEST",
        f"('{VAL}',)",
        *TINY,
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "OUTPUT_DIR",
        str(out),
        *extra,
    ]


def _run_tool(argv):
    """tools/train_net.py in this process (one thread: the same arithmetic as the killed run's
    single-threaded subprocess)."""
    from detectron2.engine import default_argument_parser

    tool = load_tool("train_net")
    args = default_argument_parser().parse_args(argv)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tool.main(args)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return write_own_set(str(tmp_path_factory.mktemp("own")))


@pytest.fixture(scope="module")
def uninterrupted(own, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    results = _run_tool(_argv(own, out))
    return out, results


def _weights(path):
    return torch.load(path, map_location="cpu")["model"]


def test_train_evaluate_serve_and_demo(own, uninterrupted, tmp_path, capsys):
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    from balms_det import add_balms_config
    from balms_det.engine.preflight import resolve_num_classes

    out, results = uninterrupted
    final = str(out / "model_final.pth")
    # NUM_CLASSES 0 in the template: the training set's 6 categories, in the dumped config
    with open(out / "config.yaml") as f:
        assert "NUM_CLASSES: 6" in f.read()
    for task in ("bbox", "segm"):
        assert {"AP", "APr", "APc", "APf"} <= set(results[task])

    # evaluate the saved checkpoint: the metrics of the end of training, and the table
    again = _run_tool(_argv(own, tmp_path / "eval", "MODEL.WEIGHTS", final, flags=["--eval-only"]))
    assert "Long-tail results (%)" in capsys.readouterr().out
    detections = [
        json.loads((d / "inference" / VAL / "lvis_instances_results.json").read_text())
        for d in (out, tmp_path / "eval")
    ]
    assert detections[0] and detections[0] == detections[1]
    for task in ("bbox", "segm"):
        a, b = results[task], again[task]
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)

    # serve: the template and the checkpoint only (no dataset of that name is registered);
    # DefaultPredictor's metadata gets the class names from the checkpoint
    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.merge_from_file(TEMPLATE)
    cfg.merge_from_list([*TINY, "MODEL.WEIGHTS", final, "DATASETS.TEST", "('served_userpath',)"])
    assert "6 classes, the classifier of MODEL.WEIGHTS" in resolve_num_classes(cfg)
    predictor = DefaultPredictor(cfg)
    assert predictor.metadata.thing_classes == own["classes"]
    image = cv2.imread(os.path.join(own["val_images"], "val_000.png"))
    assert len(predictor(image)["instances"]) > 0

    # tools/demo.py: a folder of images in, visualised images out, config + checkpoint only
    demo_out = tmp_path / "demo"
    written = load_tool("demo").main(
        [
            "--config-file",
            TEMPLATE,
            "--input",
            own["val_images"],
            "--output",
            str(demo_out),
            "--confidence-threshold",
            "0.0",
            "--opts",
            *TINY,
            "MODEL.WEIGHTS",
            final,
            "DATASETS.TEST",
            "('demo_userpath',)",
        ]
    )
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(own["val_images"]))
    for p in written:
        vis, src = cv2.imread(p), cv2.imread(os.path.join(own["val_images"], os.path.basename(p)))
        assert vis.shape == src.shape and not (vis == src).all()  # something was drawn
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("demo_userpath").thing_classes == own["classes"]


def test_killed_run_resumes_to_the_uninterrupted_weights(own, uninterrupted, tmp_path):
    """The own-data template killed (SIGKILL) right after its first checkpoint, then the same
    command with --resume: the final weights equal the uninterrupted run's, bit for bit."""
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *_argv(own, out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = out / "last_checkpoint"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if tag.exists() and tag.read_text().strip() == "model_0000001.pth":
                break  # the file is complete: Detectron2 writes the tag after it
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "model_final.pth").exists()

    _run_tool(_argv(own, out, flags=["--resume"]))
    resumed = _weights(out / "model_final.pth")
    reference = _weights(uninterrupted[0] / "model_final.pth")
    assert resumed.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not differ, differ[:5]


def test_gpu_template_is_detectron2s_lvis_recipe_on_own_data():
    """configs/own_data/gpu_r50.yaml differs from Detectron2's LVIS v1 R50-FPN config only in
    the data, the number of classes (from the data) and the balms head."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from balms_det import add_balms_config

    def load(path):
        cfg = add_balms_config(get_cfg())
        cfg.merge_from_file(path)
        return flat_cfg(cfg)

    ours = load(os.path.join(CONFIGS, "own_data", "gpu_r50.yaml"))
    d2 = load(model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    differ = {k for k in d2 if ours[k] != d2[k]}
    assert differ == {
        "MODEL.ROI_HEADS.NAME",  # BalmsROIHeads
        "MODEL.ROI_HEADS.NUM_CLASSES",  # 0: the training set's
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
        "DATASETS.TRAIN",
        "DATASETS.TEST",
        "OUTPUT_DIR",
    }
    assert ours["MODEL.ROI_HEADS.NUM_CLASSES"] == 0
    assert ours["MODEL.WEIGHTS"] == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


def test_cpu_templates_yacs_and_lazy_are_twins():
    from detectron2.config import LazyConfig

    from balms_det.engine.trainer import setup_cfg

    y = setup_cfg(TEMPLATE, ["MODEL.ROI_HEADS.NUM_CLASSES", "6"])
    z = LazyConfig.load(os.path.join(CONFIGS, "own_data", "lazy_cpu_r18.py"))
    s, m, p = y.SOLVER, z.model, z.model.roi_heads.box_predictor
    assert (z.optimizer.lr, z.optimizer.clip_type, z.optimizer.clip_value) == (
        s.BASE_LR,
        s.CLIP_GRADIENTS.CLIP_TYPE,
        s.CLIP_GRADIENTS.CLIP_VALUE,
    ) and s.CLIP_GRADIENTS.ENABLED
    sched = z.lr_multiplier
    assert (z.train.max_iter, sched.scheduler.milestones) == (s.MAX_ITER, list(s.STEPS))
    assert round(sched.warmup_length * s.MAX_ITER) == s.WARMUP_ITERS
    assert z.dataloader.train.total_batch_size == s.IMS_PER_BATCH
    aug = z.dataloader.train.mapper.augmentations[0]
    assert (tuple(aug.short_edge_length), aug.max_size) == (
        tuple(y.INPUT.MIN_SIZE_TRAIN),
        y.INPUT.MAX_SIZE_TRAIN,
    )
    rfs = z.dataloader.train.sampler.repeat_factors.repeat_thresh
    assert y.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert rfs == y.DATALOADER.REPEAT_THRESHOLD and p.class_counts.prior == "sampler"
    assert y.MODEL.ROI_BOX_HEAD.BALMS.PRIOR == "sampler" and p.loss == "balanced_softmax"
    assert list(m.pixel_mean) == list(y.MODEL.PIXEL_MEAN)
    assert list(m.pixel_std) == list(y.MODEL.PIXEL_STD)
    assert m.proposal_generator.anchor_generator.sizes == [
        list(a) for a in y.MODEL.ANCHOR_GENERATOR.SIZES
    ]
    assert (
        y.MODEL.RESNETS.NORM == "BN"
        and y.MODEL.BACKBONE.FREEZE_AT == 0 == m.backbone.bottom_up.freeze_at
    )
