"""Running evaluation work in forked processes (Linux / macOS; one process elsewhere).

A forked child sees its parent's memory as it was at the fork, without a copy (pages are
shared until written), so the inputs of a job need no pickling; only its result is sent back.
"""

import os
import pickle
import signal
from concurrent.futures import ThreadPoolExecutor

__all__ = ["default_workers", "run_forked", "run_threads"]


def default_workers():
    """Processes the engine uses by default: the CPUs this process may run on, at most 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def run_forked(fn, jobs):
    """``[fn(*job) for job in jobs]``: the first job in this process, the others in forked
    children (which see this process's memory as it is, without copying it), their results
    sent back pickled. An exception of any job is raised here."""
    if len(jobs) <= 1 or not hasattr(os, "fork"):
        return [fn(*job) for job in jobs]
    children = []
    try:
        for job in jobs[1:]:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: compute, send, leave without running the parent's exit code
                os.close(r)
                code = 0
                try:
                    out = (True, fn(*job))
                except BaseException as e:  # noqa: BLE001 (sent to the parent)
                    out = (False, e)
                try:
                    data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # noqa: BLE001
                    data = pickle.dumps((False, RuntimeError(f"unpicklable result: {e!r}")))
                try:
                    with os.fdopen(w, "wb") as f:
                        f.write(data)
                except BaseException:  # noqa: BLE001
                    code = 1
                os._exit(code)
            os.close(w)
            children.append((pid, r))
        outs = [fn(*jobs[0])]
        for pid, r in children:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            if not data:
                raise RuntimeError("an evaluation worker process died without a result")
            ok, value = pickle.loads(data)
            if not ok:
                raise value
            outs.append(value)
        children = []
        return outs
    finally:
        for pid, r in children:  # after an error here: stop and reap the others
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            try:
                os.close(r)
            except OSError:
                pass


def run_threads(fn, jobs):
    """``[fn(*job) for job in jobs]``, the jobs in threads of this process (for work that runs
    without the GIL: the compiled core's); the first exception of a job is raised here."""
    if len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))
