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
