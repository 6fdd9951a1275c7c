"""Balanced Training and Merging: subsets, merging, and a tiny end-to-end run of the pipeline."""

import os
from collections import OrderedDict

import pytest
import torch
from conftest import REPO, tiny_cfg
from torch import nn

from balms_det.data.balanced_subsets import (
    images_per_class,
    register_balanced_subsets,
    sample_balanced_subsets,
    subset_dataset_name,
    subset_statistics,
)
from balms_det.engine.merging import merge_checkpoints, merge_state_dicts

K = 12


@pytest.fixture(scope="module")
def tiny_train():
    from detectron2.data import DatasetCatalog

    import balms_det.data.datasets  # noqa: F401  (registers the tiny synthetic set)

    return DatasetCatalog.get("synth_lt_tiny_train")


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fill", "independent"])
@pytest.mark.parametrize("shots", [1, 3, 10])
def test_each_class_gets_exactly_min_shots_available(tiny_train, mode, shots):
    per_class = images_per_class(tiny_train, K)
    available = [len(p) for p in per_class]
    assert min(available) < 10 < max(available)  # both cases of min(N_C, n_c) occur
    subsets = sample_balanced_subsets(tiny_train, K, 3, shots, seed=0, mode=mode)
    for s in subsets:
        union = set()
        for c in range(K):
            sel = s.selected.get(c, [])
            assert len(sel) == len(set(sel)) == min(shots, available[c]), (c, mode)
            assert all(c in {a["category_id"] for a in tiny_train[i]["annotations"]} for i in sel)
            union.update(sel)
        assert sorted(union) == s.indices
        assert s.image_ids == [tiny_train[i]["image_id"] for i in s.indices]
        st = subset_statistics(tiny_train, s, K)
        assert st["selected_images"] == [min(shots, a) for a in available]
        assert st["available_images"] == available
        # achieved counts: at least the selected images (co-occurring classes bring more)
        assert all(a >= b for a, b in zip(st["images"], st["selected_images"]))
        assert all(a >= b for a, b in zip(st["instances"], st["images"]))
        assert st["num_images"] == len(s.indices)


def test_subsets_are_deterministic_and_differ_across_seeds(tiny_train):
    a = sample_balanced_subsets(tiny_train, K, 3, 4, seed=0)
    b = sample_balanced_subsets(tiny_train, K, 3, 4, seed=0)
    c = sample_balanced_subsets(tiny_train, K, 3, 4, seed=1)
    assert [s.indices for s in a] == [s.indices for s in b]
    assert [s.selected for s in a] == [s.selected for s in b]
    assert all(x.indices != y.indices for x, y in zip(a, c))
    assert a[0].indices != a[1].indices  # subsets of one draw differ too
    # subset i does not depend on how many subsets are drawn
    assert sample_balanced_subsets(tiny_train, K, 1, 4, seed=0)[0].indices == a[0].indices


def test_fill_mode_is_at_least_as_balanced_as_independent(tiny_train):
    fill = sample_balanced_subsets(tiny_train, K, 2, 4, seed=0, mode="fill")
    ind = sample_balanced_subsets(tiny_train, K, 2, 4, seed=0, mode="independent")
    for f, i in zip(fill, ind):
        assert len(f.indices) <= len(i.indices)


def test_registered_subset_is_a_detectron2_dataset(tiny_train):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    subsets = sample_balanced_subsets(tiny_train, K, 2, 3, seed=5)
    names = register_balanced_subsets(["synth_lt_tiny_train"], subsets)
    assert names == [subset_dataset_name("synth_lt_tiny_train", 5, i) for i in range(2)]
    assert names[0] == "synth_lt_tiny_train_btm_s5_0"
    dicts = DatasetCatalog.get(names[1])
    assert [d["image_id"] for d in dicts] == subsets[1].image_ids
    meta, src = MetadataCatalog.get(names[1]), MetadataCatalog.get("synth_lt_tiny_train")
    assert meta.thing_classes == src.thing_classes
    assert meta.evaluator_type == src.evaluator_type and meta.btm_subset_index == 1


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _state_dicts(n, dyadic=False):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        net = _net()
        net.train()
        net(torch.randn(2, 3, 3, 3) * (i + 1))  # moves the BN running statistics
        sd = net.state_dict()
        sd["1.num_batches_tracked"] = torch.tensor(10 + i)
        if dyadic:
            sd = OrderedDict(
                (k, torch.randint(-64, 64, v.shape).float() / 8 if v.is_floating_point() else v)
                for k, v in sd.items()
            )
        out.append(sd)
    return out


def test_merged_tensor_is_exactly_the_mean():
    sds = _state_dicts(3, dyadic=True)
    merged = merge_state_dicts(sds)
    assert list(merged) == list(sds[0])
    for k, v in merged.items():
        if v.is_floating_point():
            assert v.dtype == sds[0][k].dtype
            # dyadic inputs: the float32 mean is exact, whatever the summation order
            assert torch.equal(v, (sds[0][k] + sds[1][k] + sds[2][k]) / 3)
    # BatchNorm running statistics are averaged like weights
    assert torch.equal(
        merged["1.running_mean"], torch.stack([s["1.running_mean"] for s in sds]).mean(0)
    )
    # counters (not floating point) come from the first checkpoint
    assert merged["1.num_batches_tracked"].item() == 10


def test_merged_random_weights_equal_float64_mean():
    sds = _state_dicts(4)
    merged = merge_state_dicts(sds)
    for k, v in merged.items():
        if v.is_floating_point():
            ref = torch.stack([s[k].double() for s in sds]).mean(0).float()
            assert torch.equal(v, ref), k
            assert torch.allclose(v, torch.stack([s[k] for s in sds]).mean(0), atol=1e-6)


def test_given_weights_are_normalised():
    sds = _state_dicts(2, dyadic=True)
    merged = merge_state_dicts(sds, weights=[3, 1])
    k = "0.weight"
    assert torch.equal(merged[k], (3 * sds[0][k] + sds[1][k]) / 4)
    with pytest.raises(ValueError, match="2 checkpoints"):
        merge_state_dicts(sds, weights=[1, 1, 1])


def test_merging_one_checkpoint_returns_it_unchanged():
    (sd,) = _state_dicts(1)
    merged = merge_state_dicts([sd])
    assert list(merged) == list(sd)
    assert all(torch.equal(merged[k], sd[k]) and merged[k].dtype == sd[k].dtype for k in sd)


def test_mismatched_checkpoints_raise_naming_the_key():
    a, b = _state_dicts(2)
    missing = OrderedDict((k, v) for k, v in b.items() if k != "1.running_var")
    with pytest.raises(ValueError, match=r"lacks key '1\.running_var'"):
        merge_state_dicts([a, missing])
    extra = OrderedDict(b, **{"head.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'head\.extra'"):
        merge_state_dicts([a, extra])
    wrong = OrderedDict(b)
    wrong["3.weight"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"'3\.weight' has shape \(2, 4\).*\(3, 4\)"):
        merge_state_dicts([a, wrong], names=["a", "b"])


def test_merge_checkpoint_files(tmp_path):
    sds = _state_dicts(2, dyadic=True)
    paths = []
    for i, sd in enumerate(sds):
        p = tmp_path / f"model_{i}.pth"
        torch.save({"model": sd, "iteration": 7, "optimizer": {}}, p)
        paths.append(p)
    out = tmp_path / "merged.pth"
    ckpt = merge_checkpoints(paths, output=out)
    loaded = torch.load(out)
    assert set(loaded) == {"model", "btm_merge"} and loaded["btm_merge"]["weights"] == [0.5, 0.5]
    net = _net()
    net.load_state_dict(loaded["model"])  # strict: same keys and shapes
    assert torch.equal(net[0].weight, (sds[0]["0.weight"] + sds[1]["0.weight"]) / 2)
    assert torch.equal(ckpt["model"]["3.bias"], loaded["model"]["3.bias"])
    bad = tmp_path / "bad.pth"
    torch.save({"model": OrderedDict(list(sds[0].items())[1:])}, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*'0\.weight'"):
        merge_checkpoints([paths[0], bad])


# ---------------------------------------------------------------------------------------------
# Tiny end-to-end run
# ---------------------------------------------------------------------------------------------


def test_tiny_pipeline_merges_evaluates_and_resumes(tmp_path, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer

    from balms_det.engine import btm
    from balms_det.engine.trainer import BalmsTrainer

    fast = ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_BOX_HEAD.BALMS.DIAGNOSTICS_PERIOD", "0"]
    cfg = tiny_cfg(
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
        "BALMS.BTM.NUM_SUBSETS",
        "2",
        "BALMS.BTM.SHOTS",
        "2",
        "BALMS.BTM.ITERS",
        "2",
        *fast,
        output_dir=tmp_path / "s1",
    )
    # a stage-1 checkpoint (untrained: the pipeline, not the accuracy, is under test)
    model = BalmsTrainer.build_model(cfg)
    stage1 = tmp_path / "stage1.pth"
    torch.save({"model": model.state_dict(), "iteration": 2}, stage1)
    stage2 = tiny_cfg(
        "BALMS.TRAINABLE_PARAMS",
        "['cls_score']",
        "SOLVER.MAX_ITER",
        "1",
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
        *fast,
    )
    out = tmp_path / "btm"

    calls = []
    real = btm._train_worker

    def crash_on_second(*args):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args)

    kwargs = dict(stage1_weights=stage1, stage2=stage2, eval_stage1=False, eval_finetunes=False)
    monkeypatch.setattr(btm, "_train_worker", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        btm.run_btm_pipeline(cfg, out, **kwargs)
    first = out / "finetune_0" / "model_final.pth"
    assert first.exists() and not (out / "finetune_1" / "model_final.pth").exists()
    mtime = first.stat().st_mtime

    # re-run: continues with fine-tune 1, merges, runs stage 2, evaluates
    calls.clear()
    monkeypatch.setattr(btm, "_train_worker", lambda *a: (calls.append(a[0]), real(*a)))
    res = btm.run_btm_pipeline(cfg, out, **kwargs)
    assert [os.path.basename(os.path.dirname(c)) for c in calls] == ["finetune_1", "stage2"]
    assert first.stat().st_mtime == mtime
    merged = torch.load(out / "merged.pth")["model"]
    fts = [torch.load(out / f"finetune_{i}" / "model_final.pth")["model"] for i in range(2)]
    k = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(merged[k], ((fts[0][k].double() + fts[1][k].double()) / 2).float())
    assert not torch.equal(fts[0][k], fts[1][k])

    # the merged checkpoint loads (every key) and evaluates
    m = BalmsTrainer.build_model(cfg)
    extra = DetectionCheckpointer(m).load(str(out / "merged.pth"))
    assert set(extra) == {"btm_merge"}  # what the checkpointer did not consume
    assert set(m.state_dict()) == set(merged)
    assert all(torch.equal(v, merged[n]) for n, v in m.state_dict().items())
    labels = [r["model"] for r in res["table"] if r["task"] == "segm"]
    assert labels == ["btm_merged", "btm+stage2"]
    for r in res["table"]:
        assert all(isinstance(r[key], float) for key in ("AP", "APr", "APc", "APf", "hmean", "min"))
    text = (out / "btm_results.md").read_text()
    assert "btm_merged" in text and "APr" in text and "hmean" in text
    assert (out / "subsets.json").exists() and "achieved" in (out / "subsets.md").read_text()

    # a third run has nothing left to do
    calls.clear()
    again = btm.run_btm_pipeline(cfg, out, **kwargs)
    assert calls == [] and again["table"] == res["table"]

    # only inference settings change (TEST.*): nothing is retrained, every model re-evaluated
    evals = []
    real_eval = btm._eval_worker
    monkeypatch.setattr(btm, "_eval_worker", lambda *a: (evals.append(a[0]), real_eval(*a)))
    fewer = ["TEST.DETECTIONS_PER_IMAGE", "5"]
    cfg5, stage2_5 = (c.clone() for c in (cfg, stage2))
    for c in (cfg5, stage2_5):
        c.defrost()
        c.merge_from_list(fewer)
    third = btm.run_btm_pipeline(cfg5, out, **dict(kwargs, stage2=stage2_5))
    assert calls == [] and len(evals) == 2
    assert all("DETECTIONS_PER_IMAGE: 5" in open(e).read() for e in evals)
    assert "DETECTIONS_PER_IMAGE: 5" in (out / "stage2" / "btm_config.yaml").read_text()
    assert [r["model"] for r in third["table"]] == [r["model"] for r in res["table"]]
    # a training setting still refuses, naming the key
    cfg_lr = cfg5.clone()
    cfg_lr.merge_from_list(["BALMS.BTM.BASE_LR", "0.5"])
    with pytest.raises(ValueError, match="was trained with BALMS.BTM.BASE_LR = 0.002"):
        btm.run_btm_pipeline(cfg_lr, out, **dict(kwargs, stage2=stage2_5))


def test_btm_tool_refuses_stage2_on_another_synthetic_dataset():
    """The stage-2 config must describe the same synthetic dataset as the pipeline's (setting
    it up used to re-register the default dataset over the pipeline's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("btm_tool", os.path.join(REPO, "tools", "btm.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    syn = os.path.join(REPO, "configs", "synthetic")
    with pytest.raises(ValueError, match="BALMS.SYNTHETIC.NUM_TRAIN_IMAGES is 1000 vs 160"):
        tool.main(
            [
                "--config-file",
                os.path.join(syn, "btm.yaml"),
                "--stage2-config",
                os.path.join(syn, "btm_stage2.yaml"),
                "BALMS.SYNTHETIC.NUM_TRAIN_IMAGES",
                "160",
            ]
        )
    from detectron2.data import MetadataCatalog

    from balms_det.data.datasets import SYNTHETIC_DEFAULT, register_synthetic_lt

    try:  # the pipeline's dataset is the one registered
        assert MetadataCatalog.get("synth_lt_train").synthetic_config.num_train_images == 160
    finally:
        register_synthetic_lt("synth_lt", SYNTHETIC_DEFAULT)


# ---------------------------------------------------------------------------------------------
# Several processes and machines
# ---------------------------------------------------------------------------------------------
def _btm_cfg(tmp_path, *opts):
    return tiny_cfg(
        "BALMS.BTM.NUM_SUBSETS",
        "2",
        "BALMS.BTM.SHOTS",
        "2",
        "BALMS.BTM.ITERS",
        "1",
        "TEST.DETECTIONS_PER_IMAGE",
        "10",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
        "MODEL.DEVICE",
        "cpu",
        *opts,
        output_dir=tmp_path / "s1",
    )


def _stage1(cfg, path):
    from balms_det.engine.trainer import BalmsTrainer

    torch.manual_seed(0)
    torch.save({"model": BalmsTrainer.build_model(cfg).state_dict(), "iteration": 0}, path)
    return path


def test_two_process_pipeline_writes_each_file_once_and_merges_like_one(tmp_path):
    from balms_det.engine import btm

    cfg = _btm_cfg(tmp_path)
    out = tmp_path / "btm"
    res = btm.run_btm_pipeline(
        cfg,
        out,
        stage1_weights=_stage1(cfg, tmp_path / "stage1.pth"),
        num_gpus=2,
        eval_stage1=False,
        eval_finetunes=False,
    )
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "btm_results.json",
        "btm_results.md",
        "log.txt",
        "log.txt.rank1",  # Detectron2's per-rank log of the launched workers
        "merged.pth",
        "subsets.json",
        "subsets.md",
    ]
    fts = [out / f"finetune_{i}" / "model_final.pth" for i in range(2)]
    one = merge_state_dicts([torch.load(p)["model"] for p in fts])  # in this one process
    merged = torch.load(out / "merged.pth")["model"]
    assert merged.keys() == one.keys() and all(torch.equal(merged[k], one[k]) for k in one)
    assert [r["model"] for r in res["table"]] == ["btm_merged", "btm_merged"]


def test_a_machine_other_than_the_first_writes_nothing(tmp_path):
    from balms_det.data.balanced_subsets import subset_dataset_name
    from balms_det.engine import btm

    cfg = _btm_cfg(tmp_path)
    out = tmp_path / "btm"
    out.mkdir()
    path, names, stats = btm.prepare_subsets(cfg, str(out), main=False)
    assert names == [subset_dataset_name(["synth_lt_tiny_train"], 0, i) for i in range(2)]
    assert stats is None
    pipe = btm._Pipeline(cfg, str(out), (1, 2, 1, "tcp://127.0.0.1:1"), main=False)
    assert pipe.merge(["a.pth", "b.pth"]) == str(out / "merged.pth")
    pipe.write_table()
    assert list(out.iterdir()) == []


def test_more_shots_than_the_data_holds_is_named(tmp_path, caplog):
    from balms_det.engine import btm

    cfg = _btm_cfg(tmp_path, "BALMS.BTM.SHOTS", "1000")
    with caplog.at_level("WARNING", logger="balms_det.btm"):
        btm.prepare_subsets(cfg, str(tmp_path))
    assert "12 of 12 classes have at most BALMS.BTM.SHOTS = 1000 training images" in caplog.text
    assert "all 2 subsets are the same images" in caplog.text
    cfg = _btm_cfg(tmp_path, "BALMS.BTM.SHOTS", "3", "BALMS.BTM.SEED", "1")
    caplog.clear()
    with caplog.at_level("WARNING", logger="balms_det.btm"):
        btm.prepare_subsets(cfg, str(tmp_path / "other"))
    rare = [line for line in caplog.text.splitlines() if "have at most" in line]
    assert rare and "(2)" in rare[0] and "same images" not in caplog.text
