"""Overhead of the Meta Reweigher on a training step (issue 4; a benchmark, not a test).

One process, one model, one set of training batches. Training steps with the hook (its
``before_step``: meta batch loading + no-grad ROI features; the meta step inside the training
forward; ``after_step`` logging) and without it (the predictor's hook slot cleared) are
interleaved in pairs whose order alternates (AB, BA, AB, ...), each pair on the same training
batch; warm-up steps are not timed. The training batches are mapped once beforehand, so loading
the training batch is in neither time; the meta loader is the hook's own, as in training (the
config's ``DATALOADER.NUM_WORKERS``: with 1, the meta images are decoded by its worker process,
as the training images are by theirs; ``--meta-workers 0`` puts that decoding in the hook's
time).

Memory: after the timing phase, a few more steps of each kind run with a sampler thread that
reads the resident set size (``/proc/self/statm``) every 0.5 ms; for this phase only, glibc's
mmap threshold is pinned to 64 KiB (``mallopt``), so that freed tensor memory goes back to the
OS and RSS follows live memory (pinned during the timing phase it would slow every step by page
faults). Reported: the median over steps of the peak RSS during a step, and of the step's peak
increment over the RSS before it.

    .venv/bin/python benchmarks/bench_meta_overhead.py            # synthetic default, PERIOD 1

Options: ``--steps`` timed steps per variant (>= 20), ``--warmup``, ``--mem-steps``,
``--threads`` (torch threads, default 1, see its help), ``--config``, ``--json`` (write the
numbers), extra ``KEY VALUE`` config overrides at the end.
"""

import argparse
import json
import os
import statistics
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic", "mask_rcnn_r18_balms_meta.yaml")
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pin_mmap_threshold(nbytes=65536):
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


class _PeakRSS:
    def __init__(self, interval=0.0005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    ap.add_argument("--mem-steps", type=int, default=4, help="memory-sampled steps per variant")
    ap.add_argument("--pool", type=int, default=4, help="distinct training batches")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a CPU shared with other jobs, "
        "multi-threaded ops stall at their barriers whenever another process "
        "holds a core, which swamps the measurement)",
    )
    ap.add_argument(
        "--meta-workers",
        type=int,
        default=-1,
        help="workers of the meta loader (default: DATALOADER.NUM_WORKERS)",
    )
    ap.add_argument("--json", default="", help="write the results to this file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = ap.parse_args()

    import torch
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)

    from balms_det.engine.meta_reweigher import MetaReweigher
    from balms_det.engine.trainer import BalmsTrainer, setup_cfg

    opts = [
        "BALMS.META.ENABLED",
        "True",
        "BALMS.META.PERIOD",
        "1",
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        os.path.join(REPO, "output", "bench_meta_overhead"),
    ] + list(args.opts)
    cfg = setup_cfg(args.config, opts)
    torch.manual_seed(0)
    trainer = BalmsTrainer(cfg)
    hook = next(h for h in trainer._hooks if isinstance(h, MetaReweigher))
    if args.meta_workers >= 0:
        hook.cfg.defrost()
        hook.cfg.DATALOADER.NUM_WORKERS = args.meta_workers
        hook.cfg.freeze()
    simple = trainer._trainer
    pred = hook.predictor

    loader_it = iter(trainer.data_loader)
    pool = [next(loader_it) for _ in range(args.pool)]
    current = {"batch": pool[0]}

    class _Feed:
        def __next__(self):
            return current["batch"]

    simple._data_loader_iter_obj = _Feed()

    def step(with_hook, i):
        trainer.iter = simple.iter = i
        current["batch"] = pool[i % len(pool)]
        if with_hook:
            pred.set_roi_feature_hook(hook._on_roi_features)
            hook.before_step()
            simple.run_step()
            hook.after_step()
        else:
            pred.set_roi_feature_hook(None)
            simple.run_step()

    order = []
    for p in range(args.warmup + args.steps):
        order.append((p, (True, False) if p % 2 == 0 else (False, True)))

    times = {True: [], False: []}
    with EventStorage(1) as storage:
        simple.storage = trainer.storage = storage
        hook.before_train()
        for p, pair in order:
            dts = {}
            for with_hook in pair:
                t0 = time.perf_counter()
                step(with_hook, p)
                dts[with_hook] = time.perf_counter() - t0
                if p >= args.warmup:
                    times[with_hook].append(dts[with_hook])
            print(
                f"pair {p:3d}{' (warm-up)' if p < args.warmup else ''}: "
                f"hook {dts[True]:.3f}s no-hook {dts[False]:.3f}s",
                flush=True,
            )
        mem = {True: [], False: []}
        pinned = _pin_mmap_threshold()
        for p in range(args.mem_steps):
            for with_hook in ((True, False) if p % 2 == 0 else (False, True)):
                with _PeakRSS() as m:
                    step(with_hook, args.warmup + args.steps + p)
                mem[with_hook].append((m.peak, m.peak - m.start))
        hook.after_train()

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: statistics.median(a for a, _ in v) for k, v in mem.items()}
    incr = {k: statistics.median(b for _, b in v) for k, v in mem.items()}
    ratio = med[True] / med[False]
    res = {
        "config": os.path.relpath(args.config, REPO),
        "overrides": opts,
        "torch_threads": torch.get_num_threads(),
        "images_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "meta_images_per_batch": cfg.BALMS.META.IMS_PER_BATCH,
        "meta_loader_workers": hook.cfg.DATALOADER.NUM_WORKERS,
        "timed_steps_per_variant": args.steps,
        "mmap_threshold_pinned_for_memory": pinned,
        "median_step_s": {"hook": med[True], "no_hook": med[False]},
        "step_time_ratio": ratio,
        "peak_rss_mib": {"hook": peak[True] / 2**20, "no_hook": peak[False] / 2**20},
        "peak_rss_ratio": peak[True] / peak[False],
        "step_peak_increment_mib": {"hook": incr[True] / 2**20, "no_hook": incr[False] / 2**20},
        "step_peak_increment_ratio": incr[True] / max(incr[False], 1),
        "meta_steps": hook.meta_steps,
    }
    print()
    print("| variant | median step (s) | peak RSS (MiB) | step peak increment (MiB) |")
    print("|---|---|---|---|")
    for k, name in ((False, "without hook"), (True, "with Meta Reweigher")):
        print(f"| {name} | {med[k]:.3f} | {peak[k] / 2**20:.0f} | {incr[k] / 2**20:.0f} |")
    print(
        f"| ratio | {ratio:.3f}x | {res['peak_rss_ratio']:.3f}x | "
        f"{res['step_peak_increment_ratio']:.3f}x |"
    )
    print(
        f"\n{args.steps} timed steps per variant (interleaved, {args.warmup} warm-up pairs "
        f"excluded), batch {cfg.SOLVER.IMS_PER_BATCH} + meta batch "
        f"{cfg.BALMS.META.IMS_PER_BATCH} (meta loader workers "
        f"{hook.cfg.DATALOADER.NUM_WORKERS}), torch threads {torch.get_num_threads()}. "
        f"Target: step-time ratio <= 1.15 -> {'OK' if ratio <= 1.15 else 'MISSED'}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
