"""BalmsLVISEvaluator with the AP-fixed / AP-pool / boundary protocols: the streamed
per-category top-k and per-image cap give the numbers of the whole prediction list, in bounded
memory; CategoryTopK merges the pools of several processes as one."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
from test_lvis_evaluator import H, W, _write, tiny_lvis

from balms_det.evaluation.lvis_evaluator import (
    RESULTS_JSON,
    TOPK_RESULTS_JSON,
    BalmsLVISEvaluator,
    CategoryTopK,
)
from balms_det.evaluation.tasks import (
    evaluate_tasks,
    plan_tasks,
    prepare_gt_dataset,
    top_per_category,
)

PROTOCOLS = ("standard", "fixed", "pool", "boundary")


def _instances(rng, n):
    inst = Instances((H, W))
    xy = rng.integers(0, 44, size=(n, 2)).astype(np.float32)
    wh = rng.integers(6, 20, size=(n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, np.minimum(xy + wh, 63)], 1)
    masks = np.zeros((n, H, W), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[i, y0:y1, x0:x1] = True
    inst.pred_boxes = Boxes(torch.tensor(boxes))
    scores = rng.random(n).astype(np.float32)
    scores[: n // 4] = np.round(scores[: n // 4], 1)  # ties
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(rng.integers(0, 4, size=n))
    inst.pred_masks = torch.tensor(masks)
    return inst


@pytest.fixture
def tiny_dataset(tmp_path):
    gt_path = _write(tmp_path / "gt.json", tiny_lvis())
    name = "balms_test_tiny_lvis_protocols"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=gt_path, thing_classes=["a", "b", "c", "d"], evaluator_type="lvis"
    )
    yield name, gt_path
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_streamed_protocols_equal_the_whole_prediction_list(tiny_dataset, tmp_path):
    name, gt_path = tiny_dataset
    k, cap = 6, 12
    out = tmp_path / "eval"
    ev = BalmsLVISEvaluator(
        name,
        distributed=False,
        output_dir=str(out),
        max_dets_per_image=cap,
        protocols=PROTOCOLS,
        fixed_dets_per_category=k,
    )
    ev.reset()
    rng = np.random.default_rng(0)
    everything = []
    longest = 0
    for rep in range(3):  # every image three times: 9 x 4 predictions of 30 detections
        for img in (1, 2, 3, 4):
            inst = _instances(rng, 30)
            everything += instances_to_coco_json(inst, img)
            ev.process([{"image_id": img}], [{"instances": inst}])
            longest = max(longest, max(len(v) for v in ev._topk.items.values()))
    assert longest < 2 * k  # memory: at most 2 k detections of a category at any time
    res = ev.evaluate()
    tasks = ["bbox", "segm", "bbox_fixed", "segm_fixed", "bbox_pool", "segm_pool", "boundary"]
    assert list(res) == tasks
    # the same numbers from every prediction at once (dataset ids: contiguous + 1)
    for r in everything:
        r["category_id"] += 1
    gt = prepare_gt_dataset(tiny_lvis())
    ref, _, _ = evaluate_tasks(
        gt, everything, plan_tasks(("bbox", "segm"), PROTOCOLS), max_dets=cap, dets_per_category=k
    )
    for task in tasks:
        assert res[task].keys() == ref[task].keys()
        for key, v in ref[task].items():
            assert (np.isnan(v) and np.isnan(res[task][key])) or res[task][key] == v, (task, key)
    # what AP-fixed / AP-pool evaluate is the authors' top-k of the whole list, kept in order
    topk = json.loads((out / TOPK_RESULTS_JSON).read_text())
    expected = top_per_category(json.loads(json.dumps(everything)), k)
    key = lambda r: (r["image_id"], r["category_id"], r["score"], tuple(r["bbox"]))
    assert sorted(map(key, topk)) == sorted(map(key, expected))
    assert len(topk) == len(expected) and len(topk) <= 4 * k
    # the standard list: at most `cap` per image and call, its best scores
    saved = json.loads((out / RESULTS_JSON).read_text())
    assert len(saved) == 12 * cap
    assert (
        min(r["score"] for r in saved[:cap])
        >= sorted((r["score"] for r in everything[:30]), reverse=True)[cap - 1]
    )
    table = json.loads((out / "per_class_ap.json").read_text())
    assert {"AP_bbox_fixed", "num_dets_segm_fixed", "AP_boundary"} <= set(table[0])
    assert all(r["num_dets_bbox_fixed"] <= k for r in table)


def test_category_topk_merge_is_one_pool():
    rng = np.random.default_rng(1)
    stream = [
        {"category_id": int(c), "score": float(s), "i": i}
        for i, (c, s) in enumerate(zip(rng.integers(0, 5, 3000), np.round(rng.random(3000), 2)))
    ]
    stream[17]["score"] = float("nan")  # kept, for the validator to name
    one = CategoryTopK(40)
    one.add(stream)
    ranks = [CategoryTopK(40) for _ in range(3)]
    for r, part in zip(ranks, np.array_split(np.arange(3000), 3)):
        r.add([stream[i] for i in part])
    merged = CategoryTopK.merge(ranks)
    assert [r["i"] for r in merged.results()] == [r["i"] for r in one.results()]
    finite = [r for r in stream if r["score"] == r["score"]]
    expected = {r["i"] for r in top_per_category(finite, 40)} | {17}
    assert {r["i"] for r in one.results()} == expected
    assert all(len(v) < 80 for v in one.items.values())


def test_from_config_reads_the_eval_keys(tiny_dataset):
    from detectron2.config import get_cfg

    from balms_det.config import add_balms_config

    name, _ = tiny_dataset
    cfg = add_balms_config(get_cfg())
    assert cfg.BALMS.EVAL.PROTOCOLS == ["standard"]
    assert cfg.BALMS.EVAL.FIXED_DETS_PER_CATEGORY == 10000
    assert cfg.BALMS.EVAL.MAX_DETS_PER_IMAGE == 300
    cfg.BALMS.EVAL.PROTOCOLS = ["standard", "pool"]
    cfg.BALMS.EVAL.FIXED_DETS_PER_CATEGORY = 77
    ev = BalmsLVISEvaluator.from_config(cfg, name)
    assert ev._protocols == ("standard", "pool") and ev._dets_per_category == 77
    assert ev._max_dets_per_image == 300
    ev.reset()
    assert ev._topk is not None and ev._topk.k == 77
    with pytest.raises(ValueError, match="protocols"):
        BalmsLVISEvaluator(name, distributed=False, protocols=("standard", "dave"))
