"""Work of the compiled core in threads (it runs without the GIL)."""

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["default_workers", "run_threads"]


def default_workers():
    """Threads the engine uses by default: the CPUs this process may run on, at most 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def run_threads(fn, jobs):
    """``[fn(*job) for job in jobs]``, in threads; the first exception of a job is raised."""
    if len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))
