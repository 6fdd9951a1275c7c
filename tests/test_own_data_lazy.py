"""Your own files in the LazyConfig route: registered from the config (train.balms.datasets),
the class count and the counts (dataset and sampler prior) derived from the categories, the
LazyConfig twin of the own-data template, and the long-tail table of tools/lazy_train_net.py."""

import os

import pytest
import torch
from conftest import CONFIGS, load_tool
from own_data_set import write_own_set

LAZY_TEMPLATE = os.path.join(CONFIGS, "own_data", "lazy_cpu_r18.py")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return write_own_set(str(tmp_path_factory.mktemp("own")))


def _datasets(own, train, val):
    return (
        f"train.balms.datasets=[[{train},{own['train_json']},{own['train_images']}],"
        f"[{val},{own['val_json']},{own['val_images']}]]"
    )


def test_lazy_counts_and_class_count_from_a_file_dataset(own):
    from balms_det.class_counts import lazy_class_counts, lazy_num_classes, lazy_num_train_images
    from balms_det.data.datasets import register_file_dataset

    register_file_dataset("lz_counts_train", own["train_json"], own["train_images"])
    # no num_classes, nothing loaded yet: the categories of the file give K
    assert lazy_class_counts("lz_counts_train") == [6, 3, 2, 1, 1, 1]
    assert lazy_class_counts("lz_counts_train", "instance_count") == [6, 3, 2, 1, 1, 1]
    assert lazy_num_classes("lz_counts_train") == 6
    assert lazy_num_train_images("lz_counts_train") == 8
    register_file_dataset("lz_counts_fresh", own["train_json"], own["train_images"])
    assert lazy_num_classes("lz_counts_fresh") == 6  # read from the file for its categories


def test_lazy_sampler_prior_equals_the_yacs_routes(own):
    from balms_det.class_counts import CountSource, lazy_class_counts, lazy_num_train_images
    from balms_det.data.datasets import register_file_dataset

    register_file_dataset("lz_prior_train", own["train_json"], own["train_images"])
    kw = dict(prior="sampler", repeat_threshold=0.3)
    lazy = lazy_class_counts("lz_prior_train", **kw)
    yacs, dataset = CountSource(
        dataset_names=("lz_prior_train",),
        num_classes=6,
        prior="sampler",
        sampler="RepeatFactorTrainingSampler",
        repeat_threshold=0.3,
    ).sampler_counts()
    assert lazy == yacs.image_count.tolist()
    # by hand: class c in n_c of 8 images gets r_c = max(1, sqrt(0.3 / (n_c / 8))); an image
    # repeats max over its classes; class 0 (6 images) is in images with r 1, 1, 1, 1.549 (with
    # class 2 in 2 images: sqrt(1.2)) ...
    r = {c: max(1.0, (0.3 / (n / 8)) ** 0.5) for c, n in enumerate([6, 3, 2, 1, 1, 1])}
    from own_data_set import TRAIN_OBJECTS

    image_r = [max(r[c] for c in objs) for objs in TRAIN_OBJECTS]
    expected = [sum(ri for ri, objs in zip(image_r, TRAIN_OBJECTS) if c in objs) for c in range(6)]
    # (Detectron2's repeat factors are float32)
    torch.testing.assert_close(
        torch.tensor(lazy, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
    )
    assert lazy != dataset.image_count.tolist()  # the sampler prior is not the dataset's
    assert lazy_num_train_images("lz_prior_train", **kw) == pytest.approx(sum(image_r))
    with pytest.raises(ValueError, match=r"lazy_class_counts\(prior=...\) must be one of"):
        lazy_class_counts("lz_prior_train", prior="sampled")


def test_unregistered_name_says_how_to_register_in_either_route():
    from balms_det.class_counts import lazy_class_counts

    with pytest.raises(ValueError) as e:
        lazy_class_counts("never_registered_lz")
    msg = str(e.value)
    assert "BALMS.DATASETS.REGISTER" in msg and "train.balms.datasets" in msg
    assert "register_file_dataset" in msg


def test_lazy_template_trains_on_own_files_and_prints_the_table(own, tmp_path, capsys, one_thread):
    from detectron2.engine import default_argument_parser

    tool = load_tool("lazy_train_net")
    argv = [
        "--config-file",
        LAZY_TEMPLATE,
        _datasets(own, "lz_tpl_train", "lz_tpl_val"),
        "dataloader.train.dataset.names=lz_tpl_train",
        "dataloader.test.dataset.names=lz_tpl_val",
        f"train.output_dir={tmp_path}",
        "train.max_iter=2",
        "lr_multiplier.scheduler.milestones=[1]",
        "lr_multiplier.scheduler.values=[1.0,0.1]",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=64",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=64",
        "model.proposal_generator.post_nms_topk=[50,30]",
        "model.roi_heads.box_predictor.test_topk_per_image=20",
    ]
    import balms_det.data.datasets as ds

    loads, real = [], ds._load_file_dataset
    ds._load_file_dataset = lambda name, *a: (loads.append(name), real(name, *a))[1]
    try:
        res = tool.main(default_argument_parser().parse_args(argv))
    finally:
        ds._load_file_dataset = real
    # K, the checks, the counts and the loader: one read of the training file
    assert loads.count("lz_tpl_train") == 1, loads
    out = capsys.readouterr().out
    assert "Long-tail results (%)" in out and "| lz_tpl_val " in out
    assert {"bbox", "segm"} <= set(res)
    from balms_det.engine.checkpoint import checkpoint_dataset_meta, read_checkpoint

    final = str(tmp_path / "model_final.pth")
    state = read_checkpoint(final)
    pre = "roi_heads.box_predictor."
    assert state[pre + "cls_score.bias"].shape == (6 + 1,)  # K from the training set
    assert checkpoint_dataset_meta(final)["thing_classes"] == own["classes"]
    # the template's prior is the sampler's at threshold 0.1: every class of this set is in
    # more than 10 % of the 8 images, so it equals the dataset's image counts
    assert state[pre + "class_counts"].tolist() == [6, 3, 2, 1, 1, 1]
