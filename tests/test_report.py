"""Per-class tables and plots (balms_det.evaluation.report) and tools/compare_results.py."""

import csv
import importlib.util
import json
import math
import os
import re

import pytest

from balms_det.evaluation.report import (
    TABLE_FIELDS,
    compare_table,
    format_compare_table,
    per_class_table,
    plot_comparison,
    plot_per_class_ap,
    read_per_class_table,
    write_per_class_table,
    write_report,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = float("nan")

GT = {
    "images": [],
    "annotations": [],
    "categories": [
        dict(id=3, name="tail", frequency="r", image_count=4, instance_count=6),
        dict(id=1, name="head", frequency="f", image_count=300, instance_count=900),
        dict(id=2, name="body", frequency="c", image_count=30, instance_count=31),
        dict(id=7, name="ghost", frequency="r", image_count=0, instance_count=0),
    ],
}
PER_CLASS = {
    "bbox": {1: 0.5, 2: 0.25, 3: 0.0, 7: NAN},
    "segm": {1: 0.4, 2: 0.3, 3: 0.1, 7: NAN},
}


def _png_ok(path, max_bytes=300_000):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) < max_bytes


def test_per_class_table_counts_from_categories_or_given():
    rows = per_class_table(GT, PER_CLASS)
    assert [r["category_id"] for r in rows] == [1, 2, 3, 7]
    assert list(rows[0]) == list(TABLE_FIELDS)
    r1 = rows[0]
    assert (r1["name"], r1["group"], r1["train_image_count"], r1["train_instance_count"]) == (
        "head",
        "f",
        300,
        900,
    )
    assert r1["AP_bbox"] == pytest.approx(50.0) and r1["AP_segm"] == pytest.approx(40.0)
    assert rows[3]["AP_bbox"] is None and rows[3]["AP_segm"] is None  # NaN -> None

    # given training counts win; a category they lack had no training image
    counts = {
        1: {"image_count": 11, "instance_count": 12},
        2: {"image_count": 5, "instance_count": 5},
    }
    rows = per_class_table(GT, {"segm": PER_CLASS["segm"]}, counts)
    assert [(r["train_image_count"], r["train_instance_count"]) for r in rows] == [
        (11, 12),
        (5, 5),
        (0, 0),
        (0, 0),
    ]
    assert all(r["AP_bbox"] is None for r in rows)  # bbox not evaluated

    # no counts anywhere: left empty
    gt = {"categories": [dict(id=1, name="a", frequency="r")]}
    rows = per_class_table(gt, {"bbox": {1: 0.2}})
    assert rows[0]["train_image_count"] is None and rows[0]["train_instance_count"] is None


def test_write_and_read_table(tmp_path):
    rows = per_class_table(GT, PER_CLASS)
    csv_path, json_path = write_per_class_table(rows, str(tmp_path / "out"))
    with open(csv_path) as f:
        lines = list(csv.DictReader(f))
    assert [int(r["category_id"]) for r in lines] == [1, 2, 3, 7]
    assert lines[3]["AP_bbox"] == "" and float(lines[2]["AP_segm"]) == pytest.approx(10.0)
    assert read_per_class_table(str(tmp_path / "out")) == json.loads(json.dumps(rows))
    assert "NaN" not in open(json_path).read()  # strict JSON

    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_per_class_table(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad" / "per_class_ap.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="per_class_ap.json"):
        read_per_class_table(str(bad.parent))


def test_plots_and_comparison(tmp_path):
    rows = per_class_table(GT, PER_CLASS)
    path = plot_per_class_ap(rows, str(tmp_path / "p.png"), task="segm")
    assert _png_ok(path)
    with pytest.raises(ValueError, match="AP_segm"):
        plot_per_class_ap(per_class_table(GT, {"bbox": PER_CLASS["bbox"]}), str(tmp_path / "x.png"))

    a = write_report(str(tmp_path / "a"), GT, {"segm": {"AP": 26.7}}, PER_CLASS)
    assert _png_ok(a["plot_bbox"]) and _png_ok(a["plot_segm"])
    better = {"bbox": {1: 0.5, 2: 0.3, 3: 0.2, 7: NAN}, "segm": {1: 0.45, 2: 0.3, 3: 0.3, 7: NAN}}
    b = write_report(str(tmp_path / "b"), GT, {}, better, compare_dirs=[str(tmp_path / "a")])
    assert _png_ok(b["comparison_segm"]) and _png_ok(b["comparison_bbox"])
    with pytest.raises(FileNotFoundError):
        write_report(str(tmp_path / "c"), GT, {}, better, compare_dirs=[str(tmp_path / "zz")])
    # the evaluator's mode: a bad compare folder only costs the comparison plot
    c = write_report(
        str(tmp_path / "c"),
        GT,
        {},
        better,
        compare_dirs=[str(tmp_path / "zz")],
        strict_compare=False,
    )
    assert "comparison_segm" not in c and os.path.exists(c["plot_segm"])

    path = plot_comparison(
        [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")],
        str(tmp_path / "cmp.png"),
        labels=["A", "B", "C"],
        task="bbox",
    )
    assert _png_ok(path)
    with pytest.raises(ValueError, match="two"):
        plot_comparison([str(tmp_path / "a")], str(tmp_path / "one.png"))

    table = compare_table([str(tmp_path / "a"), str(tmp_path / "b")], task="bbox")
    assert [t["label"] for t in table] == ["a", "b"]
    ta = table[0]
    # group means of per-class AP; worst-class metrics with 0 -> 1e-3 in the means
    assert (ta["AP"], ta["APr"], ta["APc"], ta["APf"]) == pytest.approx((25.0, 0.0, 25.0, 50.0))
    assert ta["hmean"] == pytest.approx(100 * 3 / (2 + 4 + 1000))
    assert ta["gmean"] == pytest.approx(5.0)
    assert ta["min"] == 0.0 and ta["num_zero"] == 1
    assert table[1]["num_zero"] == 0 and table[1]["min"] == pytest.approx(20.0)
    md = format_compare_table(table)
    assert md.splitlines()[0].split("|")[1].strip() == "label"
    assert re.search(r"^\| a +\| +25\.00 \| +0\.00 \| +25\.00 \| +50\.00 \|", md, re.M)


def test_compare_results_tool(tmp_path, capsys):
    for name, pc in (("x", PER_CLASS), ("y", {"segm": {1: 0.6, 2: 0.2, 3: 0.3, 7: NAN}})):
        write_report(str(tmp_path / name), GT, {}, pc)
    spec = importlib.util.spec_from_file_location(
        "compare_results", os.path.join(REPO, "tools", "compare_results.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    table = tool.main(
        [
            str(tmp_path / "x"),
            str(tmp_path / "y"),
            "--labels",
            "base",
            "new",
            "--output",
            str(tmp_path / "cmp.png"),
        ]
    )
    assert [t["label"] for t in table] == ["base", "new"]
    assert table[1]["APr"] == pytest.approx(30.0) and not math.isnan(table[1]["hmean"])
    assert re.search(r"^\| new +\| .*\| +30\.00 \|", capsys.readouterr().out, re.M)
    assert _png_ok(str(tmp_path / "cmp.png"))
    with pytest.raises(SystemExit, match="missing"):
        tool.main([str(tmp_path / "x"), str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="labels"):
        tool.main([str(tmp_path / "x"), str(tmp_path / "y"), "--labels", "one"])
