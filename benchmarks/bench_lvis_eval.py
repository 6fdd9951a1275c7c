"""Benchmark LVIS evaluators side by side: lvis-api 0.5.3 (the reference), faster-coco-eval and
hotcoco 1.3.0 (optional peers, skipped when not installed), and balms-det's engine
(balms_det.lvis_eval) with the standard protocol, AP-fixed, AP-pool and boundary AP.

    python benchmarks/bench_lvis_eval.py --images 5000 --dets-per-image 300 --iou-type both

generates (once, cached under output/bench_lvis/) a synthetic LVIS-v1-like set: 1203
categories with a long-tailed r/c/f split, 5-10 polygon ground-truth masks per image,
neg / not-exhaustive category lists, and a results json with ``--dets-per-image``
detections per image (RLE masks, counts as str, as Detectron2 writes them). Each evaluator
runs in its own process, started from a bare ``python -c``: its wall time runs from the start
of the process to the final metrics, imports and file loading included; its peak memory is that
of the process and the processes it starts (proportional set sizes summed, so that pages a
forked child shares with its parent count once; sampled every 50 ms or more, keeping the sampler
under 5% of a CPU), or the process's own high-water mark (VmHWM) when larger. Prints (and writes to
``<out-dir>/bench_lvis_eval.md``) a Markdown table with speedups, the ratio to hotcoco and the
maximum difference of the summary metrics and of the precision array to lvis-api.

Wall times on a shared machine vary from run to run: the evaluators that take under
``--repeat-under`` seconds (hotcoco, balms-det) run ``--repeat`` times, in interleaved rounds
(every fast evaluator once per round), and the table gives the median wall time and the largest
peak; the slow ones run once.

The standard rows are compared with lvis-api run on the same files. AP-fixed, AP-pool and
boundary AP have no lvis-api counterpart here (their equality with lvis-api run the way their
authors run it is tested in tests/test_eval_protocols.py and tests/test_eval_boundary.py); the
last column of the boundary row is its wall time over that of the segm row of the same run.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
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
        polys = []
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
# workers: one evaluator per process, a bare ``python -c`` (nothing imported beforehand)
# ---------------------------------------------------------------------------------------
_WORKER_HEAD = """
import json, sys, time
gt_path, dt_path, iou_type, out_prefix = sys.argv[1:5]
"""
_WORKER_TAIL = """
done = time.time()
import numpy as np
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
with open(out_prefix + ".json", "w") as f:
    json.dump({"done": done, "hwm_kb": hwm[0] if hwm else 0,
               "metrics": {k: float(v) for k, v in metrics.items()}}, f)
if precision is not None:
    np.save(out_prefix + ".npy", np.asarray(precision))
"""
WORKERS = {
    "lvis-api": """
from balms_det.evaluation.lvis_compat import run_lvis_api
ev = run_lvis_api(gt_path, dt_path, iou_type)
metrics, precision = ev.get_results(), ev.eval["precision"]
""",
    "faster-coco-eval": """
from faster_coco_eval import COCO, COCOeval_faster
gt = COCO(gt_path)
ev = COCOeval_faster(gt, gt.loadRes(dt_path), iouType=iou_type, lvis_style=True,
                     print_function=lambda *a: None)
ev.params.maxDets = [300]
ev.evaluate(); ev.accumulate(); ev.summarize()
names = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
         "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf", "AR@300": "AR_all",
         "ARs@300": "AR_small", "ARm@300": "AR_medium", "ARl@300": "AR_large"}
stats = ev.stats_as_dict
metrics = {k: stats[v] for k, v in names.items() if v in stats}
precision = None
""",
    "hotcoco": """
import contextlib, io
import hotcoco
gt = hotcoco.LVIS(gt_path)
ev = hotcoco.LVISEval(gt, hotcoco.LVISResults(gt, dt_path, max_dets=300), iou_type)
with contextlib.redirect_stdout(io.StringIO()):
    ev.run()
metrics = ev.get_results()
precision = ev.eval["precision"][..., 0]
""",
    "balms-det": """
protocol = sys.argv[5]
from balms_det.lvis_eval import evaluate_lvis
iou = "boundary" if protocol == "boundary" else iou_type
r = evaluate_lvis(gt_path, dt_path, iou, protocol="standard" if protocol == "boundary" else protocol)
metrics, precision = r.results, r.precision
print("stages:", {k: round(v, 2) for k, v in r.timings.items()}, file=sys.stderr)
""",
}
# (row label, worker, protocol argument): the balms-det rows of the table
ROWS = [
    ("lvis-api 0.5.3", "lvis-api", None),
    ("faster-coco-eval", "faster-coco-eval", None),
    ("hotcoco 1.3.0", "hotcoco", None),
    ("balms-det standard", "balms-det", "standard"),
    ("balms-det AP-fixed", "balms-det", "fixed"),
    ("balms-det AP-pool", "balms-det", "pool"),
    ("balms-det boundary", "balms-det", "boundary"),
]
PEERS = {"faster-coco-eval": "faster_coco_eval", "hotcoco": "hotcoco"}


def _tree_pss_kb(pid):
    """Proportional set size (KiB) of a process and its descendants: pages they share (a
    forked child's view of its parent's memory) counted once in all."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_worker(worker, gt_path, dt_path, iou_type, out_prefix, protocol=None):
    """(wall s from process start to metrics, peak MB, metrics, precision path) or None."""
    code = _WORKER_HEAD + WORKERS[worker] + _WORKER_TAIL
    cmd = [sys.executable, "-c", code, gt_path, dt_path, iou_type, out_prefix]
    if protocol:
        cmd.append(protocol)
    for ext in (".json", ".npy"):
        if os.path.exists(out_prefix + ext):
            os.remove(out_prefix + ext)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while True:
        pid, status, _ = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        t = time.perf_counter()
        peak = max(peak, _tree_pss_kb(p.pid))
        # reading a large process's page tables costs: keep the sampler under 5% of a CPU
        time.sleep(max(0.05, 20 * (time.perf_counter() - t)))
    if os.waitstatus_to_exitcode(status) != 0 or not os.path.exists(out_prefix + ".json"):
        return None
    with open(out_prefix + ".json") as f:
        res = json.load(f)
    peak = max(peak, res["hwm_kb"])  # the process's own high-water mark (KiB)
    npy = out_prefix + ".npy"
    return res["done"] - t0, peak / 1024.0, res["metrics"], npy if os.path.exists(npy) else None


def _diffs(res, ref):
    common = [k for k in ref[2] if k in res[2]]
    diff = max(abs(res[2][k] - ref[2][k]) for k in common) if common else None
    pdiff = None
    if res[3] and ref[3]:
        a, b = np.load(res[3]), np.load(ref[3])
        if a.shape == b.shape:
            pdiff = float(np.abs(a - b).max())
    return diff, pdiff


def _table(rows, args, data_dir, command):
    f = lambda v, fmt: "-" if v is None else fmt % v
    lines = [
        f"{args.images} images x {args.dets_per_image} detections/image, "
        f"{datetime.date.today().isoformat()}, `{command}`",
        "",
        "| evaluator | iou type | runs | wall s | peak MB | vs lvis-api | wall / hotcoco "
        "| peak / hotcoco | max abs metric diff | max abs precision diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["wall"] is None:
            lines.append(f"| {r['label']} | {r['iou']} | | failed | | | | | | |")
            continue
        lines.append(
            "| %s | %s | %d | %.2f | %.0f | %s | %s | %s | %s | %s |"
            % (
                r["label"],
                r["iou"],
                len(r["runs"]),
                r["wall"],
                r["peak"],
                f(r["speedup"], "%.1fx"),
                f(r["vs_hotcoco"], "%.2f"),
                f(r["peak_vs_hotcoco"], "%.2f"),
                f(r["diff"], "%.2e"),
                f(r["pdiff"], "%.2e"),
            )
        )
    boundary = next((r for r in rows if r["label"] == "balms-det boundary" and r["wall"]), None)
    segm = next(
        (
            r
            for r in rows
            if r["label"] == "balms-det standard" and r["iou"] == "segm" and r["wall"]
        ),
        None,
    )
    if boundary and segm:
        lines += [
            "",
            f"boundary / segm wall time (balms-det): {boundary['wall'] / segm['wall']:.2f}",
        ]
    lines += ["", "Wall times of the runs, in order (s):", ""]
    for r in rows:
        if len(r["runs"]) > 1:
            runs = ", ".join(f"{w:.2f}" for w, _ in r["runs"])
            lines.append(f"- {r['label']} ({r['iou']}): {runs}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=300)
    ap.add_argument("--iou-type", default="both", choices=["bbox", "segm", "both"])
    ap.add_argument(
        "--rows",
        default=",".join(r[0] for r in ROWS),
        help="comma-separated row labels to run (default: all)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each fast evaluator (median wall time)"
    )
    ap.add_argument(
        "--repeat-under", type=float, default=30.0, help="seconds below which a row is repeated"
    )
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "output", "bench_lvis"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    command = "python benchmarks/bench_lvis_eval.py " + " ".join(sys.argv[1:])

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
    wanted = [r for r in ROWS if r[0] in args.rows.split(",")]
    import importlib.util

    for label, worker, _ in list(wanted):
        if worker in PEERS and importlib.util.find_spec(PEERS[worker]) is None:
            print(f"{label}: not installed, skipped", flush=True)
            wanted = [r for r in wanted if r[0] != label]
    iou_types = ["bbox", "segm"] if args.iou_type == "both" else [args.iou_type]
    rows = []
    for iou_type in iou_types:
        todo = []  # (row, worker, protocol, prefix) in table order
        for label, worker, protocol in wanted:
            boundary = (protocol or "").startswith("boundary")
            if boundary and iou_type != "segm":
                continue
            shown = "boundary" if boundary else iou_type
            prefix = os.path.join(data_dir, "out_%s_%s_%s" % (worker, protocol, iou_type))
            row = dict(label=label, iou=shown, wall=None, peak=None, speedup=None, runs=[])
            row.update(vs_hotcoco=None, peak_vs_hotcoco=None, diff=None, pdiff=None, res=None)
            row["worker"] = worker
            row["protocol"] = protocol
            rows.append(row)
            todo.append((row, worker, protocol, prefix))
        for rnd in range(max(1, args.repeat)):
            for row, worker, protocol, prefix in todo:
                if rnd and not (row["res"] and row["res"][0] < args.repeat_under):
                    continue
                print(
                    "running %s (%s), run %d ..." % (row["label"], row["iou"], rnd + 1), flush=True
                )
                res = run_worker(worker, gt_path, dt_path, iou_type, prefix, protocol)
                if res is None:
                    print("  failed", flush=True)
                    row["res"] = None
                    continue
                if rnd == 0:
                    row["res"] = res  # metrics and precision of the first run
                row["runs"].append(res[:2])
                print("  %.2f s, %.0f MB peak" % (res[0], res[1]), flush=True)
        ref = next((r["res"] for r, w, _, _ in todo if w == "lvis-api" and r["res"]), None)
        hot = hot_peak = None
        for row, worker, protocol, _ in todo:
            if row["res"] is None:
                continue
            row["wall"] = float(np.median([w for w, _ in row["runs"]]))
            row["peak"] = max(p for _, p in row["runs"])
            if worker == "hotcoco":
                hot, hot_peak = row["wall"], row["peak"]
        for row, worker, protocol, _ in todo:
            if row["res"] is None:
                continue
            if ref is not None:
                row["speedup"] = ref[0] / row["wall"]
                if protocol in (None, "standard") and worker != "lvis-api":
                    row["diff"], row["pdiff"] = _diffs(row["res"], ref)
                elif worker == "lvis-api":
                    row["diff"] = row["pdiff"] = 0.0
            if hot is not None and worker != "lvis-api" and worker != "faster-coco-eval":
                row["vs_hotcoco"] = row["wall"] / hot
                row["peak_vs_hotcoco"] = row["peak"] / hot_peak
        for row in rows:
            row.pop("res", None)
    table = _table(rows, args, data_dir, command)
    from _common import write_outputs

    print()
    write_outputs(args.out_dir, "bench_lvis_eval", table, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
