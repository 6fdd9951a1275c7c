"""Does the own-data CPU template learn? Seeds x recipes on a 48-class long-tailed set of "your own".

The set is written to disk as LVIS-format JSON + PNG files by the synthetic generator (another
seed and size than the project's default set) and registered only through
``BALMS.DATASETS.REGISTER``, as a user's own files are. Each run is ``tools/train_net.py`` with
``configs/own_data/cpu_r18.yaml`` (recipe ``template``) or the same with the template's cures
undone (recipe ``from_scratch_lr0.02``: no gradient clipping, LR 0.02, 50 warm-up iterations,
the recipe that diverged in issue 25). The table: the iteration training stopped at (the last the
log reports: 299 = finished), whether every loss written to metrics.json was finite, the last
of them and the final AP / APr / APc / APf (mask, %); a diverged run shows its error.

    python benchmarks/bench_own_template.py --out output/bench_own_template --seeds 0 1 2

Every finished run is skipped on a re-run (its metrics are read back).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_outputs  # noqa: E402

TEMPLATE = os.path.join(REPO, "configs", "own_data", "cpu_r18.yaml")
RECIPES = {
    "template": [],
    "from_scratch_lr0.02": [
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "False",
        "SOLVER.BASE_LR",
        "0.02",
        "SOLVER.WARMUP_ITERS",
        "50",
    ],
}


def write_own_set(root, seed, image_size):
    """The 48-class set on disk; returns the REGISTER entries of its two splits."""
    from balms_det.data.synthetic import SyntheticLTConfig, generate_synthetic_lt

    paths = generate_synthetic_lt(
        root, SyntheticLTConfig(seed=seed, image_size=image_size), name="own48"
    )
    return [
        ["own_train", paths["train_json"], os.path.join(paths["dir"], "train")],
        ["own_val", paths["val_json"], os.path.join(paths["dir"], "val")],
    ]


def _losses(out):
    rows = []
    path = os.path.join(out, "metrics.json")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "total_loss" in row:
                    rows.append((row["iteration"], row["total_loss"]))
    return rows


def _stopped_at(out):
    """The last iteration the run's log reports (the one that failed, for a diverged run)."""
    found = re.findall(r" iter: (\d+) ", open(os.path.join(out, "log.txt")).read())
    return int(found[-1]) if found else -1


def run(recipe, seed, register, out_root, extra):
    out = os.path.join(out_root, "runs", f"{recipe}_seed{seed}")
    done = os.path.join(out, "bench_result.json")
    if os.path.exists(done):
        with open(done) as f:
            return dict(json.load(f), stopped_at=_stopped_at(out))
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TEMPLATE]
    cmd += ["BALMS.DATASETS.REGISTER", str(register), "SEED", str(seed), "OUTPUT_DIR", out]
    cmd += RECIPES[recipe] + list(extra)
    with open(os.path.join(out, "bench_log.txt"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    losses = _losses(out)
    res = dict(recipe=recipe, seed=seed, returncode=rc, last_iter=losses[-1][0] if losses else -1)
    res["finite"] = bool(losses) and all(math.isfinite(v) for _, v in losses)
    res["last_total_loss"] = losses[-1][1] if losses else None
    metrics = os.path.join(out, "inference", "own_val", "lvis_metrics.json")
    if rc == 0 and os.path.exists(metrics):
        with open(metrics) as f:
            m = json.load(f)
        res.update({k: m.get("segm", {}).get(k) for k in ("AP", "APr", "APc", "APf")})
    else:
        with open(os.path.join(out, "bench_log.txt")) as f:
            tail = [ln for ln in f.read().splitlines() if "Error" in ln or "NaN" in ln]
        res["error"] = tail[-1][:200] if tail else f"exit {rc}"
    with open(done, "w") as f:
        json.dump(res, f, indent=1)
    return dict(res, stopped_at=_stopped_at(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="output/bench_own_template")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides of every run (last)",
    )
    a = p.parse_args()
    register = write_own_set(os.path.join(a.out, "data"), a.data_seed, a.image_size)
    rows = [run(r, s, register, a.out, a.opts) for r in a.recipes for s in a.seeds]
    keys = ["recipe", "seed", "stopped_at", "finite", "last_total_loss", "AP", "APr", "APc", "APf"]

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(keys + ["error"]) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [
        "| " + " | ".join([cell(r.get(k)) for k in keys] + [r.get("error", "")]) + " |"
        for r in rows
    ]
    write_outputs(a.out, "own_template", "\n".join(lines), {"rows": rows, "register": register})


if __name__ == "__main__":
    main()
