"""Helpers shared by the benchmark scripts (not a public API)."""

import json
import os
import threading
import time


def write_outputs(out_dir, name, markdown, payload):
    """Write ``<out_dir>/<name>.md`` (the table) and ``<out_dir>/<name>.json`` (``payload``),
    print the table, and return the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = (os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "json"))
    with open(md_path, "w") as f:
        f.write(markdown + "\n")
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    print(markdown, flush=True)
    return md_path, json_path


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pin_mmap_threshold(nbytes=65536):
    """Pin glibc's mmap threshold (mallopt) so that freed tensor memory returns to the OS and
    RSS follows live memory; True on success."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """Context manager: ``start`` and ``peak`` resident set size (bytes) during the block,
    sampled every ``interval`` seconds by a thread."""

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


def write_placeholder_files(paths):
    """A 1-byte file at each path that does not exist yet (image files whose metadata is all a
    benchmark reads: the pre-flight stat pass)."""
    for path in paths:
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(b"x")
