"""The training set is read once per process: counts, sampler prior, loader and meta set share
one TrainingSet (balms_det/data/training_set.py); its class index gives the statistics
Detectron2 and the per-image definitions give; BTM fine-tunes read only their subset."""

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_cfg

from balms_det.class_index import ImageClassIndex

TINY = "synth_lt_tiny_train"
K = 12


@pytest.fixture
def counted_loads():
    """Loads of the tiny training set through Detectron2's DatasetCatalog, counted (the
    catalog entry is wrapped for this test only)."""
    from detectron2.data import DatasetCatalog

    import balms_det.data.datasets  # noqa: F401  (registers the tiny synthetic set)

    loads = []
    real = DatasetCatalog[TINY]
    DatasetCatalog[TINY] = lambda: loads.append(1) or real()
    try:
        yield loads
    finally:
        DatasetCatalog[TINY] = real


@pytest.fixture
def counted_serializations():
    """Serialized copies made by Detectron2's ``DatasetFromList`` (its default storage,
    wrapped)."""
    from detectron2.data import common

    made = []

    class Counted(common._TorchSerializedList):
        def __init__(self, lst):
            made.append(len(lst))
            super().__init__(lst)

    with common.set_default_dataset_from_list_serialize_method(Counted):
        yield made


def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    return n


def test_trainer_with_meta_reweigher_and_sampler_prior_reads_the_set_once(
    tmp_path, counted_loads, counted_serializations
):
    """The stage-2 Meta Reweigher with the sampler prior under RFS: counts, sampler prior,
    number of images, train loader and meta loader all from one load and one serialized copy
    (the code before the shared TrainingSet loaded the file 3 times and serialized it twice);
    the prior equals Detectron2's repeat factors applied to its own read of the set."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from balms_det.class_counts import sampled_class_counts
    from balms_det.engine.meta_reweigher import MetaReweigher
    from balms_det.engine.trainer import BalmsTrainer

    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_sigmoid",
        "MODEL.ROI_BOX_HEAD.BALMS.PRIOR",
        "sampler",
        "DATALOADER.SAMPLER_TRAIN",
        "RepeatFactorTrainingSampler",
        "DATALOADER.REPEAT_THRESHOLD",
        "0.3",
        "BALMS.META.ENABLED",
        "True",
        "BALMS.META.META_LOSS",
        "balanced",
        "BALMS.TRAINABLE_PARAMS",
        "['cls_score']",
        "BALMS.ALLOW_FROZEN_RANDOM_INIT",  # (a stage 2 without stage-1 weights: reads only)
        "True",
        output_dir=tmp_path,
    )
    n = _one_thread()
    try:
        trainer = BalmsTrainer(cfg)
        hook = next(h for h in trainer._hooks if isinstance(h, MetaReweigher))
        hook._build_loader()  # the meta loader (built in before_train)
        batch = next(hook._meta_iter)
    finally:
        torch.set_num_threads(n)
    assert len(counted_loads) == 1
    assert len(counted_serializations) == 1
    assert len(batch) == cfg.BALMS.META.IMS_PER_BATCH and "instances" in batch[0]

    counted_loads.clear()
    dicts = get_detection_dataset_dicts([TINY])  # Detectron2's own read, for the reference
    rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.3)
    expect = sampled_class_counts(dicts, rf, K)
    pred = trainer.model.roi_heads.box_predictor
    assert float(rf.max()) > 1.5  # the tail really is repeated
    # float32 buffers of the float64 counts
    assert np.allclose(pred.class_counts.numpy(), expect.image_count, rtol=1e-6)
    assert pred.num_train_images.item() == pytest.approx(float(rf.double().sum()), rel=1e-6)
    assert len(hook.meta_set) == len(dicts)


def _hand_dicts():
    """5 images: crowd annotations (class 2 only crowd in image 3), an empty image, a repeated
    class; 4 classes (class 3 never annotated)."""

    def img(name, *anns):
        return {
            "file_name": name,
            "annotations": [{"category_id": c, "iscrowd": int(crowd)} for c, crowd in anns],
        }

    return [
        img("a", (0, 0), (0, 0), (1, 0)),
        img("b", (0, 0)),
        img("c", (2, 1), (0, 0)),
        img("d"),
        img("e", (1, 0), (1, 0), (2, 0)),
    ]


@pytest.mark.parametrize("sqrt", [True, False])
@pytest.mark.parametrize("thresh", [0.001, 0.3, 0.7])
def test_repeat_factors_equal_detectron2_to_the_bit(sqrt, thresh):
    from detectron2.data import DatasetCatalog
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    import balms_det.data.datasets  # noqa: F401

    d2 = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    for dicts in (_hand_dicts(), DatasetCatalog.get(TINY)):
        ours = ImageClassIndex.from_dicts(dicts).repeat_factors(thresh, sqrt)
        assert ours.dtype == np.float32
        assert torch.equal(torch.from_numpy(ours), d2(dicts, thresh, sqrt=sqrt))


def test_class_index_statistics_by_hand():
    """Non-crowd: class 0 in a, b, c (4 instances), class 1 in a, e (3), class 2 in e (1; its
    crowd instance in c does not count), class 3 nowhere."""
    index = ImageClassIndex.from_dicts(_hand_dicts())
    assert len(index) == 5
    assert index.image_counts(4).tolist() == [3, 2, 1, 0]
    assert index.instance_counts(4).tolist() == [4, 3, 1, 0]
    assert index.classes_present(4).tolist() == [True, True, True, False]
    assert index.images_per_class(4) == [[0, 1, 2], [0, 4], [4], []]
    r = [1.0, 2.0, 0.5, 3.0, 4.0]
    assert index.image_counts(4, r).tolist() == [3.5, 5.0, 4.0, 0.0]
    assert index.instance_counts(4, r).tolist() == [4.5, 9.0, 4.0, 0.0]
    # meta factors: f = (3/5, 2/5, 1/5) -> 1/f = (5/3, 5/2, 5); d has none: 1
    raw = index.class_balanced_factors(normalize=False)
    assert raw.tolist() == pytest.approx([5 / 2, 5 / 3, 5 / 3, 1.0, 5.0])
    assert index.class_balanced_factors().mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Image 'e' has category id 2, outside the model's 2"):
        index.check_classes(2, lambda i: "abcde"[i])


def test_class_index_matches_the_per_image_definitions_on_the_tiny_set():
    from detectron2.data import DatasetCatalog

    import balms_det.data.datasets  # noqa: F401

    dicts = DatasetCatalog.get(TINY)
    index = ImageClassIndex.from_dicts(dicts)
    images, instances = np.zeros(K), np.zeros(K)
    per_class = [[] for _ in range(K)]
    for i, d in enumerate(dicts):
        classes = [a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)]
        for c in classes:
            instances[c] += 1
        for c in sorted(set(classes)):
            images[c] += 1
            per_class[c].append(i)
    assert index.image_counts(K).tolist() == images.tolist()
    assert index.instance_counts(K).tolist() == instances.tolist()
    assert index.images_per_class(K) == per_class


def test_btm_finetune_reads_only_its_subset(tmp_path, counted_loads):
    """The subsets are drawn from one read of the source; a fine-tune's process registers
    them from subsets.json and reads only its own subset's file (the source is not read
    again), which holds exactly the chosen source dicts."""
    from detectron2.data import DatasetCatalog

    from balms_det.data.balanced_subsets import register_subsets_file
    from balms_det.engine import btm

    cfg = tiny_cfg("BALMS.BTM.NUM_SUBSETS", "2", "BALMS.BTM.SHOTS", "2", output_dir=tmp_path / "s1")
    path, names, _ = btm.prepare_subsets(cfg, str(tmp_path / "btm"))
    assert len(counted_loads) == 1  # drawing the subsets
    for name in names:  # a fresh process: nothing registered yet
        DatasetCatalog.remove(name)
    data, subsets, again = register_subsets_file(path)
    assert again == names
    got = [DatasetCatalog.get(n) for n in names]
    assert len(counted_loads) == 1  # the fine-tunes read no source
    source = copy.deepcopy(DatasetCatalog.get(TINY))
    for s, dicts in zip(subsets, got):
        assert 0 < len(dicts) == len(s.indices) < len(source)
        assert dicts == [source[i] for i in s.indices]
