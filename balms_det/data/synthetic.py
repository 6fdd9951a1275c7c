"""A small synthetic long-tailed instance-segmentation dataset, in LVIS format.

It exists to reproduce the failure that long-tail methods fix, on a laptop CPU, with no
download. Classes come in *look-alike groups*: every group shares one shape, and its members
differ only by a close hue and by texture (solid or striped). Inside each group the members are
spread over the whole frequency range, so a head class always has tail look-alikes that a
classifier trained on skewed data will prefer to confuse with it.

* Training split: the number of training images of class at frequency rank r falls
  geometrically (Zipf-like) from ``max_images_per_class`` to ``min_images_per_class``, so that
  the three LVIS groups (rare 1-10 images, common 11-100, frequent > 100) are all populated.
* Validation split: balanced (``val_instances_per_class`` instances of every class), so every
  class's AP can be measured.
* Annotations are exhaustive, so every absent class of an image is listed in its
  ``neg_category_ids``; ``not_exhaustive_category_ids`` is empty.
* Masks are polygons; the image is rendered from the same polygons, so masks are exact. Objects
  never overlap.

Everything is deterministic given the parameters (seed included). Files are written once into
``<root>/<name>-<hash of the parameters>/`` and reused afterwards.
"""

import colorsys
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..longtail import frequency_group

__all__ = ["SyntheticLTConfig", "generate_synthetic_lt", "class_image_counts", "class_names"]

logger = logging.getLogger(__name__)

# Shapes: number of vertices and a radial profile. Every group of look-alikes shares one shape.
_SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "ellipse")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticLTConfig:
    """Parameters of the synthetic long-tailed dataset (all of them enter the cache key)."""

    num_classes: int = 48
    num_train_images: int = 1000
    val_instances_per_class: int = 8
    image_size: int = 128
    seed: int = 0
    max_images_per_class: int = 400
    min_images_per_class: int = 1
    max_objects_per_image: int = 6
    # Hue distance (degrees) between neighbouring look-alikes in a group, and the per-instance
    # colour jitter (std, 0-255 scale): together they set how confusable look-alikes are.
    hue_step: float = 14.0
    color_jitter: float = 6.0

    def key(self):
        blob = json.dumps({"v": _FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def class_image_counts(cfg: SyntheticLTConfig):
    """Target number of training images of each class id 1..K (list, index 0 = class 1)."""
    K = cfg.num_classes
    ranks = _frequency_ranks(K)
    hi, lo = float(cfg.max_images_per_class), float(cfg.min_images_per_class)
    if hi > cfg.num_train_images:
        raise ValueError(
            f"max_images_per_class={cfg.max_images_per_class} exceeds "
            f"num_train_images={cfg.num_train_images}"
        )
    counts = []
    for c in range(K):
        r = ranks[c] / max(K - 1, 1)
        counts.append(int(round(hi * (lo / hi) ** r)))
    return counts


def _groups(K):
    """Look-alike group sizes: K classes spread over len(_SHAPES) shapes."""
    n_groups = min(len(_SHAPES), K)
    return [K // n_groups + (1 if g < K % n_groups else 0) for g in range(n_groups)]


def _class_specs(K, hue_step=14.0):
    """(shape, hue, texture, group, member index) of every class id 1..K."""
    specs = []
    for g, size in enumerate(_groups(K)):
        base_hue = g / len(_SHAPES)
        for m in range(size):
            # members alternate texture; hues step around the group's base hue
            texture = "stripes" if m % 2 else "solid"
            hue_offset = ((m // 2) - (size // 2 - 1) / 2.0) * hue_step / 360.0
            specs.append(
                dict(
                    shape=_SHAPES[g],
                    hue=(base_hue + hue_offset) % 1.0,
                    texture=texture,
                    group=g,
                    member=m,
                )
            )
    return specs


def _frequency_ranks(K):
    """Rank (0 = most frequent) of each class id 1..K: member m of every group gets ranks
    m * n_groups + g, so every group spans head and tail."""
    specs = _class_specs(K)
    order = sorted(range(K), key=lambda c: (specs[c]["member"], specs[c]["group"]))
    ranks = [0] * K
    for r, c in enumerate(order):
        ranks[c] = r
    return ranks


def _shape_polygon(shape, cx, cy, radius, angle, rng):
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        rad = np.full_like(t, radius)
    elif shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        rad = radius / np.sqrt((np.cos(t) / 1.0) ** 2 + (np.sin(t) / 0.55) ** 2)
    elif shape in ("square", "diamond", "triangle", "hexagon"):
        n = {"square": 4, "diamond": 4, "triangle": 3, "hexagon": 6}[shape]
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + (np.pi / 4 if shape == "square" else 0)
        rad = np.full_like(t, radius)
        if shape == "diamond":
            rad = radius * np.array([1.0, 0.6, 1.0, 0.6])
    elif shape == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        rad = radius * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    elif shape == "cross":
        a, b = radius, radius * 0.38
        pts = np.array(
            [
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
            ]
        )
        t = np.arctan2(pts[:, 1], pts[:, 0])
        rad = np.hypot(pts[:, 0], pts[:, 1])
    else:  # pragma: no cover - _SHAPES is closed
        raise ValueError(shape)
    t = t + angle
    xs = cx + rad * np.cos(t)
    ys = cy + rad * np.sin(t)
    return np.stack([xs, ys], axis=1)


def _background(rng, size):
    base = rng.uniform(70, 150)
    gx = np.linspace(-1, 1, size)[None, :] * rng.uniform(-25, 25)
    gy = np.linspace(-1, 1, size)[:, None] * rng.uniform(-25, 25)
    img = base + gx + gy + rng.normal(0, 8, size=(size, size))
    img = np.repeat(img[:, :, None], 3, axis=2) + rng.normal(0, 4, size=(1, 1, 3))
    return img


def _render_object(img, poly, spec, rng, jitter):
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    r, g, b = colorsys.hsv_to_rgb(spec["hue"], 0.85, 0.9)
    color = np.array([b, g, r]) * 255.0 + rng.normal(0, jitter, size=3)  # BGR for cv2
    layer = np.broadcast_to(color, img.shape).copy()
    if spec["texture"] == "stripes":
        period = 6
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (xx * np.cos(ang) + yy * np.sin(ang)) % period
        layer[phase < period / 2] *= 0.45
    m = mask.astype(bool)
    img[m] = layer[m]
    return mask


def _place(rng, size, radii, tries=60):
    """Non-overlapping centres for objects of the given radii (drops those that do not fit)."""
    placed = []
    for rad in radii:
        for _ in range(tries):
            cx, cy = rng.uniform(rad + 1, size - rad - 1, size=2)
            if all(math.hypot(cx - x, cy - y) > rad + r2 + 2 for x, y, r2 in placed):
                placed.append((cx, cy, rad))
                break
    return placed


def _render_split(cfg, rng, split, image_classes, out_dir, first_ann_id):
    """Render images whose object classes are given; return LVIS image and annotation dicts."""
    specs = _class_specs(cfg.num_classes, cfg.hue_step)
    size = cfg.image_size
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, anns = [], []
    ann_id = first_ann_id
    all_ids = set(range(1, cfg.num_classes + 1))
    for idx, classes in enumerate(image_classes):
        image_id = idx + 1
        img = _background(rng, size)
        radii = rng.uniform(size * 0.07, size * 0.17, size=len(classes))
        placed = _place(rng, size, radii)
        present = set()
        for (cx, cy, rad), cls in zip(placed, classes):
            spec = specs[cls - 1]
            poly = _shape_polygon(spec["shape"], cx, cy, rad, rng.uniform(0, 2 * np.pi), rng)
            mask = _render_object(img, poly, spec, rng, cfg.color_jitter)
            area = int(mask.sum())
            if area < 16:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = float(xs.min()), float(ys.min())
            bbox = [x0, y0, float(xs.max() + 1) - x0, float(ys.max() + 1) - y0]
            poly = np.clip(poly, 0, size)
            anns.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=int(cls),
                    bbox=bbox,
                    area=float(area),
                    iscrowd=0,
                    segmentation=[np.round(poly, 2).reshape(-1).tolist()],
                )
            )
            ann_id += 1
            present.add(int(cls))
        img = np.clip(img + rng.normal(0, 3, size=img.shape), 0, 255).astype(np.uint8)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(out_dir, split, file_name), img)
        images.append(
            dict(
                id=image_id,
                width=size,
                height=size,
                file_name=file_name,
                coco_url=f"synthetic://{split}/{file_name}",
                neg_category_ids=sorted(all_ids - present),
                not_exhaustive_category_ids=[],
            )
        )
    return images, anns


def _train_image_classes(cfg, rng):
    """For each training image, the list of class ids of its objects (exact image counts)."""
    counts = class_image_counts(cfg)
    n = cfg.num_train_images
    cap = cfg.max_objects_per_image
    if sum(counts) > n * cap:
        raise ValueError(
            f"{sum(counts)} class occurrences do not fit in {n} images of at most {cap} objects"
        )
    per_image = [[] for _ in range(n)]
    load = np.zeros(n)
    for c in np.argsort(counts)[::-1]:
        free = np.flatnonzero(load < cap)
        # prefer emptier images so objects spread evenly
        p = (cap - load[free]) ** 2
        chosen = rng.choice(free, size=counts[c], replace=False, p=p / p.sum())
        for i in chosen:
            per_image[i].append(int(c) + 1)
            load[i] += 1
            # head classes sometimes appear twice in an image (instance count > image count)
            if counts[c] > 100 and load[i] < cap and rng.random() < 0.15:
                per_image[i].append(int(c) + 1)
                load[i] += 1
    return [cls for cls in per_image if cls]


def _val_image_classes(cfg, rng):
    K, per = cfg.num_classes, cfg.val_instances_per_class
    pool = np.repeat(np.arange(1, K + 1), per)
    rng.shuffle(pool)
    k = max(1, min(4, cfg.max_objects_per_image))
    return [pool[i : i + k].tolist() for i in range(0, len(pool), k)]


def class_names(cfg: SyntheticLTConfig):
    """Names of class ids 1..K, e.g. ``circle_stripes_h346`` (shape, texture, hue in degrees)."""
    return [
        f"{s['shape']}_{s['texture']}_h{int(round(s['hue'] * 360)) % 360:03d}"
        for s in _class_specs(cfg.num_classes, cfg.hue_step)
    ]


def _categories(cfg, anns, num_images_with):
    specs = _class_specs(cfg.num_classes, cfg.hue_step)
    cats = []
    for c, name in enumerate(class_names(cfg), start=1):
        s = specs[c - 1]
        n_img = num_images_with.get(c, 0)
        freq = frequency_group(n_img)
        cats.append(
            dict(
                id=c,
                name=name,
                synset=name,
                frequency=freq,
                image_count=n_img,
                instance_count=anns.get(c, 0),
                group=s["group"],
            )
        )
    return cats


def generate_synthetic_lt(root, cfg: SyntheticLTConfig = SyntheticLTConfig(), name="synth_lt"):
    """Write (once) and return the paths of the dataset described by ``cfg``.

    Returns:
        dict with keys ``dir``, ``image_root`` (ends with a separator, as Detectron2's LVIS loader
        expects), ``train_json`` and ``val_json``.
    """
    out = os.path.join(root, f"{name}-{cfg.key()}")
    paths = dict(
        dir=out,
        image_root=out + os.sep,
        train_json=os.path.join(out, "train.json"),
        val_json=os.path.join(out, "val.json"),
    )
    if os.path.exists(paths["train_json"]) and os.path.exists(paths["val_json"]):
        return paths
    t0 = time.perf_counter()
    tmp = out + ".tmp-%d" % os.getpid()
    os.makedirs(tmp, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    train_classes = _train_image_classes(cfg, rng)
    val_classes = _val_image_classes(cfg, rng)
    train_imgs, train_anns = _render_split(cfg, rng, "train", train_classes, tmp, 1)
    val_imgs, val_anns = _render_split(cfg, rng, "val", val_classes, tmp, len(train_anns) + 1)

    img_count, inst_count = {}, {}
    seen = set()
    for a in train_anns:
        inst_count[a["category_id"]] = inst_count.get(a["category_id"], 0) + 1
        if (a["image_id"], a["category_id"]) not in seen:
            seen.add((a["image_id"], a["category_id"]))
            img_count[a["category_id"]] = img_count.get(a["category_id"], 0) + 1
    cats = _categories(cfg, inst_count, img_count)
    info = dict(description="balms-det synthetic long-tailed set", params=asdict(cfg))
    for split, imgs, anns in (("train", train_imgs, train_anns), ("val", val_imgs, val_anns)):
        with open(os.path.join(tmp, f"{split}.json"), "w") as f:
            json.dump(dict(info=info, images=imgs, annotations=anns, categories=cats), f)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: keep its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Generated synthetic long-tailed dataset in %s (%d train / %d val images, %.1f s)",
        out,
        len(train_imgs),
        len(val_imgs),
        time.perf_counter() - t0,
    )
    return paths
