#!/usr/bin/env python
"""Classifier diagnostics (Logits Magnitude, Regularized Standard Deviation; docs/METHODS.md) of
the runs of ``benchmarks/bench_accuracy.py``, side by side with their mask AP.

    python benchmarks/bench_diagnostics.py --out output/bench_accuracy --seeds 0 \
        --methods softmax decoupled_softmax decoupled_balanced_softmax decoupled_los_d0.5

Each run folder ``<out>/<method>/seed<s>`` must hold ``config.yaml`` and ``model_final.pth``
(what ``tools/train_net.py`` leaves). Writes ``<out>/diagnostics/<method>/seed<s>/`` (per-class
JSON and plot, reused when present), ``<out>/<report>.md/.json`` (group means per method, mean
over seeds, with APr and AP) and ``<out>/<report>.png`` (both diagnostics against training count,
first seed, one line per method).
"""

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_outputs  # noqa: E402

GROUPS = ("r", "c", "f", "all")


def diagnose_run(run, out_dir):
    """Diagnostics of one run folder (cached in ``out_dir``); returns the JSON payload."""
    path = os.path.join(out_dir, "logit_diagnostics.json")
    if not os.path.exists(path):
        from balms_det.engine.trainer import setup_cfg
        from balms_det.engine.logit_diagnostics import diagnose_model

        weights = os.path.join(run, "model_final.pth")
        cfg = setup_cfg(os.path.join(run, "config.yaml"), ["MODEL.WEIGHTS", weights])
        diagnose_model(cfg, cfg.DATASETS.TEST[0], out_dir, label=os.path.basename(run))
    with open(path) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(REPO, "output", "bench_accuracy"))
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--report", default="diagnostics")
    a = p.parse_args()
    from balms_det.engine.logit_diagnostics import KEYS, plot_diagnostics

    table, first, lines = {}, {}, []
    for m in a.methods:
        runs = []
        for s in a.seeds:
            run = os.path.join(a.out, m, f"seed{s}")
            d = diagnose_run(run, os.path.join(a.out, "diagnostics", m, f"seed{s}"))
            with open(os.path.join(run, "inference", d["dataset"], "lvis_metrics.json")) as f:
                seg = json.load(f)["segm"]
            runs.append((d, seg))
        first[m] = runs[0][0]["per_class"]
        row = {
            k: {g: statistics.fmean(d["group_means"][k][g] for d, _ in runs) for g in GROUPS}
            for k in KEYS
        }
        row["unseparated"] = statistics.fmean(d["unseparated"]["all"] for d, _ in runs)
        row["APr"] = statistics.fmean(seg["APr"] for _, seg in runs)
        row["AP"] = statistics.fmean(seg["AP"] for _, seg in runs)
        table[m] = row
    head = ["method", "APr", "AP"] + [f"LM {g}" for g in GROUPS] + [f"RSD {g}" for g in GROUPS]
    head.append("m <= 0")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, row in table.items():
        cells = [f"{row['APr']:.2f}", f"{row['AP']:.2f}"]
        cells += [f"{row['logits_magnitude'][g]:.4f}" for g in GROUPS]
        cells += [f"{row['regularized_std'][g]:.3f}" for g in GROUPS]
        cells.append(f"{row['unseparated']:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nGroup means of the per-class diagnostics on the validation ground-truth boxes, mean over "
        f"seeds {a.seeds}; LM = Logits Magnitude (1-normalised, the mean over all classes is 1/K), "
        "RSD = Regularized Standard Deviation (group median); m <= 0 = classes whose own samples do "
        "not score them higher than the others' (no RSD); APr/AP = mask AP of the same runs."
    )
    plot_diagnostics(first, os.path.join(a.out, f"{a.report}.png"))
    write_outputs(a.out, a.report, "\n".join(lines), {"args": vars(a), "table": table})


if __name__ == "__main__":
    main()
