import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

torch.set_num_threads(2)


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
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return 0


@pytest.fixture(autouse=True)
def event_storage():
    """Detectron2's losses log to an event storage: give every test one."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        yield storage
