"""Small helpers shared across balms-det: JSON reading, atomic writes, Markdown tables, the
formatting of offending values in error messages, and the mixed-precision dtype setting.

This module imports neither torch nor Detectron2 (the evaluation engine and the offline tools
use it without them); :func:`atomic_torch_save` and :func:`amp_dtype` import torch when called.
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
    "amp_dtype",
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


AMP_DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def amp_dtype(value, what="BALMS.AMP_DTYPE"):
    """The torch dtype of a mixed-precision setting: None for off (None / False), float16 for
    True, else "float16" / "bfloat16" (or "fp16" / "bf16", or the torch dtype itself).
    Anything else raises ValueError naming ``what``."""
    import torch

    if value is None or value is False:
        return None
    if value is True:
        return torch.float16
    if isinstance(value, torch.dtype) and value in (torch.float16, torch.bfloat16):
        return value
    if isinstance(value, str) and value.lower() in AMP_DTYPES:
        return getattr(torch, AMP_DTYPES[value.lower()])
    raise ValueError(f"{what} must be 'float16' or 'bfloat16', got {value!r}")
