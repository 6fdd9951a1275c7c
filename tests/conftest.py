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


def mixed_aspect_dataset(out_dir, num_images=48):
    """The first ``num_images`` images of the tiny synthetic training set as an LVIS-format
    file of their own, every other one padded on the right to 128 x 96 (landscape, the rest
    square): aspect-ratio grouping then holds images back at batch ends. Returns
    ``(json_file, image_root)`` for ``BALMS.DATASETS.REGISTER``."""
    import json

    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import balms_det.data.datasets  # noqa: F401 (registers the tiny synthetic set)

    DatasetCatalog.get("synth_lt_tiny_train")  # generated on first use
    root = os.path.dirname(MetadataCatalog.get("synth_lt_tiny_train").json_file)
    with open(os.path.join(root, "train.json")) as f:
        data = json.load(f)
    images = data["images"][:num_images]
    keep = {im["id"] for im in images}
    image_root = os.path.join(str(out_dir), "images")
    os.makedirs(image_root, exist_ok=True)
    for i, im in enumerate(images):
        img = cv2.imread(os.path.join(root, "train", im["file_name"]))
        if i % 2 == 0:
            img = cv2.copyMakeBorder(img, 0, 0, 0, 32, cv2.BORDER_CONSTANT, value=(110, 110, 110))
        cv2.imwrite(os.path.join(image_root, im["file_name"]), img)
        im.update(width=img.shape[1], height=img.shape[0])
        im.pop("coco_url", None)
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    json_file = os.path.join(str(out_dir), "mixed.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, image_root
