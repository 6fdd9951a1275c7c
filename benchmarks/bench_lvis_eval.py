"""Benchmark LVIS evaluators side by side: lvis-api 0.5.3, faster-coco-eval (if installed)
and balms_det.evaluation.fast_lvis.

    python benchmarks/bench_lvis_eval.py --images 5000 --dets-per-image 300 --iou-type both

generates (once, cached under output/bench_lvis/) a synthetic LVIS-v1-like set: 1203
categories with a long-tailed r/c/f split, 5-10 polygon ground-truth masks per image,
neg / not-exhaustive category lists, and a results json with ``--dets-per-image``
detections per image (RLE masks, counts as str, as Detectron2 writes them). Each evaluator
runs in its own subprocess, timed from loading the json files to the final metrics; its
peak RSS comes from os.wait4. Prints a Markdown table with speedups and the maximum
difference of the summary metrics and of the precision array vs lvis-api.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 640), (427, 640)]


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _ellipse(rng, x, y, w, h, n):
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.75, 1.0, n)
    px = x + w / 2 + np.cos(ang) * rad * w / 2
    py = y + h / 2 + np.sin(ang) * rad * h / 2
    return np.round(np.stack([px, py], 1).ravel(), 2)


def generate(out_dir, n_images, dets_per_image, seed=0):
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)
    n_cat = 1203
    freq = np.array(["f"] * 405 + ["c"] * 461 + ["r"] * 337)
    rng.shuffle(freq)
    img_count = np.where(
        freq == "f",
        rng.integers(101, 3000, n_cat),
        np.where(freq == "c", rng.integers(11, 101, n_cat), rng.integers(1, 11, n_cat)),
    )
    cats = [
        {
            "id": k + 1,
            "name": "cat_%d" % (k + 1),
            "synonyms": [],
            "def": "",
            "synset": "cat_%d.n.01" % (k + 1),
            "frequency": str(freq[k]),
            "image_count": int(img_count[k]),
            "instance_count": int(img_count[k] * 2),
        }
        for k in range(n_cat)
    ]
    p_cat = img_count / img_count.sum()
    cat_ids = np.arange(1, n_cat + 1)
    images, anns, results = [], [], []
    aid = 1
    img_ids = np.sort(rng.choice(np.arange(1, 20 * n_images), n_images, replace=False))
    for iid in img_ids.tolist():
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        n_gt = int(rng.integers(5, 11))
        n_pc = int(rng.integers(1, 5))
        pos = rng.choice(cat_ids, n_pc, replace=False, p=p_cat)
        gcat = np.concatenate([pos, rng.choice(pos, n_gt - n_pc)])
        neg = rng.choice(cat_ids, int(rng.integers(3, 15)), replace=False, p=p_cat)
        neg = [int(c) for c in neg if c not in pos]
        nel = [int(c) for c in pos if rng.random() < 0.15]
        images.append(
            {
                "id": iid,
                "width": w,
                "height": h,
                "file_name": "%012d.jpg" % iid,
                "coco_url": "",
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": nel,
            }
        )
        # ground truth: sizes spanning small / medium / large
        polys, boxes = [], []
        for c in gcat.tolist():
            s = float(np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.8))))
            bw, bh = min(w - 2.0, s * rng.uniform(0.6, 1.6)), min(
                h - 2.0, s * rng.uniform(0.6, 1.6)
            )
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            polys.append(_ellipse(rng, x, y, bw, bh, int(rng.integers(10, 17))))
        rles = mask_utils.frPyObjects([p.tolist() for p in polys], h, w)
        areas = mask_utils.area(rles)
        bbs = mask_utils.toBbox(rles)
        gts = []
        for c, p, a, b in zip(gcat.tolist(), polys, areas.tolist(), bbs.tolist()):
            anns.append(
                {
                    "id": aid,
                    "image_id": iid,
                    "category_id": int(c),
                    "segmentation": [p.tolist()],
                    "area": float(a),
                    "bbox": [round(v, 2) for v in b],
                }
            )
            gts.append((int(c), p, b))
            aid += 1
        # detections: around ground truth (right or confused category), on negative
        # categories, and random ones
        d_polys, d_meta = [], []
        n_near = min(dets_per_image, int(dets_per_image * rng.uniform(0.25, 0.45)))
        n_neg = min(dets_per_image - n_near, int(dets_per_image * 0.1)) if neg else 0
        for _ in range(n_near):
            c, p, (gx, gy, gw, gh) = gts[int(rng.integers(len(gts)))]
            j = rng.uniform(0.02, 0.3)
            sx, sy = np.exp(rng.normal(0, j, 2))
            x = gx + rng.normal(0, j * gw)
            y = gy + rng.normal(0, j * gh)
            q = np.empty_like(p)
            q[0::2] = np.clip(x + (p[0::2] - gx) * sx, 0, w)
            q[1::2] = np.clip(y + (p[1::2] - gy) * sy, 0, h)
            cc = c if rng.random() < 0.7 else int(rng.choice(cat_ids, p=p_cat))
            d_polys.append(np.round(q, 2))
            d_meta.append((cc, float(rng.beta(2, 2))))
        for i in range(dets_per_image - n_near):
            s = float(np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.7))))
            bw, bh = min(w - 2.0, s * rng.uniform(0.6, 1.6)), min(
                h - 2.0, s * rng.uniform(0.6, 1.6)
            )
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            d_polys.append(_ellipse(rng, x, y, bw, bh, 10))
            cc = int(rng.choice(neg)) if i < n_neg else int(rng.choice(cat_ids, p=p_cat))
            d_meta.append((cc, float(rng.beta(1, 4))))
        d_rles = mask_utils.frPyObjects([p.tolist() for p in d_polys], h, w)
        d_bbs = mask_utils.toBbox(d_rles).tolist()
        for (cc, sc), r, b in zip(d_meta, d_rles, d_bbs):
            results.append(
                {
                    "image_id": iid,
                    "category_id": cc,
                    "bbox": [round(v, 2) for v in b],
                    "score": float(np.float32(sc)),
                    "segmentation": {"size": [h, w], "counts": r["counts"].decode("ascii")},
                }
            )
    dataset = {
        "info": {"description": "synthetic LVIS-v1-like"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    os.makedirs(out_dir, exist_ok=True)
    gt_path = os.path.join(out_dir, "gt.json")
    dt_path = os.path.join(out_dir, "results.json")
    with open(gt_path + ".tmp", "w") as f:
        json.dump(dataset, f)
    os.replace(gt_path + ".tmp", gt_path)
    with open(dt_path + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(dt_path + ".tmp", dt_path)
    return gt_path, dt_path


# ---------------------------------------------------------------------------------------
# workers (one evaluator per process)
# ---------------------------------------------------------------------------------------
KEYS = [
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "APr",
    "APc",
    "APf",
    "AR@300",
    "ARs@300",
    "ARm@300",
    "ARl@300",
]


def _load_module(name):
    """Load balms_det/evaluation/<name>.py alone: the package __init__ imports Detectron2
    and torch, whose time and memory are not the evaluator's."""
    import importlib.util

    path = os.path.join(ROOT, "balms_det", "evaluation", name + ".py")
    spec = importlib.util.spec_from_file_location("_bench_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _vmhwm_kb():
    """Peak RSS of this process image (ru_maxrss of a child can include the parent's
    memory at fork time, before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def worker(name, gt_path, dt_path, iou_type, out_prefix):
    # imports first: timed from loading the json files to the final metrics
    if name == "lvis-api":
        import lvis  # noqa: F401

        run_lvis_api = _load_module("lvis_compat").run_lvis_api
    elif name == "fast_lvis":
        evaluate_lvis = _load_module("fast_lvis").evaluate_lvis
    elif name == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster
    t0 = time.perf_counter()
    if name == "lvis-api":
        ev = run_lvis_api(gt_path, dt_path, iou_type)
        metrics = {k: float(v) for k, v in ev.get_results().items()}
        precision = ev.eval["precision"]
    elif name == "fast_lvis":
        r = evaluate_lvis(gt_path, dt_path, iou_type)
        metrics = {k: float(v) for k, v in r.results.items()}
        precision = r.precision
        print("stages:", {k: round(v, 2) for k, v in r.timings.items()}, file=sys.stderr)
    elif name == "faster-coco-eval":
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        ev = COCOeval_faster(
            gt, dt, iouType=iou_type, lvis_style=True, print_function=lambda *a: None
        )
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = ev.stats_as_dict
        m = {
            "AP": "AP_all",
            "AP50": "AP_50",
            "AP75": "AP_75",
            "APs": "AP_small",
            "APm": "AP_medium",
            "APl": "AP_large",
            "APr": "APr",
            "APc": "APc",
            "APf": "APf",
            "AR@300": "AR_all",
            "ARs@300": "AR_small",
            "ARm@300": "AR_medium",
            "ARl@300": "AR_large",
        }
        metrics = {k: float(stats[v]) for k, v in m.items() if v in stats}
        precision = None
    else:
        raise ValueError(name)
    wall = time.perf_counter() - t0
    with open(out_prefix + ".json", "w") as f:
        json.dump({"wall": wall, "metrics": metrics, "vmhwm_kb": _vmhwm_kb()}, f)
    if precision is not None:
        np.save(out_prefix + ".npy", precision)


def run_worker(name, gt_path, dt_path, iou_type, out_prefix):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--gt",
        gt_path,
        "--dt",
        dt_path,
        "--iou-type",
        iou_type,
        "--out-prefix",
        out_prefix,
    ]
    p = subprocess.Popen(cmd)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        return None
    with open(out_prefix + ".json") as f:
        res = json.load(f)
    # KiB on Linux; VmHWM when available (see _vmhwm_kb)
    res["peak_mb"] = (res.get("vmhwm_kb") or usage.ru_maxrss) / 1024.0
    res["precision_path"] = out_prefix + ".npy" if os.path.exists(out_prefix + ".npy") else None
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=300)
    ap.add_argument("--iou-type", default="both", choices=["bbox", "segm", "both"])
    ap.add_argument("--evaluators", default="lvis-api,faster-coco-eval,fast_lvis")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "output", "bench_lvis"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--dt", help=argparse.SUPPRESS)
    ap.add_argument("--out-prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.gt, args.dt, args.iou_type, args.out_prefix)
        return

    data_dir = os.path.join(
        args.out_dir, "img%d_det%d_seed%d" % (args.images, args.dets_per_image, args.seed)
    )
    gt_path = os.path.join(data_dir, "gt.json")
    dt_path = os.path.join(data_dir, "results.json")
    if not (os.path.exists(gt_path) and os.path.exists(dt_path)):
        t = time.perf_counter()
        print(
            "generating %d images x %d detections in %s ..."
            % (args.images, args.dets_per_image, data_dir),
            flush=True,
        )
        generate(data_dir, args.images, args.dets_per_image, args.seed)
        print("  %.1f s" % (time.perf_counter() - t), flush=True)
    print(
        "gt %.0f MB, results %.0f MB"
        % (os.path.getsize(gt_path) / 2**20, os.path.getsize(dt_path) / 2**20),
        flush=True,
    )

    names = [n for n in args.evaluators.split(",") if n]
    if "faster-coco-eval" in names:
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            print("faster-coco-eval not installed: skipped")
            names.remove("faster-coco-eval")
    iou_types = ["bbox", "segm"] if args.iou_type == "both" else [args.iou_type]
    rows = []
    for iou_type in iou_types:
        ref = None
        for name in names:
            print("running %s (%s) ..." % (name, iou_type), flush=True)
            res = run_worker(
                name,
                gt_path,
                dt_path,
                iou_type,
                os.path.join(data_dir, "out_%s_%s" % (name, iou_type)),
            )
            if res is None:
                rows.append((name, iou_type, None, None, None, None, None))
                continue
            if name == "lvis-api":
                ref = res
            speed = diff = pdiff = None
            if ref is not None:
                speed = ref["wall"] / res["wall"]
                common = [k for k in ref["metrics"] if k in res["metrics"]]
                diff = max(abs(res["metrics"][k] - ref["metrics"][k]) for k in common)
                if res["precision_path"] and ref["precision_path"]:
                    pdiff = float(
                        np.abs(
                            np.load(res["precision_path"]) - np.load(ref["precision_path"])
                        ).max()
                    )
            rows.append((name, iou_type, res["wall"], res["peak_mb"], speed, diff, pdiff))
            print("  %.1f s, %.0f MB peak" % (res["wall"], res["peak_mb"]), flush=True)

    f = lambda v, fmt: "-" if v is None else fmt % v
    print()
    print("%d images x %d detections/image (%s)" % (args.images, args.dets_per_image, data_dir))
    print()
    print(
        "| evaluator | iou type | wall s | peak MB | speedup vs lvis-api "
        "| max abs metric diff | max abs precision diff |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, it, wall, mb, speed, diff, pdiff in rows:
        if wall is None:
            print("| %s | %s | failed | | | | |" % (name, it))
            continue
        print(
            "| %s | %s | %.2f | %.0f | %s | %s | %s |"
            % (name, it, wall, mb, f(speed, "%.1fx"), f(diff, "%.2e"), f(pdiff, "%.2e"))
        )


if __name__ == "__main__":
    main()
