"""A user's own tiny long-tailed dataset, written to disk as LVIS-format JSON + PNG files (the
tests of the own-data path register it by file, never through the synthetic generator)."""

import json
import os

import cv2
import numpy as np

CLASSES = ["apple", "bottle", "cup", "drill", "easel", "fork"]
# classes of the objects of each training image: class 0 in 6 images, 1 in 3, 2 in 2, the
# other three in one each (a long tail)
TRAIN_OBJECTS = [[0], [0, 1], [0], [0, 2], [0, 1], [0, 3], [1, 4], [2, 5]]
VAL_OBJECTS = [[0, 1], [2, 3], [4, 5]]
SIZE = 64


def _polygon(c, slot):
    """A square (even classes) or a triangle (odd), in the left or right half."""
    x0, y0 = 6 + slot * 30, 10 + (c % 3) * 8
    if c % 2 == 0:
        return [x0, y0, x0 + 22, y0, x0 + 22, y0 + 22, x0, y0 + 22]
    return [x0, y0 + 22, x0 + 11, y0, x0 + 22, y0 + 22]


def _write_split(root, split, objects, first_ann_id):
    folder = os.path.join(root, f"{split}_images")
    os.makedirs(folder, exist_ok=True)
    images, anns = [], []
    for i, classes in enumerate(objects):
        img = np.full((SIZE, SIZE, 3), 40, np.uint8)
        file_name = f"{split}_{i:03d}.png"
        for slot, c in enumerate(classes):
            poly = _polygon(c, slot)
            pts = np.array(poly, np.int32).reshape(-1, 2)
            colour = [int(v) for v in cv2.applyColorMap(np.uint8([[c * 40 + 20]]), 2)[0, 0]]
            cv2.fillPoly(img, [pts], colour)
            xs, ys = pts[:, 0], pts[:, 1]
            anns.append(
                dict(
                    id=first_ann_id + len(anns),
                    image_id=i + 1,
                    category_id=c + 1,
                    bbox=[int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys))],
                    area=float(cv2.contourArea(pts.astype(np.float32))),
                    segmentation=[[float(v) for v in poly]],
                    iscrowd=0,
                )
            )
        cv2.imwrite(os.path.join(folder, file_name), img)
        images.append(
            dict(
                id=i + 1,
                file_name=file_name,
                height=SIZE,
                width=SIZE,
                neg_category_ids=[],
                not_exhaustive_category_ids=[],
            )
        )
    cats = [dict(id=k + 1, name=n) for k, n in enumerate(CLASSES)]
    path = os.path.join(root, f"{split}.json")
    with open(path, "w") as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return path, folder


def write_own_set(root):
    """Write the set under ``root``; returns a dict with ``train_json``, ``train_images``,
    ``val_json``, ``val_images`` and ``classes``."""
    train_json, train_images = _write_split(root, "train", TRAIN_OBJECTS, 1)
    val_json, val_images = _write_split(root, "val", VAL_OBJECTS, 1000)
    return dict(
        train_json=train_json,
        train_images=train_images,
        val_json=val_json,
        val_images=val_images,
        classes=list(CLASSES),
    )


def register_entries(own, train_name, val_name):
    """The ``BALMS.DATASETS.REGISTER`` value of the set under the two names."""
    return str(
        [
            [train_name, own["train_json"], own["train_images"]],
            [val_name, own["val_json"], own["val_images"]],
        ]
    )


# the own-data CPU template sized for a test: 64 px, few proposals, batch 2, no workers
TINY = [
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "()",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "TEST.DETECTIONS_PER_IMAGE", "20",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
