"""The LazyConfig route: lazily evaluated class counts, the configs of configs/lazy/, and
tools/lazy_train_net.py with the Meta Reweigher and a decoupled stage."""

import copy
import os

import pytest
import torch
from conftest import CONFIGS, REPO, load_tool

LAZY = os.path.join(CONFIGS, "lazy")
TINY = os.path.join(LAZY, "mask_rcnn_R18_FPN_synthetic_tiny.py")
TINY_STAGE2 = os.path.join(LAZY, "mask_rcnn_R18_FPN_synthetic_tiny_stage2.py")
R50_LVIS = os.path.join(LAZY, "mask_rcnn_R_50_FPN_1x_lvis_v1_balms.py")


def _tool():
    return load_tool("lazy_train_net")


def _independent_image_counts(dicts, K):
    """Images containing each class, counted here from the dataset dicts."""
    counts = [0] * K
    for d in dicts:
        for c in {a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)}:
            counts[c] += 1
    return counts


# ------------------------------------------------------------------------------------------
# lazy_class_counts
# ------------------------------------------------------------------------------------------
def test_lazy_class_counts_reads_detectron2_lvis_v1_metadata():
    from detectron2.data.datasets.lvis_v1_category_image_count import (
        LVIS_CATEGORY_IMAGE_COUNT,
    )

    from balms_det.class_counts import lazy_class_counts

    expected = [c["image_count"] for c in sorted(LVIS_CATEGORY_IMAGE_COUNT, key=lambda c: c["id"])]
    # no LVIS file on this machine: a read of the dataset would raise FileNotFoundError
    got = lazy_class_counts("lvis_v1_train")
    assert len(got) == 1203 and got == [float(c) for c in expected]
    assert lazy_class_counts(["lvis_v1_train"], "image_count", num_classes=1203) == got
    with pytest.raises(ValueError, match=r"lazy_class_counts\(num_classes=...\) is 1230"):
        lazy_class_counts("lvis_v1_train", num_classes=1230)
    with pytest.raises(ValueError, match="count_type"):
        lazy_class_counts("lvis_v1_train", count_type="images")


def test_lazy_class_counts_of_an_unregistered_name_names_it():
    from balms_det.class_counts import lazy_class_counts, lazy_num_train_images

    with pytest.raises(ValueError, match=r"dataset_names=.*'no_such_lvis_split'.*not a registered"):
        lazy_class_counts(["lvis_v1_train", "no_such_lvis_split"])
    with pytest.raises(ValueError, match="'no_such_set'"):
        lazy_num_train_images("no_such_set")


def test_lazy_counts_of_any_registered_dataset_from_the_catalog():
    """A dataset with no count metadata: counted from DatasetCatalog (by hand: class 0 in
    images 1 and 2, 3 instances; class 1 in image 2; class 2 only crowd), once, then cached.
    The training images are those Detectron2's loader keeps: a and b (c is crowd only, d
    empty)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from balms_det.class_counts import lazy_class_counts, lazy_num_train_images

    box = dict(bbox=[0, 0, 4, 4], bbox_mode=1)  # (BoxMode.XYWH_ABS: training data has boxes)
    dicts = [
        {"file_name": "a", "annotations": [dict(box, category_id=0), dict(box, category_id=0)]},
        {"file_name": "b", "annotations": [dict(box, category_id=0), dict(box, category_id=1)]},
        {"file_name": "c", "annotations": [dict(box, category_id=2, iscrowd=1)]},
        {"file_name": "d", "annotations": []},
    ]
    loads = []
    name = "balms_test_lazy_counts"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: loads.append(1) or copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(thing_classes=["x", "y", "z"])
    assert lazy_class_counts(name) == [2.0, 1.0, 0.0]
    assert lazy_class_counts(name, "instance_count") == [3.0, 1.0, 0.0]
    assert lazy_num_train_images(name) == 2
    assert len(loads) == 1


# ------------------------------------------------------------------------------------------
# The configs
# ------------------------------------------------------------------------------------------
def test_every_lazy_config_loads_with_known_balms_settings():
    import glob

    from detectron2.config import LazyConfig

    from balms_det.engine.lazy import balms_train_settings

    paths = sorted(glob.glob(os.path.join(LAZY, "*.py")))
    assert len(paths) >= 4
    for path in paths:
        cfg = LazyConfig.load(path)
        assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg), path
        patterns, meta = balms_train_settings(cfg)
        if path.endswith("stage2.py") or path.endswith("stage2_meta.py"):
            assert patterns == ["cls_score"] and meta.enabled and cfg.train.init_checkpoint


def test_r50_lvis_lazy_config_builds_with_builtin_counts():
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import MetadataCatalog

    from balms_det.modeling.roi_heads import BalmsFastRCNNOutputLayers

    cfg = LazyConfig.load(R50_LVIS)
    assert cfg.dataloader.train.dataset.names == "lvis_v1_train"
    model = instantiate(cfg.model)
    p = model.roi_heads.box_predictor
    assert isinstance(p, BalmsFastRCNNOutputLayers) and p.loss_name == "balanced_softmax"
    assert p.num_classes == 1203 and not p.use_sigmoid_ce and not p.use_fed_loss
    meta = MetadataCatalog.get("lvis_v1_train").class_image_count
    expected = torch.tensor([c["image_count"] for c in sorted(meta, key=lambda c: c["id"])])
    assert torch.equal(p.class_counts, expected.float())
    assert model.roi_heads.mask_head.predictor.out_channels == 1203


def test_vitdet_lvis_predictor_change():
    """The ViTDet recipe of docs/LAZYCONFIG.md on Detectron2's ViTDet model config: its LVIS
    predictor settings are rejected by a balms loss until use_sigmoid_ce / use_fed_loss are off."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate
    from detectron2.data.detection_utils import get_fed_loss_cls_weights

    from balms_det.class_counts import lazy_class_counts
    from balms_det.modeling.roi_heads import BalmsFastRCNNOutputLayers

    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    model.roi_heads.num_classes = 1203
    p = model.roi_heads.box_predictor  # what ViTDet's LVIS configs set:
    p.update(test_score_thresh=0.02, test_topk_per_image=300, use_sigmoid_ce=True)
    p.update(use_fed_loss=True)
    p.get_fed_loss_cls_weights = lambda: get_fed_loss_cls_weights("lvis_v1_train", 0.5)
    p._target_ = BalmsFastRCNNOutputLayers
    p.loss = "balanced_softmax"
    p.class_counts = lazy_class_counts("lvis_v1_train")
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        instantiate(model.roi_heads.box_predictor)
    p.use_sigmoid_ce = p.use_fed_loss = False
    pred = instantiate(model.roi_heads.box_predictor)
    assert isinstance(pred, BalmsFastRCNNOutputLayers) and pred.num_classes == 1203


def test_bad_balms_settings_are_named():
    from detectron2.config import LazyConfig

    from balms_det.engine.lazy import freeze_trainable, meta_reweigher_from_config

    cfg = LazyConfig.load(TINY)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    cfg.train.balms.trainable_params = ["cls_scor3"]
    with pytest.raises(ValueError, match=r"train.balms.trainable_params patterns \['cls_scor3'\]"):
        freeze_trainable(cfg, net)
    cfg.train.balms.meta.enabled = True
    cfg.train.balms.meta.lrr = 0.1
    with pytest.raises(ValueError, match="train.balms.meta.lrr is not an argument"):
        meta_reweigher_from_config(cfg, net, None)
    cfg.train.balms.meta_enabled = True
    with pytest.raises(ValueError, match="train.balms.meta_enabled is not a balms-det setting"):
        freeze_trainable(cfg, net)


# ------------------------------------------------------------------------------------------
# Training: Meta Reweigher, then a decoupled classifier-only stage with it
# ------------------------------------------------------------------------------------------
def _fast(cfg):
    """Smaller images, fewer proposals and ROIs, a narrow box head, no evaluation files."""
    import detectron2.data.transforms as T
    from detectron2.config import LazyCall as L
    from detectron2.layers import ShapeSpec

    small = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=64)]
    cfg.dataloader.train.mapper.augmentations = small
    cfg.dataloader.test.mapper.augmentations = small
    cfg.dataloader.evaluator.output_dir = None
    cfg.model.proposal_generator.pre_nms_topk = (200, 100)
    cfg.model.proposal_generator.post_nms_topk = (50, 30)
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.model.roi_heads.box_head.fc_dims = [64, 64]
    cfg.model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
    cfg.model.roi_heads.box_predictor.test_topk_per_image = 30
    return cfg


def test_lazy_training_meta_reweigher_and_decoupled_stage(tmp_path, one_thread):
    from detectron2.config import LazyConfig
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from balms_det.engine.decoupled import FrozenNormHook
    from balms_det.engine.meta_reweigher import MetaReweigher

    tool = _tool()
    torch.manual_seed(0)

    # stage 1: the whole model, balanced softmax, the Meta Reweigher on (2 iterations) + inference
    cfg = LazyConfig.load(TINY)
    over = [f"train.output_dir={tmp_path / 's1'}", "train.balms.meta.enabled=True"]
    cfg = _fast(LazyConfig.apply_overrides(cfg, over))
    # building the trainer (counts, loader, meta set) reads the training set once
    loads, real_load, real_build = [], DatasetCatalog["synth_lt_tiny_train"], tool.build_trainer
    built = []
    DatasetCatalog["synth_lt_tiny_train"] = lambda: loads.append(1) or real_load()
    (MetadataCatalog.get("synth_lt_tiny_train").get("balms_class_counts", None) or {}).clear()
    tool.build_trainer = lambda c: (real_build(c), built.append(len(loads)))[0]
    try:
        trainer = tool.do_train(cfg)
    finally:
        DatasetCatalog["synth_lt_tiny_train"] = real_load
        tool.build_trainer = real_build
    assert built == [1]
    meta = trainer._hooks[0]
    assert isinstance(meta, MetaReweigher) and meta.meta_steps == 2 and meta.meta_batches == 2
    # defaults from the rest of the config: the training mapper minus masks, train.seed
    assert meta.meta_mapper.use_instance_mask is False and meta.seed == cfg.train.seed == 0
    assert meta.meta_mapper.augmentations.augs[0].short_edge_length == (64, 64)
    model = trainer.model
    p = model.roi_heads.box_predictor
    expected = _independent_image_counts(DatasetCatalog.get("synth_lt_tiny_train"), 12)
    assert p.class_counts.tolist() == expected and p.class_image_counts.tolist() == expected
    w = p.class_weights
    torch.testing.assert_close(w, torch.sigmoid(meta.psi.detach()))
    assert (w - 0.5).abs().max() > 1e-4  # moved from sigmoid(0)
    # classes the training batches never showed keep psi 0 exactly
    assert (meta.psi.detach() == 0).any() and (meta.psi.detach() != 0).any()
    res = trainer.last_eval_results
    assert {"bbox", "segm"} <= set(res) and "APr" in res["bbox"]
    final = tmp_path / "s1" / "model_final.pth"
    assert final.exists()

    # stage 2 from the command line (tools/lazy_train_net.py's setup: overrides, loggers,
    # seed): the stage-2 config from the stage-1 model, classifier only, the Meta Reweigher
    # with cached meta features; no evaluation in this stage
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", TINY_STAGE2, f"train.output_dir={tmp_path / 's2'}"]
    argv.append(f"train.init_checkpoint={final}")
    cfg2 = _fast(tool.setup(default_argument_parser().parse_args(argv)))
    assert cfg2.train.balms.trainable_params == ["cls_score"] and cfg2.train.balms.meta.enabled
    cfg2.dataloader.pop("evaluator")
    t2 = tool.do_train(cfg2)
    assert isinstance(t2._hooks[0], MetaReweigher) and isinstance(t2._hooks[1], FrozenNormHook)
    meta2 = t2._hooks[0]
    assert meta2.meta_steps == 2 and len(meta2.cache) > 0
    before = torch.load(final, map_location="cpu")["model"]
    after = t2.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k].cpu())}
    pre = "roi_heads.box_predictor."
    # BatchNorm running statistics included: the frozen norm layers stayed in eval mode
    assert changed == {pre + "cls_score.weight", pre + "cls_score.bias", pre + "class_weights"}
    trainable = {n for n, q in t2.model.named_parameters() if q.requires_grad}
    assert trainable == {pre + "cls_score.weight", pre + "cls_score.bias"}


def test_lazy_amp_precision_reaches_the_trainer_and_the_meta_reweigher(tmp_path):
    """train.amp.precision (the yacs BALMS.AMP_DTYPE): the AMPTrainer gets it and the Meta
    Reweigher's autocast follows it; a bad value is refused naming the key."""
    from detectron2.config import LazyConfig
    from detectron2.engine import AMPTrainer

    tool = _tool()
    over = [f"train.output_dir={tmp_path}", "train.balms.meta.enabled=True"]
    cfg = _fast(LazyConfig.apply_overrides(LazyConfig.load(TINY), over))
    cfg.train.amp.enabled = True
    cfg.train.amp.precision = "bfloat16"
    trainer, _ = tool.build_trainer(cfg)
    assert isinstance(trainer, AMPTrainer) and trainer.precision == torch.bfloat16
    meta = trainer._hooks[0]
    meta.before_train()
    assert meta.amp == torch.bfloat16
    cfg.train.amp.precision = "int8"
    with pytest.raises(ValueError, match="train.amp.precision"):
        tool.build_trainer(cfg)
