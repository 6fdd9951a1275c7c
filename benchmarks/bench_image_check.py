"""The pre-flight stat pass over a training set's image files at LVIS size (issue 25: "fast at
LVIS size"): ``balms_det.engine.preflight.missing_image_files`` (one ``os.stat`` per file, in
1, 2 and 8 threads) against a plain sequential ``os.path.isfile`` loop, side by side in one run.

    python benchmarks/bench_image_check.py --files 100000 --rounds 3

The files are written once (1 byte each, the LVIS v1 train naming) under ``--root``; the cost
of a check is independent of file size (only the metadata is read).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_outputs, write_placeholder_files  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=100000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--root", default="output/bench_image_check/images")
    p.add_argument("--out", default="output/bench_image_check")
    a = p.parse_args()
    from balms_det.engine.preflight import missing_image_files

    os.makedirs(a.root, exist_ok=True)
    paths = [os.path.join(a.root, f"{i:012d}.jpg") for i in range(a.files)]
    write_placeholder_files(paths)
    gone = paths[:: max(1, a.files // 10)]  # 10 paths that do not exist
    gone_paths = [g + ".missing" for g in gone]
    paths = paths + gone_paths
    threads = [1, 2, 8]
    times = {f"missing_image_files, {n} thread(s)": [] for n in threads}
    times["isfile loop"] = []
    for _ in range(a.rounds):
        for n in threads:
            t = time.perf_counter()
            bad = missing_image_files(paths, threads=n)
            times[f"missing_image_files, {n} thread(s)"].append(time.perf_counter() - t)
            assert [b for b, _ in bad] == gone_paths
        t = time.perf_counter()
        plain = [q for q in paths if not os.path.isfile(q)]
        times["isfile loop"].append(time.perf_counter() - t)
        assert plain == gone_paths
    base = statistics.median(times["isfile loop"])
    lines = [
        f"{len(paths)} paths ({len(gone)} missing), median of {a.rounds} interleaved rounds:",
        "",
        "| check | median s | vs isfile loop |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        m = statistics.median(ts)
        lines.append(f"| {name} | {m:.3f} | {m / base:.2f}x |")
    write_outputs(a.out, "image_check", "\n".join(lines), dict(times=times, paths=len(paths)))


if __name__ == "__main__":
    main()
