#!/usr/bin/env python
"""The per-class plots at LVIS size, to look at: 1,203 classes with LVIS v1's group sizes (337
rare with 1-10 training images, 461 common with 11-100, 405 frequent up to 50,000), random
per-class mask AP around 8 / 20 / 30 %, and a second "method" that gains on rare and common
classes. Writes ``per_class.png`` (``plot_per_class_ap``) and ``compare.png``
(``plot_comparison``) under ``--out``.

    python benchmarks/plots_at_lvis_size.py --out output/plots_1203
"""

import argparse
import os

import numpy as np

from balms_det.evaluation.report import (
    plot_comparison,
    plot_per_class_ap,
    write_metrics,
    write_per_class_table,
)


def rows(rng):
    out = []
    for i, g in enumerate(["r"] * 337 + ["c"] * 461 + ["f"] * 405):
        lo, hi = {"r": (1, 10), "c": (11, 100), "f": (101, 50000)}[g]
        n = int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))))
        ap = float(np.clip(rng.normal({"r": 8, "c": 20, "f": 30}[g], 10), 0, 100))
        out.append(
            dict(category_id=i + 1, name=f"class_{i}", group=g, train_image_count=n,
                 train_instance_count=n, AP_bbox=None, AP_segm=ap, num_dets_bbox=None,
                 num_dets_segm=100)
        )  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="output/plots_1203")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    base = rows(rng)
    gain = {"r": 3.0, "c": 3.0, "f": 0.0}
    other = [
        dict(r, AP_segm=float(np.clip(r["AP_segm"] + rng.normal(gain[r["group"]], 4), 0, 100)))
        for r in base
    ]
    dirs = [os.path.join(args.out, "baseline"), os.path.join(args.out, "method")]
    for d, rr in zip(dirs, (base, other)):
        os.makedirs(d, exist_ok=True)
        write_per_class_table(rr, d)
        write_metrics({"segm": {"AP": 0.0}}, d)
    print(plot_per_class_ap(base, os.path.join(args.out, "per_class.png")))
    print(plot_comparison(dirs, os.path.join(args.out, "compare.png"), ["baseline", "method"]))


if __name__ == "__main__":
    main()
