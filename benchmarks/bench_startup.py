#!/usr/bin/env python
"""Start-up cost at LVIS size: what building a trainer costs before its first step.

On an LVIS-v1-like annotation file (``make_lvis_like.py``: LVIS v1's long tail, size, and
fields; registered with Detectron2's LVIS loader and its builtin LVIS v1 metadata) with a 1-byte
placeholder file per image (the pre-flight check stats them; a build reads no image),
each path is built in a fresh process and timed (wall time and CPU time, user + system, of the
build, after imports) with its peak resident memory (``ru_maxrss``, imports included) and the
memory still resident after the build. On a shared machine the CPU time is the steadier
measure (other processes stretch the wall time, not the CPU time):

* ``d2_loader``: Detectron2's ``build_detection_train_loader(cfg)`` alone (the LVIS recipe's
  ``RepeatFactorTrainingSampler``, threshold 0.001): the reference of the ratios;
* ``d2_trainer``: Detectron2's ``DefaultTrainer(cfg)`` with its stock box head (model,
  optimizer, loader, hooks): the same work a ``BalmsTrainer`` does, without balms-det;
* ``d2_model``: Detectron2's ``build_model(cfg)`` alone (stock head): the part of every trainer
  build that does not depend on the data;
* ``softmax`` (configs/lvis/stage1_softmax_r50.yaml), ``balanced_sigmoid``
  (configs/lvis_balms_r50.yaml, the LVIS recipe), ``prior_sampler`` (the same with
  ``MODEL.ROI_BOX_HEAD.BALMS.PRIOR sampler``) and ``stage2_meta``
  (configs/lvis/stage2_balms_meta_r50.yaml): ``BalmsTrainer(cfg)`` (model, class counts,
  optimizer, loader, hooks), plus the Meta Reweigher's meta loader for ``stage2_meta`` (built
  in its ``before_train``).

Every path uses ``DATALOADER.NUM_WORKERS 0`` (a loader build starts no worker anyway; the meta
loader's would fork the process), ``MODEL.WEIGHTS ""`` and no test set. Paths run round-robin,
the order rotating each round; medians over rounds. ``--before DIR`` also runs the balms paths
with the ``balms_det`` package found in ``DIR`` (e.g. an archive of an older commit), in the
same rounds, as ``<path> (before)``.

    flock /tmp/balms-heavy.lock .venv/bin/python benchmarks/bench_startup.py \\
        --images 10000 100170 --rounds 2 --out output/bench_startup

``--breakdown`` times, in one process on one read, each pass Detectron2 and balms-det make over
the training set (CPU time, median of 3): the steady answer to "what does balms-det add to a
read" on a machine too noisy for 10% differences between processes.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _common import write_outputs, write_placeholder_files  # noqa: E402

CONFIGS = os.path.join(REPO, "configs")
BASE = os.path.join(CONFIGS, "Base-LVIS-R50.yaml")
PATHS = {
    "d2_loader": ("d2_loader", BASE, []),
    "d2_trainer": ("d2_trainer", BASE, ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"]),
    # the model alone (Detectron2's build_model, stock head): what d2_loader leaves out
    "d2_model": ("d2_model", BASE, ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"]),
    "softmax": ("balms", os.path.join(CONFIGS, "lvis", "stage1_softmax_r50.yaml"), []),
    "balanced_sigmoid": ("balms", os.path.join(CONFIGS, "lvis_balms_r50.yaml"), []),
    "prior_sampler": (
        "balms",
        os.path.join(CONFIGS, "lvis_balms_r50.yaml"),
        ["MODEL.ROI_BOX_HEAD.BALMS.PRIOR", "sampler"],
    ),
    "stage2_meta": ("balms", os.path.join(CONFIGS, "lvis", "stage2_balms_meta_r50.yaml"), []),
}
GOAL = {"stage2_meta": 1.2}  # every other path: 1.1 (CPU time and peak memory)


def dataset_name(images):
    return f"lvis_like_v1_{images}_train"  # "v1": Detectron2's LVIS v1 metadata


def data_paths(data_dir, images):
    # (Detectron2's LVIS loader joins image_root and coco_url's folder without a separator)
    return os.path.join(data_dir, f"{dataset_name(images)}.json"), os.path.join(data_dir, "images/")


def placeholder_images(image_root, images):
    """A 1-byte file per image of the generated sets (``train2017/<id>.jpg``), written
    once: the pre-flight check of BalmsTrainer stats every training image file (no image is
    read while a trainer is built, so their content does not matter)."""
    folder = os.path.join(image_root, "train2017")  # make_lvis_like's coco_url folder
    os.makedirs(folder, exist_ok=True)
    write_placeholder_files(os.path.join(folder, f"{i:012d}.jpg") for i in range(1, images + 1))


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------
# One path in this (fresh) process
# ------------------------------------------------------------------------------------------
def child(args):
    import resource

    import torch
    from detectron2.data.datasets import register_lvis_instances
    from detectron2.data.datasets.lvis import get_lvis_instances_meta

    from balms_det.engine.trainer import setup_cfg

    torch.set_num_threads(args.threads)
    kind, config, opts = PATHS[args.child]
    name = dataset_name(args.child_images)
    json_file, image_root = data_paths(args.data, args.child_images)
    register_lvis_instances(name, get_lvis_instances_meta("lvis_v1_train"), json_file, image_root)
    common = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.WEIGHTS", ""]
    common += ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0"]
    common += ["OUTPUT_DIR", os.path.join(args.out, "runs", args.child)]
    # (stage 2 without its stage-1 weights: only the build is measured)
    common += ["BALMS.ALLOW_FROZEN_RANDOM_INIT", "True"]
    cfg = setup_cfg(config, opts + common + list(args.opts))
    gc.collect()
    start = _rss()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if kind == "d2_loader":
        from detectron2.data import build_detection_train_loader

        keep = build_detection_train_loader(cfg)
    elif kind == "d2_trainer":
        from detectron2.engine import DefaultTrainer

        keep = DefaultTrainer(cfg)
    elif kind == "d2_model":
        from detectron2.modeling import build_model

        keep = build_model(cfg)
    else:
        from balms_det.engine.meta_reweigher import MetaReweigher
        from balms_det.engine.trainer import BalmsTrainer

        keep = BalmsTrainer(cfg)
        for h in keep._hooks:
            if isinstance(h, MetaReweigher):
                h._build_loader()  # the meta loader, as its before_train builds it
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    gc.collect()
    out = dict(
        path=args.child,
        images=args.child_images,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        rss_start=start,
        rss_after=_rss(),
    )
    del keep
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------
# What balms-det adds to a read, piece by piece (one process, one read)
# ------------------------------------------------------------------------------------------
def breakdown(args, images, repeats=3):
    """CPU seconds (median of ``repeats``) of each pass over one read of the training set:
    Detectron2's (the read, its repeat-factor pass, its serialization) and balms-det's (the
    class index, and every statistic taken from it), with the memory the index holds."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.common import DatasetFromList
    from detectron2.data.datasets import register_lvis_instances
    from detectron2.data.datasets.lvis import get_lvis_instances_meta
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from balms_det.class_index import ImageClassIndex

    name = dataset_name(images)
    json_file, image_root = data_paths(args.data, images)
    register_lvis_instances(name, get_lvis_instances_meta("lvis_v1_train"), json_file, image_root)

    def cpu():
        return time.process_time()

    t = cpu()
    dicts = get_detection_dataset_dicts([name])
    read = cpu() - t
    K = 1203

    def timed(fn):
        out = []
        for _ in range(repeats):
            t = cpu()
            value = fn()
            out.append(cpu() - t)
        return statistics.median(out), value

    rfs = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    d2_rfs, _ = timed(lambda: rfs(dicts, 0.001))
    index_s, index = timed(lambda: ImageClassIndex.from_dicts(dicts))
    arrays = [index.inst_image, index.inst_class, index.pair_image, index.pair_class]
    index_bytes = sum(a.nbytes for a in arrays)
    r_s, r = timed(lambda: index.repeat_factors(0.001))
    counts_s, _ = timed(lambda: (index.image_counts(K), index.instance_counts(K)))
    sampled_s, _ = timed(lambda: (index.image_counts(K, r), index.instance_counts(K, r)))
    meta_s, _ = timed(lambda: (index.class_balanced_factors(), index.classes_present(K)))
    ser_s, _ = timed(lambda: DatasetFromList(dicts, copy=False))
    rows = [
        ("Detectron2: read (get_detection_dataset_dicts)", read),
        ("Detectron2: repeat factors (its Python pass)", d2_rfs),
        ("Detectron2: serialization (DatasetFromList)", ser_s),
        ("balms-det: class index (one pass)", index_s),
        ("balms-det: repeat factors from the index", r_s),
        ("balms-det: image and instance counts", counts_s),
        ("balms-det: counts under the repeat factors (sampler prior)", sampled_s),
        ("balms-det: meta factors and classes present", meta_s),
    ]
    lines = ["| pass | CPU (s) | vs the read |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {v / read:.4f}x |" for k, v in rows]
    lines.append(f"| balms-det: memory of the class index | {index_bytes / 2**20:.1f} MiB | |")
    return "\n".join(lines), dict(images=images, rows=rows, index_bytes=index_bytes)


# ------------------------------------------------------------------------------------------
# The rounds
# ------------------------------------------------------------------------------------------
def run_child(args, path, images, code=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = code or REPO
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path]
    cmd += ["--child-images", str(images), "--data", args.data, "--out", args.out]
    cmd += ["--threads", str(args.threads), "--opts", *args.opts]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"[bench_startup] {path} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarize(runs, images):
    """One row per path: medians over rounds and the ratios to both Detectron2 references."""
    by = {}
    for r in runs:
        if r["images"] == images:
            by.setdefault(r["label"], []).append(r)
    med = {
        k: {
            m: statistics.median(x[m] for x in v)
            for m in ("seconds", "cpu_seconds", "peak_rss", "rss_after")
        }
        for k, v in by.items()
    }
    rows = []
    for label, m in med.items():
        path = label.split(" ")[0]
        row = dict(label=label, images=images, rounds=len(by[label]), **m)
        for ref in ("d2_loader", "d2_trainer"):
            if ref in med:
                row[f"time_vs_{ref}"] = m["seconds"] / med[ref]["seconds"]
                row[f"cpu_vs_{ref}"] = m["cpu_seconds"] / med[ref]["cpu_seconds"]
                row[f"peak_vs_{ref}"] = m["peak_rss"] / med[ref]["peak_rss"]
        goal = GOAL.get(path, 1.1)
        if not path.startswith("d2_") and "time_vs_d2_loader" in row:
            # the goal: CPU time and peak memory against Detectron2's loader build alone, and
            # against its trainer (which pays the same model build)
            row["goal"] = goal
            for ref in ("d2_loader", "d2_trainer"):
                if f"cpu_vs_{ref}" in row:
                    row[f"within_goal_vs_{ref}"] = bool(
                        row[f"cpu_vs_{ref}"] <= goal and row[f"peak_vs_{ref}"] <= goal
                    )
        rows.append(row)
    return rows


def markdown(rows):
    gib = 2**30

    def ratio(r, key):
        return f"{r[key]:.2f}x" if key in r else "-"

    def goal(r, ref):
        key = f"within_goal_vs_{ref}"
        return ("yes" if r[key] else "NO") if key in r else ""

    lines = [
        "| images | path | build wall (s) | CPU (s) | CPU vs D2 loader | CPU vs D2 trainer | "
        "peak RSS (GiB) | vs D2 loader | vs D2 trainer | resident after (GiB) | "
        "goal vs loader | goal vs trainer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['label']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{ratio(r, 'cpu_vs_d2_loader')} | {ratio(r, 'cpu_vs_d2_trainer')} | "
            f"{r['peak_rss'] / gib:.2f} | {ratio(r, 'peak_vs_d2_loader')} | "
            f"{ratio(r, 'peak_vs_d2_trainer')} | {r['rss_after'] / gib:.2f} | "
            f"{goal(r, 'd2_loader')} | {goal(r, 'd2_trainer')} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[10000, 100170])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    ap.add_argument("--before", default="", help="folder holding an older balms_det package")
    ap.add_argument("--data", default=os.path.join(REPO, "datasets", "lvis_like"))
    ap.add_argument("--out", default=os.path.join(REPO, "output", "bench_startup"))
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="time each pass over one read in this process instead (Detectron2's and "
        "balms-det's); writes breakdown.md",
    )
    ap.add_argument(
        "--opts", nargs="*", default=[], help="config overrides of every path (KEY VALUE ...)"
    )
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-images", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data, args.out = os.path.abspath(args.data), os.path.abspath(args.out)
    if args.child:
        return child(args)

    from make_lvis_like import make_lvis_like

    generated = {}
    for n in args.images:
        json_file, image_root = data_paths(args.data, n)
        os.makedirs(image_root, exist_ok=True)
        if not os.path.exists(json_file):
            print(f"[bench_startup] generating {json_file}", flush=True)
            generated[n] = make_lvis_like(json_file, n)
            print(f"[bench_startup] {generated[n]}", flush=True)
        placeholder_images(image_root, n)
    if args.breakdown:
        parts = [breakdown(args, n) for n in args.images]
        md = "\n\n".join(f"{p[1]['images']} images:\n\n{p[0]}" for p in parts)
        write_outputs(args.out, "breakdown", md, {"parts": [p[1] for p in parts]})
        return
    jobs = [(p, None) for p in args.paths]
    if args.before:
        jobs += [(p, os.path.abspath(args.before)) for p in args.paths if PATHS[p][0] == "balms"]
    runs = []
    for n in args.images:
        for r in range(args.rounds):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]
            for path, code in order:
                res = run_child(args, path, n, code)
                res["label"] = path + (" (before)" if code else "")
                res["round"] = r
                runs.append(res)
                print(
                    f"[bench_startup] {n} images, round {r}, {res['label']}: "
                    f"{res['seconds']:.1f} s ({res['cpu_seconds']:.1f} s CPU), "
                    f"peak {res['peak_rss'] / 2**30:.2f} GiB",
                    flush=True,
                )
    rows = [row for n in args.images for row in summarize(runs, n)]
    md = markdown(rows) + (
        f"\n\nMedians of {args.rounds} round(s), each path in a fresh process, "
        f"{args.threads} torch thread(s); data: {args.data}."
    )
    write_outputs(
        args.out,
        "startup",
        md,
        {"args": vars(args), "generated": generated, "runs": runs, "rows": rows},
    )


if __name__ == "__main__":
    main()
