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
