"""Reading JSON for the engine, and its error: every input problem is an
:class:`LVISInputError` naming the file (and the entry) at fault."""

import importlib
import json
import os

try:  # several times faster; the standard library reads what it refuses (NaN, big integers)
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

__all__ = [
    "LVISInputError", "read_json", "where", "format_examples", "EXAMPLES_SHOWN", "load_core"
]  # fmt: skip

EXAMPLES_SHOWN = 10  # offending values named in a message before "... (N in all)"


class LVISInputError(ValueError):
    """Ground truth or detections that cannot be evaluated: malformed JSON, missing or malformed
    fields, NaN or infinite numbers, ids absent from the annotation file. The message names the
    file and the offending entries."""


def where(source):
    """`` in 'file'`` for a message, or nothing without a file."""
    return f" in '{source}'" if source else ""


def format_examples(values, limit=EXAMPLES_SHOWN, sort=True):
    """``[v1, v2, ... (N in all)]``: at most ``limit`` distinct values for an error message."""
    values = list(dict.fromkeys(values))
    if sort:
        values = sorted(values, key=lambda v: (str(type(v)), v))
    shown = ", ".join(repr(v) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values)} in all)"
    return "[" + shown + "]"


def read_json(path, what, error=LVISInputError):
    """The JSON value of a file: UTF-8 (invalid UTF-8 refused), nesting within Python's limit.
    A missing file raises FileNotFoundError, anything else ``error``, naming ``what`` and it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # (the standard library says why, or reads NaN / big integers)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{what} '{path}' is not valid UTF-8 (byte {e.start})") from None
    except RecursionError:
        raise error(f"{what} '{path}' is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise error(f"{what} '{path}' is not valid JSON: {e}") from None


def load_core():
    """The compiled core (``balms_det.lvis_eval._core``); ImportError saying how to build it and
    naming the reference engine where it is not built."""
    try:  # (a compiled leaf: imported by name, below every layer)
        return importlib.import_module("balms_det.lvis_eval._core")
    except ImportError as e:
        raise ImportError(
            "balms_det.lvis_eval: the compiled core (_core, C and Cython) is not built, and the "
            "engine has no other path: build it with `pip install -e .` (a C compiler and "
            "Cython), or evaluate with the reference engine, lvis-api (`--engine lvis-api`, "
            f"engine='lvis-api', BALMS.EVAL.ENGINE lvis-api; slow). ({e})"
        ) from None
