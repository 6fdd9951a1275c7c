"""Per-class reports of an LVIS-protocol evaluation, written by the evaluator and
``tools/evaluate_detections.py`` into their output folder: ``per_class_ap.csv`` / ``.json`` (a
row per category: id, name, group, training image and instance counts, AP (%) of each task with
per-class AP, null where undefined or not evaluated, and ``num_dets_<task>``, the detections
each task evaluated: AP 0 with 0 there means the model predicted nothing of it),
``lvis_metrics.json`` (each task's metrics), ``per_class_ap_<task>.png`` (AP against training
image count, a panel per group) and, with other result folders, ``comparison_<task>.png``.

The group means of the per-class AP are exactly lvis-api's APr/APc/APf (and their mean its AP):
every category with ground truth contributes the same number of precision entries.
"""

import csv
import io
import logging
import math
import os
from collections import OrderedDict

import numpy as np

from ..longtail import GROUPS, worst_class_metrics
from ..utils import atomic_write, atomic_write_json, markdown_table, read_json

__all__ = [
    "TABLE_FIELDS", "EXTRA_TASKS", "TASKS", "per_class_table", "write_per_class_table",
    "read_per_class_table", "write_metrics", "plot_per_class_ap", "plot_comparison",
    "compare_table", "format_compare_table", "write_report",
]  # fmt: skip

TABLE_FIELDS = (
    "category_id", "name", "group", "train_image_count", "train_instance_count", "AP_bbox",
    "AP_segm", "num_dets_bbox", "num_dets_segm",
)  # fmt: skip
# tasks with per-class AP beyond bbox / segm: their columns follow when they were evaluated
EXTRA_TASKS = ("bbox_fixed", "segm_fixed", "boundary")
TASKS = ("bbox", "segm") + EXTRA_TASKS
_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
_GROUP_COLORS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4"}
_TASK_TITLES = {
    "bbox": "box AP",
    "segm": "mask AP",
    "bbox_fixed": "box AP-fixed",
    "segm_fixed": "mask AP-fixed",
    "boundary": "boundary AP",
}
TABLE_JSON = "per_class_ap.json"
TABLE_CSV = "per_class_ap.csv"
METRICS_JSON = "lvis_metrics.json"


def _finite_or_none(x, scale=1.0):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x * scale


def per_class_table(gt_dataset, per_class_ap_by_task, train_counts=None, num_dets_by_task=None):
    """One row per category of ``gt_dataset`` (LVIS/COCO-format, its categories carrying an
    LVIS ``frequency``; sorted by id): the keys of :data:`TABLE_FIELDS`, then ``AP_<task>`` and
    ``num_dets_<task>`` of the :data:`EXTRA_TASKS` evaluated. AP in % from
    ``per_class_ap_by_task`` (task -> {category id: AP in [0, 1] or NaN}), None where undefined
    (no ground truth) or not evaluated; training counts from ``train_counts`` ({id:
    {"image_count", "instance_count"}}) where given, else from the categories' own fields, None
    where unknown; ``num_dets_by_task``: task -> {category id: detections evaluated}.
    """
    num_dets_by_task = num_dets_by_task or {}
    extra = [t for t in EXTRA_TASKS if t in per_class_ap_by_task]
    rows = []
    for c in sorted(gt_dataset["categories"], key=lambda c: c["id"]):
        cid = c["id"]
        absent = {"image_count": 0, "instance_count": 0}  # (from the training set)
        src = c if train_counts is None else train_counts.get(cid, absent)
        img, inst = src.get("image_count"), src.get("instance_count")
        row = OrderedDict(category_id=cid, name=c.get("name", str(cid)), group=c.get("frequency"))
        row["train_image_count"] = None if img is None else int(img)
        row["train_instance_count"] = None if inst is None else int(inst)
        for task in ("bbox", "segm"):
            row[f"AP_{task}"] = _finite_or_none(per_class_ap_by_task.get(task, {}).get(cid), 100.0)
        for task in ("bbox", "segm"):
            row[f"num_dets_{task}"] = num_dets_by_task.get(task, {}).get(cid)
        for task in extra:
            row[f"AP_{task}"] = _finite_or_none(per_class_ap_by_task[task].get(cid), 100.0)
            row[f"num_dets_{task}"] = num_dets_by_task.get(task, {}).get(cid)
        rows.append(row)
    return rows


def write_per_class_table(rows, output_dir):
    """Write ``per_class_ap.csv`` and ``per_class_ap.json`` into ``output_dir``; returns paths."""
    csv_path = os.path.join(output_dir, TABLE_CSV)
    json_path = os.path.join(output_dir, TABLE_JSON)
    fields = list(rows[0].keys()) if rows else list(TABLE_FIELDS)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write(csv_path, lambda f: f.write(buf.getvalue()))
    atomic_write_json([{k: r.get(k) for k in fields} for r in rows], json_path)
    return csv_path, json_path


def read_per_class_table(path):
    """Rows of a ``per_class_ap.json`` (a file, or the folder that holds it)."""
    if os.path.isdir(path):
        path = os.path.join(path, TABLE_JSON)
    rows = read_json(path, "Per-class table")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"Per-class table '{path}' must hold a list of rows")
    missing = [k for k in ("category_id", "group") if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"Per-class table '{path}': rows lack {missing}")
    return rows


def write_metrics(results, output_dir):
    """Write the summary metrics (task -> metric -> value, %) to ``lvis_metrics.json``."""
    path = os.path.join(output_dir, METRICS_JSON)
    clean = {t: {k: _finite_or_none(v) for k, v in m.items()} for t, m in results.items()}
    atomic_write_json(clean, path)
    return path


def _task_values(rows, task):
    key = f"AP_{task}"
    return [r for r in rows if r.get(key) is not None]


def _group_means(rows, task):
    key = f"AP_{task}"
    out = OrderedDict()
    for g in GROUPS:
        v = [r[key] for r in rows if r.get("group") == g and r.get(key) is not None]
        out[g] = float(np.mean(v)) if v else float("nan")
    v = [r[key] for r in rows if r.get(key) is not None]
    out["all"] = float(np.mean(v)) if v else float("nan")
    return out


def _new_figure(width, height):
    # No pyplot: draw on an Agg canvas, never touching the user's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")


DENSE = 150  # points of a panel above which it shows their density (hexagons), not the points


def _points(ax, x, y, color, cmap, xscale="linear", extent=None):
    """Scatter of (x, y), or, for more than DENSE points, their density (hexagonal bins
    coloured by count, log scale, a lone class still clearly coloured): a thousand classes stay
    readable, none hides another."""
    if len(x) <= DENSE:
        ax.scatter(x, y, s=14, alpha=0.75, color=color, edgecolors="none")
        return None
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(colormaps[cmap](np.linspace(0.3, 1.0, 128)))
    return ax.hexbin(
        x, y, gridsize=(24, 16), xscale=xscale, extent=extent, cmap=cmap, mincnt=1,
        bins="log", linewidths=0.2,
    )  # fmt: skip


_CMAPS = {"r": "Reds", "c": "Oranges", "f": "Blues"}


def plot_per_class_ap(rows, path, task="segm"):
    """PNG of per-class AP (%) against training image count, one panel per LVIS group (rare,
    common, frequent: each on its own count axis, log scale), with the group mean; a panel of
    more than DENSE classes shows their density. Categories without AP for ``task`` (no
    ground truth) are left out. Returns ``path``."""
    key = f"AP_{task}"
    data = _task_values(rows, task)
    if not data:
        raise ValueError(f"No per-class {key} to plot (was '{task}' evaluated?)")
    means = _group_means(rows, task)
    counts_known = all(r.get("train_image_count") is not None for r in data)
    fig = _new_figure(12.0, 4.2)
    axes = fig.subplots(1, len(GROUPS), sharey=True)
    for ax, g in zip(axes, GROUPS):
        pts = [r for r in data if r.get("group") == g]
        ax.set_title(f"{_GROUP_NAMES[g]}: {len(pts)} classes, AP{g} = {means[g]:.1f}", fontsize=10)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        if not pts:
            continue
        x = np.array([(r.get("train_image_count") or 0) + 1 for r in pts], float)  # (0 shows)
        y = np.array([r[key] for r in pts], float)
        lo, hi = np.log10(x.min()), np.log10(x.max())
        extent = (lo - 0.05, max(hi, lo + 0.1) + 0.05, -2, 102)
        hb = _points(ax, x, y, _GROUP_COLORS[g], _CMAPS[g], "log", extent)
        if hb is not None:
            fig.colorbar(hb, ax=ax, label="classes per cell", pad=0.01)
        ax.set_xscale("log")
        if hi - lo < 1.5:  # (a narrow range, e.g. rare's 1-10 images: ticks 1, 2, 5 as numbers)
            from matplotlib import ticker

            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.axhline(means[g], color=_GROUP_COLORS[g], linestyle="--", linewidth=1.2)
        ax.axhline(means["all"], color="black", linestyle=":", linewidth=1.0)
        ax.set_xlabel(
            "training images of the class + 1" + ("" if counts_known else " (0 if unknown)")
        )
    axes[0].set_ylabel(f"{_TASK_TITLES.get(task, task)} (%)")
    skipped = len(rows) - len(data)
    title = f"Per-class {_TASK_TITLES.get(task, task)} (dashed: group mean; dotted: AP = "
    title += f"{means['all']:.1f})" + (
        f"; {skipped} without ground truth left out" if skipped else ""
    )
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return path


def _labels_for(result_dirs, labels):
    if labels is not None:
        if len(labels) != len(result_dirs):
            raise ValueError(f"{len(labels)} labels given for {len(result_dirs)} result folders")
        return list(labels)
    paths = [os.path.normpath(os.path.abspath(d)) for d in result_dirs]
    names = [os.path.basename(p) for p in paths]  # (the parent too where a name repeats)
    return [
        os.path.join(os.path.basename(os.path.dirname(p)), n) if names.count(n) > 1 else n
        for p, n in zip(paths, names)
    ]


def compare_table(result_dirs, labels=None, task="segm"):
    """Long-tail summary of each result folder from its ``per_class_ap.json``.

    Returns a list of dicts (label, AP, APr, APc, APf, hmean, gmean, min, num_zero; % except
    num_zero). AP/APr/APc/APf are the (group) means of per-class AP, i.e. lvis-api's values.
    """
    labels = _labels_for(result_dirs, labels)
    out = []
    for d, label in zip(result_dirs, labels):
        rows = read_per_class_table(d)
        key = f"AP_{task}"
        means = _group_means(rows, task)
        worst = worst_class_metrics([r[key] / 100.0 for r in rows if r.get(key) is not None])
        row = OrderedDict(label=label, AP=means["all"], APr=means["r"], APc=means["c"])
        row.update(APf=means["f"], **{k: worst[k] * 100 for k in ("hmean", "gmean", "min")})
        out.append(row)
        row["num_zero"] = worst["num_zero"]
    return out


def format_compare_table(table):
    """Markdown table of :func:`compare_table` rows."""
    if not table:
        return "(nothing to compare)"
    keys = list(table[0].keys())
    return markdown_table([[r[k] for k in keys] for r in table], keys)


def plot_comparison(result_dirs, path, labels=None, task="segm"):
    """PNG comparing two or more result folders (each holding a ``per_class_ap.json``).

    Left: AP, APr, APc, APf and the harmonic / geometric means of per-class AP, one bar per
    folder. Then one panel per LVIS group: per-class AP of every other folder against the first
    one (matched by category id; their density where more than DENSE classes of one other
    folder); points above the diagonal are classes that improved. Returns ``path``.
    """
    result_dirs = list(result_dirs)
    if len(result_dirs) < 2:
        raise ValueError("plot_comparison needs at least two result folders")
    labels = _labels_for(result_dirs, labels)
    tables = [read_per_class_table(d) for d in result_dirs]
    key = f"AP_{task}"
    for d, rows in zip(result_dirs, tables):
        if not _task_values(rows, task):
            raise ValueError(f"Result folder '{d}' has no per-class {key}")
    summary = compare_table(result_dirs, labels, task)

    fig = _new_figure(16.0, 4.2)
    ax = fig.add_subplot(1, 4, 1)
    metrics = ("AP", "APr", "APc", "APf", "hmean", "gmean")
    n = len(result_dirs)
    width = 0.8 / n
    x = np.arange(len(metrics))
    for i, s in enumerate(summary):
        vals = [0.0 if math.isnan(s[m]) else s[m] for m in metrics]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=s["label"])
    ax.set_xticks(x)
    ax.set_xticklabels(metrics)
    ax.set_ylabel(f"{_TASK_TITLES.get(task, task)} (%)")
    ax.set_title("Group and worst-class metrics", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)

    base = {r["category_id"]: r for r in tables[0]}
    markers = "os^vD<>p*"
    for col, g in enumerate(GROUPS):  # one panel per group: frequent points hide no common one
        ax = fig.add_subplot(1, 4, 2 + col)
        count = 0
        for i in range(1, n):
            pts = [
                (base[r["category_id"]][key], r[key])
                for r in tables[i]
                if r.get(key) is not None
                and r.get("group") == g
                and base.get(r["category_id"], {}).get(key) is not None
            ]
            count = max(count, len(pts))
            if not pts:
                continue
            xs, ys = (np.array(v, float) for v in zip(*pts))
            if n == 2:  # one folder against the first: density where classes are many
                hb = _points(ax, xs, ys, _GROUP_COLORS[g], _CMAPS[g], extent=(-2, 102, -2, 102))
                if hb is not None:
                    fig.colorbar(hb, ax=ax, pad=0.01)
                continue
            ax.scatter(xs, ys, s=12, alpha=min(0.75, 60 / len(xs) + 0.15), edgecolors="none",
                       color=f"C{i}", marker=markers[(i - 1) % len(markers)], label=labels[i])  # fmt: skip
        ax.plot([0, 100], [0, 100], color="gray", linewidth=1, linestyle="--")
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_xlabel(f"AP, {labels[0]} (%)", fontsize=8)
        if col == 0:
            ax.set_ylabel(f"AP, {labels[1] if n == 2 else 'other'} (%)", fontsize=8)
        ax.set_title(f"{_GROUP_NAMES[g]} ({count}): above = better", fontsize=9)
        ax.grid(True, alpha=0.3)
        if n > 2 and col == 0:
            ax.legend(fontsize=6, loc="upper left")
    _save(fig, path)
    return path


def write_report(
    output_dir,
    gt_dataset,
    results,
    per_class_ap_by_task,
    train_counts=None,
    compare_dirs=(),
    compare_labels=None,
    logger=None,
    strict_compare=True,
    num_dets_by_task=None,
):
    """Write every output of an evaluation into ``output_dir`` (created): the per-class table
    (:func:`per_class_table`'s arguments), ``lvis_metrics.json`` (``results``: task -> metric
    -> %), a per-class plot per task and, with ``compare_dirs`` (other result folders, the first
    the baseline), ``comparison_<task>.png`` of them and this folder (``compare_labels``: their
    labels, this one's last). ``strict_compare``: raise for a missing or unreadable compare
    folder, else warn and skip (during training); a task some compare folder lacks gets no
    comparison (a warning). Returns the paths written (``csv``, ``json``, ``metrics``,
    ``plot_<task>``, ``comparison_<task>``) and the table's ``rows``.
    """
    logger = logger or logging.getLogger(__name__)
    rows = per_class_table(gt_dataset, per_class_ap_by_task, train_counts, num_dets_by_task)
    csv_path, json_path = write_per_class_table(rows, output_dir)
    out = {
        "rows": rows,
        "csv": csv_path,
        "json": json_path,
        "metrics": write_metrics(results, output_dir),
    }
    compare_tables = []
    if compare_dirs:
        try:
            compare_tables = [read_per_class_table(d) for d in compare_dirs]
        except (OSError, ValueError) as e:
            if strict_compare:
                raise
            logger.warning("No comparison plot: %s", e)
    for task in sorted(per_class_ap_by_task):
        if not _task_values(rows, task):
            logger.warning("No category has %s AP: no per-class plot", task)
            continue
        out[f"plot_{task}"] = plot_per_class_ap(
            rows, os.path.join(output_dir, f"per_class_ap_{task}.png"), task
        )
        if not compare_tables:
            continue
        lacking = [d for d, t in zip(compare_dirs, compare_tables) if not _task_values(t, task)]
        if lacking:
            logger.warning("No %s comparison plot: %s have no %s AP", task, lacking, task)
            continue
        out[f"comparison_{task}"] = plot_comparison(
            list(compare_dirs) + [output_dir],
            os.path.join(output_dir, f"comparison_{task}.png"),
            compare_labels,
            task,
        )
    logger.info("Per-class table and plots written to %s", output_dir)
    return out
