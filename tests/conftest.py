import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "torch_free: needs neither torch nor Detectron2 (the evaluation engine's tests); a run "
        "of such tests only fails if they import torch",
    )


def _torch():
    """torch, imported (2 threads) by the tests that use it: the torch-free ones never do."""
    import torch

    if not getattr(torch, "_balms_tests_threads", False):
        torch.set_num_threads(2)
        torch._balms_tests_threads = True
    return torch


def pytest_sessionfinish(session, exitstatus):
    items = getattr(session, "items", [])
    if items and all(i.get_closest_marker("torch_free") for i in items) and "torch" in sys.modules:
        print("\ntorch was imported by tests marked torch_free", file=sys.stderr)
        session.exitstatus = 1


def tiny_cfg(*opts, output_dir=None):
    """The tiny synthetic config with overrides (a frozen CfgNode)."""
    from balms_det.engine.trainer import setup_cfg

    opts = list(opts)
    if output_dir is not None:
        opts += ["OUTPUT_DIR", str(output_dir)]
    return setup_cfg(os.path.join(CONFIGS, "synthetic", "tiny.yaml"), opts)


def load_tool(name):
    """``tools/<name>.py`` as a module (the tools make no ``sys.path`` edits: imported by path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def flat_cfg(node, prefix=""):
    """A (yacs) config as ``{"A.B.C": value}``."""
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(flat_cfg(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (a training run on a shared CPU: no spinning threads,
    and the arithmetic of a single-threaded process)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def seeded():
    _torch().manual_seed(0)
    return 0


@pytest.fixture(autouse=True)
def event_storage(request):
    """Detectron2's losses log to an event storage: give every test one (but torch-free
    ones)."""
    if request.node.get_closest_marker("torch_free"):
        yield None
        return
    _torch()
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        yield storage
