"""Small helpers shared across balms-det: JSON reading, atomic writes, Markdown tables, and the
formatting of offending values in error messages.

This module imports neither torch nor Detectron2 (the evaluation engine and the offline tools
use it without them); :func:`atomic_torch_save` imports torch when called.
"""

import json
import os

__all__ = [
    "read_json",
    "atomic_write",
    "atomic_write_json",
    "atomic_torch_save",
    "markdown_table",
    "format_examples",
    "EXAMPLES_SHOWN",
]

# (one definition, in the evaluation engine, which imports nothing of balms_det)
from .lvis_eval.jsonio import EXAMPLES_SHOWN, format_examples, read_json  # noqa: E402


def atomic_write(path, write, mode="w"):
    """Write ``path`` through ``write(file_object)`` into a temporary file of the same folder,
    then rename it: a reader never sees a half-written file, a crash leaves the old one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj, path, indent=1):
    """``json.dump`` of ``obj`` to ``path``, atomically (numpy scalars written as floats)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent, default=float))


def atomic_torch_save(obj, path):
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def markdown_table(rows, headers, floatfmt=".2f"):
    """A Markdown (pipe) table of ``rows`` (sequences of cells) under ``headers``, by
    ``tabulate`` (a Detectron2 dependency); floats with ``floatfmt``, None as an empty cell."""
    from tabulate import tabulate

    return tabulate(list(rows), headers=list(headers), tablefmt="pipe", floatfmt=floatfmt)
