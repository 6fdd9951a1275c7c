"""Count the host-device synchronisations that a package's own code asks for.

A GPU runs ahead of the Python process; every read of a device tensor's value into Python
(``item``, ``bool(t)``, ``tolist``, a copy to the CPU, an output whose size depends on values
such as ``nonzero`` or boolean-mask indexing) makes the host wait for the device. On a CPU
nothing waits, so :class:`SyncCounter` counts the *calls* that would wait on a GPU: it wraps

* ``Tensor.item / tolist / numpy / __array__ / __bool__ / __float__ / __int__ / __index__ /
  __complex__ / is_nonzero / cpu / nonzero / unique / unique_consecutive / masked_select /
  bincount / equal / allclose``,
* ``Tensor.repeat_interleave`` with tensor repeats and no ``output_size``,
* ``Tensor.to("cpu")`` (the CPU named by a string) without ``non_blocking``,
* ``Tensor.__getitem__ / __setitem__`` with a boolean (or uint8) mask among the indices,
* ``torch.nonzero / argwhere / unique / unique_consecutive / masked_select / bincount /
  repeat_interleave / equal / allclose`` and one-argument ``torch.where``,

and attributes each call to the innermost Python frame outside PyTorch and the standard library
(so ``f"{t}"``, ``logging`` or a torch helper called from a package count for that package).
A call is counted when that frame's file lies in one of ``packages``. Nested wrapped calls
(``Tensor.unique`` calling ``torch.unique``) count once. Detectron2's own reads (its proposal
sampling, its event storage) are attributed to Detectron2 and not counted: they are the same
with Detectron2's ``StandardROIHeads``.

:func:`cuda_sync_warnings` is the GPU counterpart: PyTorch's own sync detector
(``torch.cuda.set_sync_debug_mode("warn")``) with the same attribution.

Example::

    with SyncCounter() as sc:
        losses = model(batch)
        sum(losses.values()).backward()
    assert sc.count == 0, sc.report()
"""

import collections
import contextlib
import importlib
import os
import sys
import sysconfig
import threading
import warnings

import torch

__all__ = ["SyncCounter", "cuda_sync_warnings"]

_T = torch.Tensor
# functions of both torch and Tensor whose output size depends on values, or that compare
_BOTH = (
    "nonzero",
    "unique",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "equal",
    "allclose",
)
# Tensor methods that read values into Python or give value-dependent output sizes
_ALWAYS = (
    "item",
    "tolist",
    "numpy",
    "__array__",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "is_nonzero",
    "cpu",
) + _BOTH
_TORCH_ALWAYS = _BOTH + ("argwhere",)


def _is_mask(index):
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_is_mask(i) for i in index)
    return False


def _names_cpu(args, kwargs):
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU as the target device by a string
    (``x.to(y.device)`` is not counted: on a CPU run every device is the CPU)."""
    if kwargs.get("non_blocking") or (len(args) > 1 and args[1] is True):
        return False
    for a in list(args[:1]) + [kwargs.get("device")]:
        if isinstance(a, str) and a.split(":")[0] == "cpu":
            return True
    return False


def _repeats_need_sync(args, kwargs):
    repeats = args[0] if args else kwargs.get("repeats")
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


class _Attribution:
    """Decides, from the Python stack, whether a call belongs to one of ``packages``."""

    def __init__(self, packages):
        dirs = []
        for name in packages:
            mod = importlib.import_module(name)
            dirs.append(os.path.dirname(os.path.abspath(mod.__file__)) + os.sep)
        self.package_dirs = tuple(dirs)
        self.torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
        paths = sysconfig.get_paths()
        self.stdlib = tuple({os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib")})
        self.this_file = os.path.abspath(__file__)

    def _skipped(self, path):
        """PyTorch, this module and the standard library (not its site-packages)."""
        if path.startswith(("<", self.torch_dir)) or path == self.this_file:
            return True
        parts = path.split(os.sep)
        installed = "site-packages" in parts or "dist-packages" in parts
        return path.startswith(self.stdlib) and not installed

    def site(self, frame):
        """``(file, line, function)`` of the first frame outside torch / the standard library
        when it lies in the packages, else None."""
        while frame is not None:
            path = frame.f_code.co_filename
            path = path if path.startswith("<") else os.path.abspath(path)
            if not self._skipped(path):
                if path.startswith(self.package_dirs):
                    return path, frame.f_lineno, frame.f_code.co_name
                return None
            frame = frame.f_back
        return None


class SyncCounter:
    """Context manager counting the sync-prone calls attributed to ``packages`` (module doc).

    Attributes:
        events (list): ``(op, file, line, function)`` of each counted call, in order.
    """

    def __init__(self, packages=("balms_det",)):
        self._where = _Attribution(packages)
        self._local = threading.local()
        self._saved = []
        self.events = []

    @property
    def count(self):
        return len(self.events)

    def sites(self):
        """``Counter`` of ``"file:line function op"`` for the counted calls."""
        return collections.Counter(
            f"{os.path.relpath(f)}:{line} {fn} {op}" for op, f, line, fn in self.events
        )

    def report(self):
        """The counted sites, one a line (for assertion messages)."""
        return "\n".join(f"{n} x {s}" for s, n in self.sites().most_common()) or "(none)"

    def reset(self):
        self.events = []

    # -- patching --------------------------------------------------------------------------
    def _wrap(self, op, fn, when=None):
        counter = self

        def wrapper(*args, **kwargs):
            local = counter._local
            if getattr(local, "busy", False):
                return fn(*args, **kwargs)
            local.busy = True
            try:
                if when is None or when(args, kwargs):
                    site = counter._where.site(sys._getframe(1))
                    if site is not None:
                        counter.events.append((op,) + site)
                return fn(*args, **kwargs)
            finally:
                local.busy = False

        wrapper.__wrapped__ = fn
        return wrapper

    def _patch(self, owner, name, op, when=None):
        fn = getattr(owner, name)
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, self._wrap(op, fn, when))

    def __enter__(self):
        for name in _ALWAYS:
            self._patch(_T, name, f"Tensor.{name}")
        for name in _TORCH_ALWAYS:
            self._patch(torch, name, f"torch.{name}")
        self._patch(
            _T,
            "repeat_interleave",
            "Tensor.repeat_interleave",
            lambda a, k: _repeats_need_sync(a[1:], k),
        )
        self._patch(
            torch,
            "repeat_interleave",
            "torch.repeat_interleave",
            lambda a, k: _repeats_need_sync(a[1:], k),
        )
        self._patch(_T, "to", "Tensor.to(cpu)", lambda a, k: _names_cpu(a[1:], k))
        self._patch(_T, "__getitem__", "Tensor[mask]", lambda a, k: _is_mask(a[1]))
        self._patch(_T, "__setitem__", "Tensor[mask]=", lambda a, k: _is_mask(a[1]))
        self._patch(torch, "where", "torch.where(cond)", lambda a, k: len(a) + len(k) == 1)
        return self

    def __exit__(self, *exc):
        while self._saved:
            owner, name, old = self._saved.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        return False


_MISSING = object()


@contextlib.contextmanager
def cuda_sync_warnings(packages=("balms_det",)):
    """Count the synchronising CUDA operations that PyTorch detects
    (``torch.cuda.set_sync_debug_mode("warn")``), attributed as :class:`SyncCounter` does.

    Yields a dict ``{"ours": [(file, line, function), ...], "others": n}``: the warnings
    attributed to ``packages`` and the number of the rest (Detectron2's, PyTorch's)."""
    where = _Attribution(packages)
    found = {"ours": [], "others": 0}
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" not in str(message):
                return shown(message, category, filename, lineno, file, line)
            site = where.site(sys._getframe(1))
            if site is None:
                found["others"] += 1
            else:
                found["ours"].append(site)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
