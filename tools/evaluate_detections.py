#!/usr/bin/env python
"""Evaluate saved detections against an annotation file with the LVIS protocol, without the model.

    python tools/evaluate_detections.py --gt datasets/lvis/lvis_v1_val.json \\
        --dets output/inference/lvis_v1_val/lvis_instances_results.json --output-dir out/eval
    python tools/evaluate_detections.py --gt val.json --dets instances_predictions.pth \\
        --train-json train.json --iou-types segm --compare out/baseline
    python tools/evaluate_detections.py --gt lvis_v1_val.json --dets results.json \\
        --protocols standard fixed pool boundary

Detections: an LVIS results JSON (a list of {image_id, category_id, bbox, score,
segmentation}) or Detectron2's ``instances_predictions.pth`` (0-based contiguous category ids,
mapped to the annotation file's sorted ids, i.e. id + 1 for LVIS, unless --category-mapping).
The annotation file may be LVIS or COCO format; for a COCO-format file without ``frequency``
fields the rare/common/frequent groups come from --train-json's image counts.

Protocols (--protocols): standard (LVIS, 300 detections per image: tasks bbox, segm), fixed
(AP-fixed of Dave et al. 2021: the top --dets-per-category detections of every category, no
per-image cap: bbox_fixed, segm_fixed), pool (AP-pool: those detections, precision pooled over
all / r / c / f categories: bbox_pool, segm_pool), boundary (boundary AP of Cheng et al. 2021
for masks: boundary). Mask tasks use mask areas with either engine (see AREAS below).

Prints AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR, hmean, gmean, min, num_zero per task
(and Detectron2-style copypaste lines) and writes, with --output-dir, the same files as
BalmsLVISEvaluator: per_class_ap.csv/json, lvis_metrics.json, per_class_ap_<task>.png and, with
--compare, comparison_<task>.png. Bad inputs (missing file, malformed JSON, ids absent from the
annotation file, NaN scores, polygons of fewer than 3 points) stop it with a message naming the
file and the detection. Imports neither torch nor Detectron2 (torch only to read a .pth).
"""

import argparse
import logging
import sys

from balms_det.evaluation.tasks import PROTOCOLS

AREAS = (
    "Areas: the mask tasks (segm, segm_fixed, segm_pool, boundary) bin APs/APm/APl and "
    "ARs/ARm/ARl by MASK area, with either engine: the detections are evaluated as if they had "
    "no bbox, as Detectron2's LVISEvaluator and Dave et al. evaluate masks (lvis-api itself, "
    "given a results file that keeps its boxes, bins segm by BOX area: evaluate_lvis / "
    "run_lvis_api with ignore_boxes=False). Box tasks bin by box area; ground truth by its "
    "'area' field."
)


def build_parser():
    p = argparse.ArgumentParser(
        description="LVIS-protocol evaluation (AP, APr/APc/APf, AP-fixed, AP-pool, boundary AP, "
        "worst-class metrics) of a saved detections file",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=AREAS,
    )
    p.add_argument("--gt", required=True, help="LVIS or COCO-format annotation file")
    p.add_argument(
        "--dets",
        required=True,
        help="LVIS results JSON or Detectron2's instances_predictions.pth",
    )
    p.add_argument("--output-dir", default=None, help="where tables and plots go")
    p.add_argument(
        "--iou-types",
        nargs="+",
        choices=("bbox", "segm"),
        default=None,
        help="tasks to evaluate (default: all the detections support)",
    )
    p.add_argument(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=["standard"],
        help="standard (300 per image), fixed (AP-fixed), pool (AP-pool), boundary (boundary AP)",
    )
    p.add_argument(
        "--dets-per-category",
        type=int,
        default=10000,
        help="detections kept per category by the fixed and pool protocols",
    )
    p.add_argument(
        "--engine",
        choices=("fast", "lvis-api"),
        default="fast",
        help="fast (balms_det.lvis_eval) or lvis-api (the reference; standard and "
        "fixed protocols)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads of the fast engine (default: the CPUs available, at most 2)",
    )
    p.add_argument(
        "--train-json",
        default=None,
        help="training annotation file: groups and counts of a non-LVIS --gt",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=(),
        metavar="DIR",
        help="earlier result folders (with per_class_ap.json) to compare with",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="labels of the --compare folders and of this run, in that order",
    )
    p.add_argument("--max-dets", type=int, default=300, help="detections kept per image")
    p.add_argument(
        "--category-mapping",
        default="auto",
        help="for .pth: auto/sorted (index into the sorted category ids), plus1, or a "
        "JSON file mapping contiguous ids to dataset ids",
    )
    return p


def _copypaste(results):
    """Detectron2's print_csv_format lines, printed."""
    for task, res in results.items():
        keys = [k for k in res if "-" not in k]
        print(f"copypaste: Task: {task}")
        print("copypaste: " + ",".join(keys))
        print("copypaste: " + ",".join(f"{res[k]:.4f}" for k in keys))


def main(argv=None):
    args = build_parser().parse_args(argv)
    from balms_det.evaluation.offline import evaluate_detections_file
    from balms_det.utils import markdown_table

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    log = logging.getLogger("balms_det.evaluate_detections")
    if args.compare and not args.output_dir:
        raise SystemExit("evaluate_detections: --compare needs --output-dir (the plot goes there)")
    if args.labels is not None and len(args.labels) != len(args.compare) + 1:
        raise SystemExit(
            f"evaluate_detections: --labels needs {len(args.compare) + 1} labels "
            "(the --compare folders, then this run)"
        )
    try:
        results, _, outputs = evaluate_detections_file(
            args.gt,
            args.dets,
            output_dir=args.output_dir,
            iou_types=args.iou_types,
            engine=args.engine,
            train_json=args.train_json,
            compare_dirs=args.compare,
            compare_labels=args.labels,
            max_dets=args.max_dets,
            category_mapping=args.category_mapping,
            log=log,
            protocols=args.protocols,
            dets_per_category=args.dets_per_category,
            workers=args.workers,
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"evaluate_detections: {e}") from e
    for task, res in results.items():
        keys = list(res)
        print(f"\n{task} (%):\n{markdown_table([[res[k] for k in keys]], keys, floatfmt='.3f')}")
    _copypaste(results)
    if outputs:
        written = [v for k, v in outputs.items() if k != "rows"]
        log.info("Wrote %s", ", ".join(written))
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
