"""BalmsLVISEvaluator, the shared evaluation code paths and tools/evaluate_detections.py on tiny
LVIS- and COCO-format datasets (lvis-api is the reference)."""

import importlib.util
import json
import math
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from balms_det.evaluation.lvis_compat import run_lvis_api
from balms_det.evaluation.lvis_evaluator import BalmsLVISEvaluator
from balms_det.evaluation.offline import evaluate_detections_file
from balms_det.evaluation.tasks import (
    SUMMARY_KEYS,
    evaluate_tasks,
    prepare_gt_dataset,
    task_metrics,
)
from balms_det.lvis_eval import LVISInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 64


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _rle(x, y, w, h):
    rle = mask_utils.merge(mask_utils.frPyObjects(_poly(x, y, w, h), H, W))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann(aid, img, cat, box):
    x, y, w, h = box
    return dict(
        id=aid,
        image_id=img,
        category_id=cat,
        bbox=[x, y, w, h],
        area=w * h,
        segmentation=_poly(x, y, w, h),
    )


# (image, category, box): small (< 32^2) and medium objects, no large one (APl undefined)
GT_BOXES = [
    (1, 1, (4, 4, 20, 20)),
    (1, 1, (30, 30, 34, 34)),
    (1, 2, (5, 40, 15, 15)),
    (2, 1, (10, 10, 40, 40)),
    (2, 3, (50, 2, 10, 10)),
    (3, 2, (0, 0, 50, 50)),
    (3, 3, (52, 52, 10, 10)),
    (4, 1, (8, 8, 12, 12)),
]


def tiny_lvis():
    """4 images, 4 categories (f, c, r, and a rare one without validation ground truth)."""
    images = [
        dict(id=1, width=W, height=H, neg_category_ids=[3, 4], not_exhaustive_category_ids=[]),
        dict(id=2, width=W, height=H, neg_category_ids=[2, 4], not_exhaustive_category_ids=[]),
        dict(id=3, width=W, height=H, neg_category_ids=[1], not_exhaustive_category_ids=[4]),
        dict(id=4, width=W, height=H, neg_category_ids=[2, 3, 4], not_exhaustive_category_ids=[]),
    ]
    cats = [
        dict(id=1, name="head", frequency="f", image_count=150, instance_count=300),
        dict(id=2, name="body", frequency="c", image_count=40, instance_count=50),
        dict(id=3, name="tail", frequency="r", image_count=5, instance_count=5),
        dict(id=4, name="ghost", frequency="r", image_count=2, instance_count=2),
    ]
    anns = [_ann(i + 1, im, c, b) for i, (im, c, b) in enumerate(GT_BOXES)]
    return dict(images=images, annotations=anns, categories=cats)


def tiny_results(seed=0, cat_ids=(1, 2, 3, 4), img_ids=(1, 2, 3, 4), gt=GT_BOXES):
    """Jittered true positives plus random false positives, with boxes and RLE masks."""
    rng = np.random.default_rng(seed)
    out = []
    for img, cat, (x, y, w, h) in gt:
        for _ in range(2):
            dx, dy = rng.integers(-3, 4, size=2)
            box = [float(max(x + dx, 0)), float(max(y + dy, 0)), float(w), float(h)]
            out.append(
                dict(
                    image_id=img,
                    category_id=cat,
                    bbox=box,
                    score=float(rng.random()),
                    segmentation=_rle(*box),
                )
            )
    for _ in range(12):
        x, y = rng.integers(0, 40, size=2)
        w, h = rng.integers(4, 24, size=2)
        box = [float(x), float(y), float(w), float(h)]
        out.append(
            dict(
                image_id=int(rng.choice(img_ids)),
                category_id=int(rng.choice(cat_ids)),
                bbox=box,
                score=float(rng.random() * 0.8),
                segmentation=_rle(*box),
            )
        )
    return out


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def _reference(gt_path, results, task):
    """lvis-api on the file, with the mask-AP convention of Detectron2 (no boxes for segm)."""
    if task == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    ev = run_lvis_api(str(gt_path), results, task)
    per_class = {}
    for k, cid in enumerate(ev.params.cat_ids):
        p = ev.eval["precision"][:, :, k, 0]
        p = p[p > -1]
        per_class[cid] = float(np.mean(p)) if p.size else float("nan")
    return ev.get_results(), per_class


def _same(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= tol


# --------------------------------------------------------------------------------------------
def test_metrics_match_lvis_api_both_engines(tmp_path):
    gt = tiny_lvis()
    gt_path = _write(tmp_path / "gt.json", gt)
    results = tiny_results()
    for task in ("bbox", "segm"):
        summary, per_class = _reference(gt_path, results, task)
        expected = task_metrics(summary, per_class)
        assert math.isnan(expected["APl"])  # -1 in lvis-api (no large object) -> NaN
        assert 0 < expected["AP"] < 100 and expected["APr"] > 0
        for engine in ("lvis-api", "fast"):
            res, pc, _ = evaluate_tasks(gt, results, [task], engine=engine)
            for k in SUMMARY_KEYS:
                assert _same(
                    res[task][k], float(summary[k] * 100) if summary[k] != -1 else float("nan")
                ), (engine, task, k)
            assert all(_same(pc[task][c], per_class[c]) for c in per_class), (engine, task)
            assert all(_same(res[task][k], expected[k]) for k in expected)
        # group means of per-class AP are lvis-api's APr/APc/APf, which the plots rely on
        groups = {c["id"]: c["frequency"] for c in gt["categories"]}
        for g in "rcf":
            v = [a for c, a in per_class.items() if groups[c] == g and not math.isnan(a)]
            assert abs(np.mean(v) - summary["AP" + g]) < 1e-12
    assert gt == tiny_lvis()  # the annotation dict is not modified


def test_worst_class_metrics_hand_computed():
    summary = {k: 0.1 for k in SUMMARY_KEYS}
    summary.update({"AR@300": 0.2, "APl": -1})
    res = task_metrics(summary, {1: 0.5, 2: 0.25, 3: 0.0, 4: float("nan")})
    # zero -> 1e-3 in the means; NaN (no ground truth) skipped
    assert res["hmean"] == pytest.approx(100 * 3 / (2 + 4 + 1000))
    assert res["gmean"] == pytest.approx(100 * 0.05)  # (0.5 * 0.25 * 1e-3) ** (1/3)
    assert res["min"] == 0.0 and res["num_zero"] == 1.0
    assert res["AR"] == pytest.approx(20.0) and math.isnan(res["APl"])
    assert res["AP"] == pytest.approx(10.0)
    res = task_metrics(summary, {1: 0.0, 2: 0.0})
    assert res["hmean"] == pytest.approx(0.1) and res["gmean"] == pytest.approx(0.1)
    assert res["min"] == 0.0 and res["num_zero"] == 2.0


# --------------------------------------------------------------------------------------------
# COCO-format dataset: groups from training image counts
# --------------------------------------------------------------------------------------------
COCO_IDS = (2, 5, 7, 9, 11)  # non-contiguous, as in COCO
# training images holding each category: the LVIS thresholds' edges
TRAIN_IMAGES = {2: 101, 5: 100, 7: 11, 9: 10, 11: 0}
EXPECTED_GROUPS = {2: "f", 5: "c", 7: "c", 9: "r", 11: "r"}


def _coco_train():
    images = [dict(id=i, width=W, height=H, file_name=f"{i}.jpg") for i in range(1, 102)]
    anns = []
    for cid, n in TRAIN_IMAGES.items():
        for img in range(1, n + 1):
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=img,
                    category_id=cid,
                    iscrowd=0,
                    bbox=[1, 1, 10, 10],
                    area=100,
                    segmentation=_poly(1, 1, 10, 10),
                )
            )
    anns.append(
        dict(
            id=len(anns) + 1,
            image_id=1,
            category_id=2,
            iscrowd=0,
            bbox=[20, 20, 10, 10],
            area=100,
            segmentation=_poly(20, 20, 10, 10),
        )
    )
    cats = [dict(id=c, name=f"c{c}") for c in COCO_IDS]
    return dict(images=images, annotations=anns, categories=cats)


VAL_BOXES = [
    (1, 2, (4, 4, 20, 20)),
    (1, 7, (30, 30, 30, 30)),
    (2, 9, (10, 10, 16, 16)),
    (2, 2, (40, 40, 12, 12)),
    (3, 5, (5, 5, 40, 40)),
]


def _coco_val():
    images = [dict(id=i, width=W, height=H, file_name=f"v{i}.jpg") for i in (1, 2, 3)]
    anns = [dict(_ann(i + 1, im, c, b), iscrowd=0) for i, (im, c, b) in enumerate(VAL_BOXES)]
    cats = [dict(id=c, name=f"c{c}") for c in COCO_IDS]
    return dict(images=images, annotations=anns, categories=cats)


@pytest.fixture
def coco_datasets(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    train = _write(tmp_path / "train.json", _coco_train())
    val = _write(tmp_path / "val.json", _coco_val())
    names = ("balms_test_coco_train", "balms_test_coco_val")
    for name, path in zip(names, (train, val)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, path, str(tmp_path))
    yield dict(train=train, val=val, train_name=names[0], val_name=names[1])
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _contiguous_predictions(results, id_map):
    by_img = OrderedDict()
    for r in results:
        by_img.setdefault(r["image_id"], []).append(dict(r, category_id=id_map[r["category_id"]]))
    return [{"image_id": k, "instances": v} for k, v in by_img.items()]


def test_coco_format_groups_from_training_counts(coco_datasets, tmp_path):
    from detectron2.data import MetadataCatalog

    out = tmp_path / "eval"
    ev = BalmsLVISEvaluator(
        coco_datasets["val_name"],
        distributed=False,
        output_dir=str(out),
        train_dataset_names=[coco_datasets["train_name"]],
    )
    cats = {c["id"]: c["frequency"] for c in ev._lvis_api.dataset["categories"]}
    assert cats == EXPECTED_GROUPS
    # COCO images get exhaustive negatives: every category they do not hold
    img1 = ev._lvis_api.dataset["images"][0]
    assert img1["neg_category_ids"] == [5, 9, 11] and img1["not_exhaustive_category_ids"] == []

    id_map = MetadataCatalog.get(coco_datasets["val_name"]).thing_dataset_id_to_contiguous_id
    results = tiny_results(1, COCO_IDS, (1, 2, 3), VAL_BOXES)
    ev.reset()
    ev._predictions = _contiguous_predictions(results, id_map)
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm"}

    # the same numbers as lvis-api on the prepared annotations
    prepared = prepare_gt_dataset(
        _coco_val(), {c: {"image_count": n} for c, n in TRAIN_IMAGES.items()}
    )
    ref, _, _ = evaluate_tasks(prepared, results, ["bbox", "segm"], engine="lvis-api")
    for task in ("bbox", "segm"):
        assert all(_same(res[task][k], ref[task][k]) for k in ref[task]), task

    table = json.loads((out / "per_class_ap.json").read_text())
    assert [r["category_id"] for r in table] == list(COCO_IDS)
    assert {r["category_id"]: r["group"] for r in table} == EXPECTED_GROUPS
    assert {r["category_id"]: r["train_image_count"] for r in table} == TRAIN_IMAGES
    assert table[0]["train_instance_count"] == 102
    assert table[-1]["AP_segm"] is None  # category 11: no validation ground truth
    for name in (
        "per_class_ap.csv",
        "lvis_metrics.json",
        "per_class_ap_bbox.png",
        "per_class_ap_segm.png",
        "instances_predictions.pth",
    ):
        assert (out / name).exists(), name
    csv_lines = (out / "per_class_ap.csv").read_text().splitlines()
    assert csv_lines[0] == (
        "category_id,name,group,train_image_count,train_instance_count,"
        "AP_bbox,AP_segm,num_dets_bbox,num_dets_segm"
    )
    assert csv_lines[1].startswith("2,c2,f,101,102,")

    # the tool on the saved instances_predictions.pth: contiguous ids -> sorted COCO ids,
    # groups from --train-json; same outputs and numbers
    tool = _load_tool("evaluate_detections")
    out2 = tmp_path / "eval_tool"
    res2 = tool.main(
        [
            "--gt",
            coco_datasets["val"],
            "--dets",
            str(out / "instances_predictions.pth"),
            "--train-json",
            coco_datasets["train"],
            "--output-dir",
            str(out2),
            "--compare",
            str(out),
        ]
    )
    for task in ("bbox", "segm"):
        assert all(_same(res2[task][k], res[task][k]) for k in res[task]), task
    assert json.loads((out2 / "per_class_ap.json").read_text()) == table
    assert (out2 / "comparison_segm.png").exists()

    # without training counts the groups of a COCO-format file cannot be derived
    with pytest.raises(SystemExit, match="train-json"):
        tool.main(["--gt", coco_datasets["val"], "--dets", str(out / "instances_predictions.pth")])


def test_metrics_reach_event_storage_once(tmp_path):
    """EvalHook puts every returned metric into the storage (TensorBoard); the evaluator adds
    nothing itself, so nothing is logged twice."""
    from types import SimpleNamespace

    from detectron2.engine.hooks import EvalHook
    from detectron2.utils.events import EventStorage

    gt_path = _write(tmp_path / "gt.json", tiny_lvis())
    dets = _write(tmp_path / "dets.json", tiny_results())
    res, _, _ = evaluate_detections_file(gt_path, dets)
    with EventStorage(0) as storage:
        hook = EvalHook(0, lambda: res)
        hook.trainer = SimpleNamespace(storage=storage)
        hook._do_eval()
        keys = set(storage.histories())
    expected = {f"{t}/{k}" for t in ("bbox", "segm") for k in res[t]}
    assert {"segm/APr", "segm/hmean", "segm/gmean", "segm/min", "bbox/num_zero"} <= expected
    assert keys == expected
    assert all(len(storage.history(k).values()) == 1 for k in keys)


# --------------------------------------------------------------------------------------------
# Saved detections: empty and bad files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_empty_predictions(tmp_path, engine):
    gt_path = _write(tmp_path / "gt.json", tiny_lvis())
    dets = _write(tmp_path / "empty.json", [])
    res, per_class, outputs = evaluate_detections_file(
        gt_path, dets, tmp_path / "out", engine=engine
    )
    assert set(res) == {"bbox", "segm"}
    for task, m in res.items():
        for k in SUMMARY_KEYS + ("AR",):
            # 0, or NaN where lvis-api gives -1 (no large object in the set)
            assert m[k] == 0.0 or (k in ("APl",) and math.isnan(m[k])), (task, k, m[k])
        assert m["min"] == 0.0 and m["num_zero"] == 3.0  # 3 categories have ground truth
        assert m["hmean"] == pytest.approx(0.1) and m["gmean"] == pytest.approx(0.1)
        assert per_class[task][1] == 0.0 and math.isnan(per_class[task][4])
    assert os.path.exists(outputs["plot_segm"])

    # the evaluator with images but no detection gives the same
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "balms_test_tiny_lvis_empty"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=gt_path, thing_classes=["a", "b", "c", "d"], evaluator_type="lvis"
    )
    try:
        ev = BalmsLVISEvaluator(name, tasks=("bbox", "segm"), distributed=False, engine=engine)
        ev.reset()
        ev._predictions = [{"image_id": i, "instances": []} for i in (1, 2, 3, 4)]
        res2 = ev.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for task in res:
        assert all(_same(res2[task][k], res[task][k]) for k in res[task])


def test_bad_detection_files(tmp_path):
    gt_path = _write(tmp_path / "gt.json", tiny_lvis())
    tool = _load_tool("evaluate_detections")

    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_detections_file(gt_path, missing)
    with pytest.raises(SystemExit, match="nope.json"):
        tool.main(["--gt", gt_path, "--dets", missing])
    with pytest.raises(SystemExit, match="no_gt.json"):
        tool.main(["--gt", str(tmp_path / "no_gt.json"), "--dets", missing])

    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1, "category_id": ')
    with pytest.raises(LVISInputError, match="broken.json.*not valid JSON"):
        evaluate_detections_file(gt_path, str(broken))
    with pytest.raises(SystemExit, match="broken.json"):
        tool.main(["--gt", gt_path, "--dets", str(broken)])

    results = tiny_results()
    results[3] = dict(results[3], category_id=77)
    results[5] = dict(results[5], category_id=1203)
    bad_cat = _write(tmp_path / "bad_cat.json", results)
    with pytest.raises(LVISInputError, match=r"bad_cat.json.*category ids \[77, 1203\]"):
        evaluate_detections_file(gt_path, bad_cat)
    with pytest.raises(SystemExit, match=r"bad_cat.json.*77"):
        tool.main(["--gt", gt_path, "--dets", bad_cat, "--engine", "lvis-api"])

    results = tiny_results()
    results[0] = dict(results[0], image_id=999)
    bad_img = _write(tmp_path / "bad_img.json", results)
    with pytest.raises(LVISInputError, match=r"bad_img.json.*image ids \[999\]"):
        evaluate_detections_file(gt_path, bad_img)

    not_list = _write(tmp_path / "not_list.json", {"image_id": 1})
    with pytest.raises(LVISInputError, match="not_list.json.*list"):
        evaluate_detections_file(gt_path, not_list)

    # Detectron2's saved predictions with a contiguous id beyond the dataset's 4 categories
    pth = tmp_path / "instances_predictions.pth"
    r = tiny_results()[0]
    torch.save(
        [{"image_id": 1, "instances": [dict(r, category_id=0), dict(r, category_id=9)]}], pth
    )
    with pytest.raises(LVISInputError, match=r"instances_predictions.pth.*\[9\]"):
        evaluate_detections_file(gt_path, str(pth))


def test_tool_outputs_and_comparison(tmp_path, capsys):
    gt = tiny_lvis()
    gt_path = _write(tmp_path / "gt.json", gt)
    tool = _load_tool("evaluate_detections")
    a = _write(tmp_path / "a.json", tiny_results(0))
    b = _write(tmp_path / "b.json", tiny_results(3))
    res_a = tool.main(
        [
            "--gt",
            gt_path,
            "--dets",
            a,
            "--output-dir",
            str(tmp_path / "A"),
            "--iou-types",
            "segm",
            "--engine",
            "lvis-api",
        ]
    )
    assert list(res_a) == ["segm"]
    printed = capsys.readouterr().out
    assert "APr" in printed and "hmean" in printed
    ref, _ = _reference(gt_path, json.load(open(a)), "segm")
    assert res_a["segm"]["AP"] == pytest.approx(ref["AP"] * 100, abs=1e-9)
    tool.main(
        [
            "--gt",
            gt_path,
            "--dets",
            b,
            "--output-dir",
            str(tmp_path / "B"),
            "--compare",
            str(tmp_path / "A"),
            "--labels",
            "a",
            "b",
        ]
    )
    for name in (
        "per_class_ap.csv",
        "per_class_ap.json",
        "lvis_metrics.json",
        "per_class_ap_bbox.png",
        "per_class_ap_segm.png",
        "comparison_segm.png",
    ):
        assert (tmp_path / "B" / name).exists(), name
    assert not (tmp_path / "B" / "comparison_bbox.png").exists()  # A has no box AP
    assert (tmp_path / "B" / "comparison_segm.png").stat().st_size < 300_000
    metrics = json.loads((tmp_path / "B" / "lvis_metrics.json").read_text())
    assert metrics["segm"]["APl"] is None and set(metrics) == {"bbox", "segm"}


class _Payload:
    """Unpickling this creates a folder (code that runs)."""

    def __init__(self, folder):
        self.folder = folder

    def __reduce__(self):
        return os.makedirs, (self.folder,)


def test_pth_detections_are_loaded_without_running_code(tmp_path):
    """A pickle payload in a detections file ran code before the format error (issue 27)."""
    import pickle

    folder = tmp_path / "made_by_the_file"
    pth = tmp_path / "instances_predictions.pth"
    with open(pth, "wb") as f:
        pickle.dump([{"image_id": 1, "instances": [], "x": _Payload(str(folder))}], f)
    gt_path = _write(tmp_path / "gt.json", tiny_lvis())
    with pytest.raises(LVISInputError, match="instances_predictions.pth' cannot be read.*no code"):
        evaluate_detections_file(gt_path, str(pth))
    assert not folder.exists()
