#!/usr/bin/env python
"""Compare the per-class results of two or more evaluation folders.

    python tools/compare_results.py out/baseline/inference/lvis_v1_val out/balms/inference/lvis_v1_val \\
        --labels softmax balms --task segm --output comparison.png

Each folder holds the ``per_class_ap.json`` written by BalmsLVISEvaluator or
tools/evaluate_detections.py. Prints AP, APr, APc, APf, hmean, gmean, min and num_zero of each
folder and draws per-group bars and per-class AP of every folder against the first one.
"""

import argparse

from balms_det.evaluation.report import TASKS


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="result folders (the first is the baseline)")
    p.add_argument("--labels", nargs="+", default=None, help="one label per folder")
    p.add_argument("--task", choices=TASKS, default="segm", help="per-class AP of which task")
    p.add_argument("--output", default=None, help="PNG to write (default: no plot)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from balms_det.evaluation.report import compare_table, format_compare_table, plot_comparison

    if len(args.dirs) < 2:
        raise SystemExit("compare_results: give at least two result folders")
    try:
        table = compare_table(args.dirs, args.labels, args.task)
        print(f"{args.task} (%):\n{format_compare_table(table)}")
        if args.output:
            plot_comparison(args.dirs, args.output, args.labels, args.task)
            print(f"Wrote {args.output}")
    except (OSError, ValueError) as e:
        raise SystemExit(f"compare_results: {e}") from e
    return table


if __name__ == "__main__":
    main()
