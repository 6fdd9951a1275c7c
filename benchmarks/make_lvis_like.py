#!/usr/bin/env python
"""Write an LVIS-v1-format training annotation file of LVIS v1's size, without images.

The long tail is LVIS v1's own: class c is annotated in ``image_count[c]`` images, the per-class
image counts of Detectron2's builtin LVIS v1 metadata (1,203 classes: 337 rare, 461 common,
405 frequent; 360,952 image-class pairs over 100,170 images), scaled by ``images / 100170``
(at least 1 image per class) for a smaller file. Each image-class pair holds 1 + a geometric
number of instances (mean 3.52, LVIS v1's 1.27M instances per 360,952 pairs); each instance a
box and one polygon of 8-32 vertices (2 decimals, as LVIS writes them); an image without a
class gets one of a frequent class. Images carry LVIS's fields (``coco_url``, ``height``,
``width``, ``neg_category_ids``, ``not_exhaustive_category_ids``); categories LVIS's
(``id``, ``name``, ``synset``, ``frequency``, ``image_count``, ``instance_count``).

Seeded and deterministic. Written in chunks (a few hundred MB of memory at full size).

    .venv/bin/python benchmarks/make_lvis_like.py --images 100170 \\
        --out datasets/lvis_like/lvis_like_v1_100170_train.json
"""

import argparse
import json
import os
import time

import numpy as np

LVIS_V1_TRAIN_IMAGES = 100170
INSTANCES_PER_PAIR = 1270141 / 360952  # LVIS v1 train: instances per image-class pair
WIDTH, HEIGHT = 640, 480


def lvis_v1_categories():
    """(categories, image counts) of Detectron2's builtin LVIS v1 metadata, sorted by id."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
    from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT

    cats = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    counts = {c["id"]: c["image_count"] for c in LVIS_CATEGORY_IMAGE_COUNT}
    return cats, np.array([counts[c["id"]] for c in cats], dtype=np.int64)


def draw_pairs(num_images, image_counts, rng):
    """(image index, class index) of every image-class pair, sorted by image then class."""
    scale = num_images / LVIS_V1_TRAIN_IMAGES
    n = np.clip(np.round(image_counts * scale).astype(np.int64), 1, num_images)
    images = np.concatenate([rng.choice(num_images, k, replace=False) for k in n])
    classes = np.repeat(np.arange(len(n)), n)
    empty = np.setdiff1d(np.arange(num_images), images)
    frequent = np.flatnonzero(image_counts > 100)
    images = np.concatenate([images, empty])
    classes = np.concatenate([classes, rng.choice(frequent, len(empty))])
    order = np.lexsort((classes, images))
    return images[order], classes[order]


def _annotations(first_id, images, classes, rng):
    """LVIS annotation dicts of the given instances (image ids 1-based, category ids 1-based)."""
    m = len(images)
    w = rng.uniform(8, 300, m)
    h = rng.uniform(8, 300, m)
    x = rng.uniform(0, WIDTH - w)
    y = rng.uniform(0, HEIGHT - h)
    nv = rng.integers(8, 33, m)
    # angles of each polygon's vertices, sorted: row i uses its first nv[i] columns
    t = rng.uniform(0, 2 * np.pi, (m, 32))
    t[np.arange(32)[None, :] >= nv[:, None]] = np.inf
    t = np.sort(t, axis=1)
    t[~np.isfinite(t)] = 0.0
    px = x[:, None] + w[:, None] * (0.5 + 0.5 * np.cos(t))
    py = y[:, None] + h[:, None] * (0.5 + 0.5 * np.sin(t))
    polys = np.round(np.stack([px, py], 2).reshape(m, 64), 2).tolist()
    boxes = np.round(np.stack([x, y, w, h], 1), 2).tolist()
    areas = np.round(0.75 * w * h, 2).tolist()
    out = []
    for i in range(m):
        out.append(
            {
                "id": first_id + i,
                "image_id": int(images[i]) + 1,
                "category_id": int(classes[i]) + 1,
                "bbox": boxes[i],
                "area": areas[i],
                "segmentation": [polys[i][: 2 * nv[i]]],
            }
        )
    return out


def _write_list(f, items):
    """Items of a JSON list, comma-separated, without the brackets."""
    text = json.dumps(items, separators=(", ", ": "))
    f.write(text[1:-1])


def make_lvis_like(out, num_images=LVIS_V1_TRAIN_IMAGES, seed=0, chunk=20000):
    """Write the file; returns a summary dict (images, instances, classes, bytes, seconds)."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    cats, image_counts = lvis_v1_categories()
    pair_image, pair_class = draw_pairs(num_images, image_counts, rng)
    per_pair = rng.geometric(1.0 / INSTANCES_PER_PAIR, len(pair_image))
    inst_image = np.repeat(pair_image, per_pair)
    inst_class = np.repeat(pair_class, per_pair)
    K = len(cats)
    img_count = np.bincount(pair_class, minlength=K)
    inst_count = np.bincount(inst_class, minlength=K)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "LVIS-v1-like, generated (balms-det benchmarks)"}, ')
        f.write('"licenses": [{"id": 1, "name": "none"}], "images": [')
        for start in range(0, num_images, chunk):
            ids = np.arange(start, min(start + chunk, num_images))
            neg = rng.integers(0, 4, len(ids))
            imgs = [
                {
                    "id": int(i) + 1,
                    "width": WIDTH,
                    "height": HEIGHT,
                    "license": 1,
                    "coco_url": f"http://images.cocodataset.org/train2017/{int(i) + 1:012d}.jpg",
                    "date_captured": "2013-11-14 16:28:13",
                    "neg_category_ids": np.sort(rng.choice(K, k, replace=False) + 1).tolist(),
                    "not_exhaustive_category_ids": [],
                }
                for i, k in zip(ids, neg)
            ]
            if start:
                f.write(", ")
            _write_list(f, imgs)
        f.write('], "annotations": [')
        for start in range(0, len(inst_image), chunk):
            end = min(start + chunk, len(inst_image))
            anns = _annotations(start + 1, inst_image[start:end], inst_class[start:end], rng)
            if start:
                f.write(", ")
            _write_list(f, anns)
        f.write('], "categories": ')
        categories = [
            {
                "id": c["id"],
                "name": c["name"],
                "synset": c["synset"],
                "frequency": c["frequency"],
                "image_count": int(img_count[k]),
                "instance_count": int(inst_count[k]),
            }
            for k, c in enumerate(cats)
        ]
        json.dump(categories, f)
        f.write("}")
    os.replace(tmp, out)
    return dict(
        images=int(num_images),
        instances=int(len(inst_image)),
        classes=int(K),
        pairs=int(len(pair_image)),
        bytes=os.path.getsize(out),
        seconds=round(time.time() - t0, 1),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=LVIS_V1_TRAIN_IMAGES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(json.dumps(make_lvis_like(args.out, args.images, args.seed)), flush=True)


if __name__ == "__main__":
    main()
