"""Generators of evaluation inputs shared by the evaluation tests and the golden script
(``tests/golden_eval.py``): seeded LVIS-like sets (small adversarial ones, an LVIS-v1-like one
of any size, boundary AP's), the hand-made ties case, and hostile inputs (named cases and a
seeded fuzz of mutated results files). Nothing here imports the engine: the same inputs before
and after it changes."""

import copy
import json
import re

import numpy as np
import pycocotools.mask as mask_utils


# ---------------------------------------------------------------------------------------
# Small LVIS-format sets (adversarial: zero areas, ignored and duplicated ground truth, ties,
# empty masks, polygons, exact duplicates)
# ---------------------------------------------------------------------------------------
def _polygon(rng, x, y, w, h, n=None):
    """A star-ish polygon inside the box (x, y, w, h)."""
    n = n or int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.55, 1.0, n)
    cx, cy = x + w / 2, y + h / 2
    px = cx + np.cos(ang) * rad * w / 2
    py = cy + np.sin(ang) * rad * h / 2
    return [round(float(v), 2) for xy in zip(px, py) for v in xy]


def _rle_str(rle):
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def make_dataset(seed, n_img=30, n_cat=8, adversarial=False):
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 40), n_cat, replace=False).tolist())
    freqs = ["r", "c", "f"]
    cats = []
    for i, cid in enumerate(cat_ids):
        f = freqs[i % 3]
        img_count = {"r": 5, "c": 50, "f": 500}[f]
        cats.append(
            {
                "id": cid,
                "name": "cat%d" % cid,
                "synonyms": [],
                "def": "",
                "frequency": f,
                "image_count": img_count,
                "instance_count": img_count * 2,
            }
        )
    images, anns = [], []
    aid = 1
    img_ids = sorted(rng.choice(np.arange(1, 10 * n_img), n_img, replace=False).tolist())
    for j, iid in enumerate(img_ids):
        w, h = int(rng.integers(120, 330)), int(rng.integers(100, 300))
        n_pos = 0 if j % 7 == 3 else int(rng.integers(1, 4))  # some images without gt
        pos = rng.choice(cat_ids, n_pos, replace=False).tolist() if n_pos else []
        others = [c for c in cat_ids if c not in pos]
        neg = rng.choice(
            others, int(rng.integers(0, min(4, len(others)) + 1)), replace=False
        ).tolist()
        nel = [c for c in pos if rng.random() < 0.3]
        images.append(
            {
                "id": iid,
                "width": w,
                "height": h,
                "file_name": "%d.jpg" % iid,
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": nel,
            }
        )
        for c in pos:
            for _ in range(int(rng.integers(1, 5))):
                # sizes spanning small / medium / large
                s = float(np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.95))))
                bw = min(w - 1.0, s * rng.uniform(0.6, 1.5))
                bh = min(h - 1.0, s * rng.uniform(0.6, 1.5))
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                polys = [_polygon(rng, x, y, bw, bh)]
                if rng.random() < 0.2:  # two-part mask
                    polys.append(_polygon(rng, x, y, bw / 2, bh / 2))
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                area = float(mask_utils.area(rle))
                ann = {
                    "id": aid,
                    "image_id": iid,
                    "category_id": c,
                    "segmentation": polys,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": area,
                }
                if adversarial:
                    u = rng.random()
                    if u < 0.05:
                        ann["area"] = 0.0  # dropped by lvis-api
                    elif u < 0.1:
                        ann["ignore"] = 1
                    elif u < 0.15 and anns and anns[-1]["image_id"] == iid:
                        # duplicate of the previous ground truth: ties in IoU
                        prev = anns[-1]
                        ann.update(
                            category_id=prev["category_id"],
                            bbox=list(prev["bbox"]),
                            segmentation=copy.deepcopy(prev["segmentation"]),
                            area=prev["area"],
                        )
                anns.append(ann)
                aid += 1
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


def make_results(dataset, seed, dets_per_img=(0, 40), adversarial=False, big_image=None):
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in dataset["categories"]]
    by_img = {}
    for a in dataset["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    results = []
    for im in dataset["images"]:
        iid, w, h = im["id"], im["width"], im["height"]
        gts = by_img.get(iid, [])
        n = int(rng.integers(*dets_per_img))
        if big_image is not None and iid == dataset["images"][0]["id"]:
            n = big_image
        for _ in range(n):
            u = rng.random()
            poly = None
            if gts and u < 0.55:  # near a ground truth: its polygons moved and scaled
                g = gts[int(rng.integers(len(gts)))]
                gx, gy, gw, gh = g["bbox"]
                j = rng.uniform(0, 0.25)
                x = gx + rng.normal(0, j * gw)
                y = gy + rng.normal(0, j * gh)
                sx, sy = np.exp(rng.normal(0, j, 2))
                bw, bh = max(1.0, gw * sx), max(1.0, gh * sy)
                poly = [
                    [
                        round(float(v), 2)
                        for v in np.stack(
                            [x + (np.array(p[0::2]) - gx) * sx, y + (np.array(p[1::2]) - gy) * sy],
                            1,
                        ).ravel()
                    ]
                    for p in g["segmentation"]
                ]
                c = g["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            else:
                bw, bh = rng.uniform(3, w * 0.7), rng.uniform(3, h * 0.7)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                if u < 0.75 and im["neg_category_ids"]:
                    c = int(rng.choice(im["neg_category_ids"]))
                else:
                    c = int(rng.choice(cat_ids))
            x, y = float(np.clip(x, 0, w - 2)), float(np.clip(y, 0, h - 2))
            bw, bh = float(min(bw, w - x)), float(min(bh, h - y))
            score = float(np.float32(rng.random()))
            if adversarial and rng.random() < 0.3:
                score = round(score, 1)  # ties
            if poly is None:
                poly = [_polygon(rng, x, y, bw, bh)]
            det = {
                "image_id": iid,
                "category_id": c,
                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                "score": score,
            }
            r = rng.random()
            if adversarial and r < 0.05:
                det["bbox"][2] = 0.0  # zero-area box: dropped (area = w * h)
            elif adversarial and r < 0.1:  # empty mask, non-empty box
                det["segmentation"] = _rle_str(
                    mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
                )
            if "segmentation" not in det:
                if adversarial and r > 0.8:
                    det["segmentation"] = poly  # polygons instead of RLE
                else:
                    det["segmentation"] = _rle_str(
                        mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
                    )
            results.append(det)
            if adversarial and rng.random() < 0.05:
                results.append(copy.deepcopy(det))  # exact duplicate: ties everywhere
    order = rng.permutation(len(results))
    return [results[i] for i in order]


# ---------------------------------------------------------------------------------------
# An LVIS-v1-like set at any size, fast (RLE strings computed analytically, no pycocotools)
# ---------------------------------------------------------------------------------------
LVIS_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 640), (427, 640)]


def _rle_strings(counts, lengths):
    """pycocotools' rleToString of many count lists at once (``counts`` concatenated,
    ``lengths`` per list): each count from the third on coded as its difference to the one two
    before, then 5 bits a character, a continuation bit, '0' + value."""
    n = len(lengths)
    start = np.r_[0, np.cumsum(lengths)[:-1]]
    pos = np.arange(len(counts)) - np.repeat(start, lengths)
    x = counts.astype(np.int64).copy()
    d = pos > 2
    x[d] = counts[d] - counts[np.flatnonzero(d) - 2]
    nchar = np.ones(len(x), np.int64)  # 5 bits a character, the top one the sign
    for k in range(1, 13):
        lim = np.int64(16) << (5 * (k - 1))
        nchar += (x >= lim) | (x < -lim)
    first = np.cumsum(nchar) - nchar
    j = np.arange(int(nchar.sum())) - np.repeat(first, nchar)  # character j of its value
    xr, nr = np.repeat(x, nchar), np.repeat(nchar, nchar)
    text = ((((xr >> (5 * j)) & 0x1F) | ((j < nr - 1) << 5)) + 48).astype(np.uint8).tobytes()
    per_list = np.add.reduceat(nchar, start) if len(x) else np.zeros(n, np.int64)
    per_list[lengths == 0] = 0
    cut = np.r_[0, np.cumsum(per_list)]
    return [text[cut[i] : cut[i + 1]].decode("ascii") for i in range(n)]


def _ellipse_rles(h, w, cx, cy, rx, ry):
    """(RLE counts strings, areas, boxes) of filled ellipses in an h x w image: pixel (x, y)
    is in when its centre is inside the ellipse."""
    n = len(cx)
    x0 = np.clip(np.floor(cx - rx).astype(np.int64), 0, w)
    x1 = np.clip(np.ceil(cx + rx).astype(np.int64) + 1, 0, w)
    ncol = np.maximum(x1 - x0, 0)
    det = np.repeat(np.arange(n), ncol)
    col = np.arange(ncol.sum()) - np.repeat(np.cumsum(ncol) - ncol, ncol) + x0[det]
    dx = (col + 0.5 - cx[det]) / rx[det]
    half = ry[det] * np.sqrt(np.clip(1 - dx * dx, 0, None))
    top = np.clip(np.ceil(cy[det] - half - 0.5), 0, h).astype(np.int64)
    bot = np.clip(np.floor(cy[det] + half - 0.5) + 1, 0, h).astype(np.int64)
    keep = bot > top
    det, col, top, bot = det[keep], col[keep], top[keep], bot[keep]
    s, e = col * h + top, col * h + bot
    # join runs that touch across a column end
    join = np.r_[False, (s[1:] == e[:-1]) & (det[1:] == det[:-1])]
    grp = np.cumsum(~join) - 1
    first = np.flatnonzero(~join)
    s, e_last = s[first], np.maximum.reduceat(e, first) if len(e) else e
    det = det[first]
    nrun = np.bincount(det, minlength=n)
    # counts per ellipse: s0, e0 - s0, s1 - e0, ..., h * w - e_last
    L = 2 * nrun + 1
    out = np.zeros(L.sum(), np.int64)
    base = np.cumsum(L) - L
    k = np.arange(len(s)) - np.repeat(np.cumsum(nrun) - nrun, nrun)
    prev_end = np.where(k > 0, np.r_[0, e_last[:-1]], 0)
    out[base[det] + 2 * k] = s - prev_end
    out[base[det] + 2 * k + 1] = e_last - s
    last_end = np.zeros(n, np.int64)
    last_end[det] = e_last  # the last run of each ellipse wins (runs are in order)
    out[base + L - 1] = h * w - last_end
    area = np.bincount(det, weights=e_last - s, minlength=n)
    tail = (last_end == h * w) & (nrun > 0)  # no closing run of 0s (as pycocotools)
    keep = np.ones(len(out), bool)
    keep[(base + L - 1)[tail]] = False
    return _rle_strings(out[keep], L - tail), area, (x0, x1)


def lvis_like(n_images, dets_per_image, seed=0, n_cat=1203):
    """(ground truth dict, results list) like LVIS v1 val: ``n_cat`` categories split r/c/f as
    LVIS's 337/461/405, 5-10 polygon ground truth per image (areas spanning small to large),
    negative and not-exhaustive category lists, and ``dets_per_image`` detections per image
    with RLE masks: near ground truth (its category or a confused one), on negative
    categories, random; float32 scores, some tied."""
    rng = np.random.default_rng(seed)
    freq = np.array(["r"] * 337 + ["c"] * 461 + ["f"] * 405)[
        np.linspace(0, 1202, n_cat).astype(int)
    ]
    rng.shuffle(freq)
    count = np.where(
        freq == "f",
        rng.integers(101, 3000, n_cat),
        np.where(freq == "c", rng.integers(11, 101, n_cat), rng.integers(1, 11, n_cat)),
    )
    cats = [
        {"id": k + 1, "name": f"cat_{k + 1}", "frequency": str(freq[k]),
         "image_count": int(count[k]), "instance_count": int(2 * count[k])}
        for k in range(n_cat)
    ]  # fmt: skip
    p_cat = count / count.sum()
    img_ids = np.sort(rng.choice(np.arange(1, 20 * n_images), n_images, replace=False))
    images, anns, results, dets = [], [], [], []
    for iid in img_ids.tolist():
        w, h = LVIS_SIZES[int(rng.integers(len(LVIS_SIZES)))]
        n_gt, n_pc = int(rng.integers(5, 11)), int(rng.integers(1, 5))
        pos = rng.choice(n_cat, n_pc, replace=False, p=p_cat) + 1
        gcat = np.concatenate([pos, rng.choice(pos, n_gt - n_pc)])
        neg = [int(c) for c in rng.choice(n_cat, int(rng.integers(3, 15)), False, p_cat) + 1
               if c not in pos]  # fmt: skip
        images.append({"id": iid, "width": w, "height": h, "file_name": f"{iid:012d}.jpg",
                       "neg_category_ids": neg,
                       "not_exhaustive_category_ids": [int(c) for c in pos if rng.random() < 0.15]})  # fmt: skip
        s = np.exp(rng.uniform(np.log(3), np.log(min(w, h) * 0.3), n_gt))
        grx = np.minimum(s * rng.uniform(0.6, 1.6, n_gt), 0.45 * w)
        gry = np.minimum(s * rng.uniform(0.6, 1.6, n_gt), 0.45 * h)
        gcx, gcy = rng.uniform(grx, w - grx), rng.uniform(gry, h - gry)
        ang = np.linspace(0, 2 * np.pi, 13)[:-1]
        for c, cx, cy, rx, ry in zip(gcat.tolist(), gcx, gcy, grx, gry):
            poly = np.round(np.stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)], 1), 2)
            xs, ys = poly[:, 0], poly[:, 1]
            area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c,
                         "segmentation": [poly.ravel().tolist()], "area": round(float(area), 2),
                         "bbox": [round(float(v), 2) for v in (xs.min(), ys.min(),
                                  xs.max() - xs.min(), ys.max() - ys.min())]})  # fmt: skip
        n = dets_per_image
        near = rng.random(n) < rng.uniform(0.25, 0.45)
        g = rng.integers(0, n_gt, n)
        j = rng.uniform(0.02, 0.3, n)
        s = np.exp(rng.uniform(np.log(2), np.log(min(w, h) * 0.15), n))
        rx = np.where(near, grx[g] * np.exp(rng.normal(0, j)), s * rng.uniform(0.6, 1.6, n))
        ry = np.where(near, gry[g] * np.exp(rng.normal(0, j)), s * rng.uniform(0.6, 1.6, n))
        cx = np.where(near, gcx[g] + rng.normal(0, j * grx[g]), rng.uniform(0, w, n))
        cy = np.where(near, gcy[g] + rng.normal(0, j * gry[g]), rng.uniform(0, h, n))
        cat = rng.choice(n_cat, n, p=p_cat) + 1
        cat = np.where(near & (rng.random(n) < 0.7), gcat[g], cat)
        if neg:
            cat = np.where(~near & (rng.random(n) < 0.15), rng.choice(neg, n), cat)
        score = np.where(near, rng.beta(2, 2, n), rng.beta(1, 4, n)).astype(np.float32)
        score = np.where(rng.random(n) < 0.05, np.round(score, 2), score).astype(np.float64)
        dets.append((iid, h, w, cx, cy, rx, ry, cat, score))
    # the masks, a batch per image size
    strings = {}
    for size in set((h, w) for _, h, w, *_ in dets):
        part = [d for d in dets if d[1:3] == size]
        cx, cy, rx, ry = (np.concatenate([d[k] for d in part]) for k in range(3, 7))
        strings[size] = iter(_ellipse_rles(*size, cx, cy, rx, ry)[0])
    for iid, h, w, cx, cy, rx, ry, cat, score in dets:
        x0, y0 = np.clip(cx - rx, 0, w), np.clip(cy - ry, 0, h)
        box = np.round(np.stack([x0, y0, np.clip(cx + rx, 0, w) - x0,
                                 np.clip(cy + ry, 0, h) - y0], 1), 2).tolist()  # fmt: skip
        for c, b, sc in zip(cat.tolist(), box, score.tolist()):
            seg = {"size": [h, w], "counts": next(strings[h, w])}
            results.append({"image_id": iid, "category_id": c, "bbox": b, "score": sc,
                            "segmentation": seg})  # fmt: skip
    gt = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}
    return gt, results


SIZES = [(12, 17), (20, 9), (15, 15), (9, 22)]  # small images: a missed check shows as a hang


def encode_counts(xs):
    """pycocotools' rleToString of already delta-coded values ``xs`` (any integers)."""
    out = []
    for x in xs:
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def hostile_dataset(seed=0):
    """A tiny LVIS dataset (polygon and RLE ground truth, one uncompressed RLE) and detections
    near it: RLE strings, a polygon, an uncompressed RLE, a box without a mask."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": c, "name": f"c{c}", "frequency": f, "image_count": 1, "instance_count": 1}
        for c, f in ((1, "r"), (2, "c"), (3, "f"))
    ]
    images, anns, dets = [], [], []
    for i, (h, w) in enumerate(SIZES):
        iid = i + 1
        images.append(
            {
                "id": iid,
                "height": h,
                "width": w,
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [],
            }
        )
        for k in range(2):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            x1, y1 = x0 + rng.uniform(2, w / 2), y0 + rng.uniform(2, h / 2)
            poly = [[round(v, 2) for v in (x0, y0, x1, y0 + 1, x1, y1, x0 + 1, y1)]]
            rle = mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
            seg = poly
            if k == 1 and i % 2:
                seg = {"size": [h, w], "counts": rle["counts"].decode()}
            if k == 1 and i == 2:  # uncompressed RLE (column-major runs, 0s first)
                flat = mask_utils.decode(rle).ravel(order="F")
                runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
                seg = {"size": [h, w], "counts": ([0] if flat[0] else []) + runs}
            ann = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": 1 + (k + i) % 2,
                "segmentation": seg,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
            }
            anns.append(ann)
            for j in range(3):  # detections near this ground truth
                m = mask_utils.decode(rle)
                m = np.roll(m, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), (0, 1))
                m &= (rng.random((h, w)) < 0.95).astype(np.uint8)
                r = mask_utils.encode(np.asfortranarray(m))
                d = {
                    "image_id": iid,
                    "category_id": ann["category_id"] if j < 2 else 3,
                    "score": round(float(rng.random()), 3),
                    "bbox": [round(v, 2) for v in mask_utils.toBbox(r).tolist()],
                    "segmentation": {"size": [h, w], "counts": r["counts"].decode()},
                }
                dets.append(d)
        dets[-1]["segmentation"] = [[1.0, 1.0, w - 2.0, 1.5, w / 2.0, h - 2.0]]
        if i == 1:
            del dets[-2]["segmentation"]  # scored with its box as polygon
    return {"images": images, "annotations": anns, "categories": cats}, dets


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_COUNTS = re.compile(rb'"counts": "((?:[^"\\]|\\.)*)"')
_VALUE = re.compile(rb'(?<=: )(?:-?\d[\d.eE+-]*|"[^"]*"|true|false|null)')
HUGE = [b"1e400", b"-1e400", b"1" + b"0" * 30, b"9223372036854775808", b"2147483648", b"1e9"]
HUGE += [b"-0", b"1e-400", b"0.0", b"-2147483649"]
SWAP = [None, True, "x", [], {}, -1, 1.5, [1, 2], {"size": [1, 1], "counts": "1"}, [[0, 0]]]


def _pick(rng, matches):
    return matches[int(rng.integers(len(matches)))] if matches else None


def _mutate(rng, text, dets, text_only=False):
    """The name of a mutation and the results file (bytes) made from ``text`` by it (by one of
    the first 7, which change the text, with ``text_only``; the others change ``dets``)."""
    kind = int(rng.integers(0, 7 if text_only else 11))
    n = len(text)
    pattern = {2: _COUNTS, 3: _COUNTS, 4: _NUMBER, 5: _VALUE, 6: re.compile(b'"')}.get(kind)
    if n == 0 or (pattern is not None and not pattern.search(text)):
        kind = 1 if n else 6  # (an empty text gets a byte)
    if n == 0:
        return "byte", bytes([int(rng.integers(256))])
    if kind == 0:  # a byte replaced
        i = int(rng.integers(n))
        b = bytes([int(rng.choice([rng.integers(256), 0x22, 0x7B, 0x5D, 0xFF, 0x39, 0x00]))])
        return "byte", text[:i] + b + text[i + 1 :]
    if kind == 1:  # cut
        i = int(rng.integers(n))
        return "cut", text[:i] + (b"]" if rng.random() < 0.5 else b"")
    if kind in (2, 3):  # characters into, or out of, an RLE string
        m = _pick(rng, list(_COUNTS.finditer(text)))
        s, e = m.span(1)
        if kind == 3:
            return "rle-cut", text[: e - int(rng.integers(1, 4))] + text[e:]
        i = int(rng.integers(s, e + 1))
        run = rng.choice([b"9" * 40, b"o" * 10, b"123", bytes(rng.integers(48, 112, 3).tolist())])
        return "rle-insert", text[:i] + run + text[i:]
    if kind == 4:  # a number replaced with a huge / odd one
        m = _pick(rng, list(_NUMBER.finditer(text)))
        return "number", text[: m.start()] + HUGE[int(rng.integers(len(HUGE)))] + text[m.end() :]
    if kind == 5:  # a value nested deeply
        m = _pick(rng, list(_VALUE.finditer(text)))
        d = int(rng.choice([3, 600, 1100, 5000]))
        return "nest", text[: m.start()] + b"[" * d + m.group() + b"]" * d + text[m.end() :]
    if kind == 6:  # invalid UTF-8 in a string
        q = _pick(rng, [m.start() for m in re.finditer(rb'"', text)])
        bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf4\x90\x80\x80"])
        return "utf8", text[: q + 1] + bad + text[q + 1 :]
    dets = copy.deepcopy(dets)
    d = dets[int(rng.integers(len(dets)))]
    if kind == 7:  # a value of another type
        key = _pick(rng, sorted(d))
        d[key] = copy.deepcopy(SWAP[int(rng.integers(len(SWAP)))])
        name = "swap"
    elif kind == 8:  # a key removed
        d.pop(_pick(rng, sorted(d)))
        name = "drop"
    elif kind == 9:  # a polygon coordinate far outside, or a polygon made long
        polys = [x for x in dets if isinstance(x.get("segmentation"), list)]
        seg = _pick(rng, polys)["segmentation"][0]
        if rng.random() < 0.5:
            seg[int(rng.integers(len(seg)))] = float(rng.choice([1e9, 2.0**31, -(2.0**31), 1e308]))
        else:
            seg.extend([-5, -5, 18, 18] * int(rng.integers(10, 200)))  # inside every margin
        name = "polygon"
    else:  # an RLE dict changed: size, or counts as a list
        rles = [x for x in dets if isinstance(x.get("segmentation"), dict)]
        seg = _pick(rng, rles)["segmentation"]
        if rng.random() < 0.5:
            seg["size"] = [int(v) for v in rng.integers(0, 30, 2)]
        else:
            seg["counts"] = [int(v) for v in rng.integers(-2, 200, int(rng.integers(1, 6)))]
        name = "rle-dict"
    return name, json.dumps(dets).encode()


def fuzz_cases(seed, count):
    ds, dets = hostile_dataset(seed)
    text = json.dumps(dets).encode()
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(count):
        name, t = _mutate(rng, text, dets)
        if rng.random() < 0.25:  # two mutations
            name2, t = _mutate(rng, t, dets, text_only=True)
            name = f"{name}+{name2}"
        cases.append((name, t, "segm" if k % 3 else "bbox"))
    return ds, cases


def mask_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def square(h, w, y0, x0, side_y, side_x=None):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + side_y, x0 : x0 + (side_x or side_y)] = 1
    return m


def slow_boundary(mask, d):
    """mask minus its erosion by d 3 x 3 steps, the image border counting as background."""
    cur = np.pad(mask.astype(bool), 1)
    for _ in range(d):
        nxt = cur.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nxt &= np.roll(np.roll(cur, dy, 0), dx, 1)
        cur = nxt
    return mask.astype(bool) & ~cur[1:-1, 1:-1]


def _ellipse(rng, h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1).astype(np.uint8)


def boundary_dataset(seed):
    """Small images (d = 1..2), elliptic masks (some cut by the image border, one crowd),
    detections near the ground truth, random ones and an empty one."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": 1, "name": "a", "frequency": "f", "image_count": 300},
        {"id": 2, "name": "b", "frequency": "c", "image_count": 30},
        {"id": 3, "name": "c", "frequency": "r", "image_count": 3},
    ]
    images, anns, results = [], [], []
    for iid in range(1, 9):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        images.append(
            {
                "id": iid,
                "height": h,
                "width": w,
                "neg_category_ids": [3] if iid % 3 == 0 else [],
                "not_exhaustive_category_ids": [],
            }
        )
        gts = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(1, 3)) if iid % 3 == 0 else int(rng.integers(1, 4))
            cy, cx = rng.uniform(-3, h + 3), rng.uniform(-3, w + 3)
            m = _ellipse(rng, h, w, cy, cx, rng.uniform(4, h / 2), rng.uniform(4, w / 2))
            if m.sum() == 0:
                continue
            ann = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": c,
                "segmentation": mask_rle(m),
                "area": float(m.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(mask_rle(m))],
            }
            if len(anns) == 3:
                ann["iscrowd"] = 1  # min() is for non-crowd ground truth only
            anns.append(ann)
            gts.append((c, m))
        for _ in range(int(rng.integers(4, 12))):
            if gts and rng.random() < 0.7:
                c, m = gts[int(rng.integers(len(gts)))]
                dy, dx = rng.integers(-3, 4, size=2)
                dm = np.roll(np.roll(m, int(dy), 0), int(dx), 1)
                if rng.random() < 0.5:  # thinner or fatter by a pixel
                    dm = slow_boundary(dm, 1).astype(np.uint8) ^ dm if rng.random() < 0.5 else dm
                if rng.random() < 0.2:
                    c = int(rng.integers(1, 4))
            else:
                c = int(rng.integers(1, 4))
                dm = _ellipse(
                    rng,
                    h,
                    w,
                    rng.uniform(0, h),
                    rng.uniform(0, w),
                    rng.uniform(3, 20),
                    rng.uniform(3, 20),
                )
            results.append(
                {
                    "image_id": iid,
                    "category_id": c,
                    "score": round(float(rng.random()), 2),
                    "segmentation": mask_rle(dm),
                    "bbox": [float(v) for v in mask_utils.toBbox(mask_rle(dm))],
                }
            )
    results.append(
        {
            "image_id": 1,
            "category_id": anns[0]["category_id"],
            "score": 0.99,
            "segmentation": mask_rle(np.zeros((images[0]["height"], images[0]["width"]))),
            "bbox": [1.0, 1.0, 5.0, 5.0],
        }
    )
    return {"images": images, "annotations": anns, "categories": cats}, results


# ---------------------------------------------------------------------------------------
# Hand-made: IoU ties, ignored ground truth, ground truth of id 0, ties in score
# ---------------------------------------------------------------------------------------
def rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def handcrafted_set():
    """IoU ties between ground truth (the last one wins), ignored ground truth taken only when
    no regular one matches, ground truth with id 0, ties in score across images."""
    cats = [
        {"id": 1, "name": "a", "frequency": "f", "image_count": 200, "instance_count": 400},
        {"id": 2, "name": "b", "frequency": "r", "image_count": 2, "instance_count": 2},
    ]
    images = [
        {"id": i, "width": 64, "height": 48, "neg_category_ids": [],
         "not_exhaustive_category_ids": []}
        for i in (1, 2, 3)
    ]  # fmt: skip
    images[2]["neg_category_ids"] = [2]

    def gt(aid, img, cat, box, **kw):
        return dict(id=aid, image_id=img, category_id=cat, bbox=box, area=float(box[2] * box[3]),
                    segmentation=rect(*box), **kw)  # fmt: skip

    anns = [
        gt(5, 1, 1, [0, 0, 10, 10]),
        gt(6, 1, 1, [2, 0, 10, 10]),  # tie for [1, 0, 10, 10]
        gt(7, 2, 1, [0, 0, 10, 10]),
        gt(8, 2, 1, [1, 0, 10, 10], ignore=1),
        gt(0, 3, 1, [20, 20, 12, 12]),
        gt(9, 2, 2, [30, 10, 20, 20]),
    ]

    def det(img, cat, box, score):
        return dict(image_id=img, category_id=cat, bbox=box, score=score, segmentation=rect(*box))

    res = [
        det(1, 1, [1, 0, 10, 10], 0.9),
        det(1, 1, [40, 30, 10, 10], 0.85),
        det(1, 1, [0, 0, 10, 10], 0.8),
        det(2, 1, [1, 0, 10, 10], 0.9),
        det(2, 1, [40, 30, 10, 10], 0.85),
        det(2, 1, [0, 0, 10, 10], 0.8),
        det(3, 1, [20, 20, 12, 12], 0.9),
        det(3, 2, [30, 10, 20, 20], 0.85),
        det(2, 2, [30, 10, 20, 20], 0.85),
        det(1, 2, [0, 0, 5, 5], 0.95),
    ]
    return {"images": images, "annotations": anns, "categories": cats}, res


# ---------------------------------------------------------------------------------------
# Named hostile inputs: each a function of nothing returning a case, a dict with
#   gt: a ground-truth dict or the bytes of its file; results: a list or the bytes of a file;
#   iou_type; kw: arguments of evaluate_lvis; offline: run the offline driver instead
#   (evaluate_detections_file, every protocol; kw its arguments)
# ---------------------------------------------------------------------------------------
def _small(seed=60, n_img=8, dets=(5, 9)):
    ds = make_dataset(seed, n_img=n_img)
    return ds, make_results(ds, seed + 1, dets_per_img=dets)


def _relevant(ds, res):
    """Index of a detection of a category with ground truth in its image."""
    pos = {(a["image_id"], a["category_id"]) for a in ds["annotations"]}
    return next(i for i, r in enumerate(res) if (r["image_id"], r["category_id"]) in pos)


def _text(obj):
    return json.dumps(obj).encode()


def _case(gt, results, iou_type="segm", **kw):
    offline = kw.pop("offline", False)
    return dict(gt=gt, results=results, iou_type=iou_type, kw=kw, offline=offline)


def _with_det(change, iou_type="segm", seed=60, **kw):
    def build():
        ds, res = _small(seed)
        res = copy.deepcopy(res)
        change(res, _relevant(ds, res))
        return _case(ds, _text(res), iou_type, **kw)

    return build


def _with_gt(change, iou_type="segm", **kw):
    def build():
        ds, res = _small()
        ds = copy.deepcopy(ds)
        text = change(ds)
        return _case(text if isinstance(text, bytes) else ds, _text(res), iou_type, **kw)

    return build


def _set(d, i, key, value):
    d[i][key] = value


def _hostile_rle(cut):
    def build():
        ds, dets = hostile_dataset()
        i = next(k for k, d in enumerate(dets) if d["category_id"] != 3 and "counts" in str(d))
        c = dets[i]["segmentation"]["counts"]
        dets[i]["segmentation"]["counts"] = c[:-2] if cut else c[:2] + "9" * 40 + c[2:]
        return _case(ds, _text(dets))

    return build


def _gt_rle(counts):
    def build():
        ds, dets = hostile_dataset()
        a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], dict))
        a["segmentation"]["counts"] = counts(a["segmentation"]["counts"])
        return _case(ds, _text(dets))

    return build


def _huge_polygon(value, in_gt):
    def build():
        ds, dets = hostile_dataset()
        if in_gt:
            a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], list))
            a["segmentation"][0][3] = value
        else:
            i = next(k for k, d in enumerate(dets) if isinstance(d.get("segmentation"), list))
            dets[i]["segmentation"][0][2] = value
        return _case(ds, _text(dets))

    return build


def _far_box():
    ds, dets = hostile_dataset()
    i = next(k for k, d in enumerate(dets) if "segmentation" not in d)
    dets[i]["bbox"] = [-1e12, -1e12, 3e12, 3e12]
    return _case(ds, _text(dets))


def _utf8(bad, iou_type):
    def build():
        ds, dets = hostile_dataset()
        text = _text(dets)
        k = text.index(b'"counts": "') + len(b'"counts": "') + 2
        return _case(ds, text[:k] + bad + text[k:], iou_type)

    return build


def _nested(depth, in_gt):
    def build():
        ds, dets = hostile_dataset()
        nest = "[" * depth + "]" * depth
        if in_gt:
            return _case(
                json.dumps(ds)[:-1].encode() + b', "x": ' + nest.encode() + b"}", _text(dets)
            )
        dets[3]["extra"] = "NEST"
        return _case(ds, json.dumps(dets).replace('"NEST"', nest).encode())

    return build


def _huge_number(field, value):
    def build():
        ds, dets = hostile_dataset()
        if field == "size":
            dets[4]["segmentation"]["size"] = value
        else:
            dets[4][field] = value
        return _case(ds, _text(dets))

    return build


def _replace_text(old, new, iou_type="bbox", count=1, **kw):
    """A results file whose text has ``old`` replaced by ``new`` (the first ``count`` times)."""

    def build():
        ds, res = _small()
        text = _text(res).replace(old, new, count)
        return _case(ds, text, iou_type, **kw)

    return build


def _results_text(text, iou_type="bbox", **kw):
    def build():
        return _case(_small()[0], text, iou_type, **kw)

    return build


def _bad_byte_early(size_mb=3):
    """A large results file with one bad byte near its start."""

    def build():
        ds, res = _small(60, n_img=8, dets=(40, 41))
        text = _text(res)
        text = b"[" + b", ".join([text[1:-1]] * max(1, int(size_mb * 2**20 / len(text)))) + b"]"
        return _case(ds, text[:100] + b"\x01" + text[101:], "bbox")

    return build


def _long_rle(n_chars):
    """A detection whose RLE counts string is ``n_chars`` long (and malformed)."""

    def build():
        ds, res = _small()
        i = _relevant(ds, res)
        res = copy.deepcopy(res)
        res[i]["segmentation"] = {"size": res[i]["segmentation"]["size"] if isinstance(
            res[i]["segmentation"], dict) else [1, 1], "counts": "1" * n_chars}  # fmt: skip
        return _case(ds, _text(res), "segm")

    return build


def _big_image(side):
    """Ground truth of a side x side image (a box over most of it) and a detection of it."""

    def build():
        img = {"id": 1, "height": side, "width": side, "neg_category_ids": [],
               "not_exhaustive_category_ids": []}  # fmt: skip
        box = [1000.0, 1000.0, side - 2000.0, side - 2000.0]
        ds = {
            "images": [img],
            "categories": [{"id": 1, "name": "a", "frequency": "f"}],
            "annotations": [dict(id=1, image_id=1, category_id=1, bbox=box, area=box[2] * box[3],
                                 segmentation=rect(*box))],
        }  # fmt: skip
        det = dict(image_id=1, category_id=1, bbox=box, score=0.9, segmentation=rect(*box))
        return _case(ds, _text([det]), "segm")

    return build


def _gt_image(key, value):
    return _with_gt(lambda ds: ds["images"][1].__setitem__(key, value))


def _gt_ann(key, value, iou_type="segm"):
    return _with_gt(lambda ds: ds["annotations"][0].__setitem__(key, value), iou_type)


def _gt_drop(where, key):
    return _with_gt(lambda ds: ds[where][0].pop(key))


def _gt_text(old, new):
    return _with_gt(lambda ds: json.dumps(ds).replace(old, new, 1).encode())


def _first_polygon_gt(ds):
    a = next(a for a in ds["annotations"] if isinstance(a["segmentation"], list))
    a["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]


def _offline_escaped_key():
    ds, res = _small()
    return _case(ds, _text(res).replace(b'"bbox"', b'"\\u0062box"'), None, offline=True)


def _offline(text):
    def build():
        return _case(_small()[0], text, None, offline=True)

    return build


HOSTILE = {
    # non-finite and missing values, wrong types (files and lists)
    "score_nan": _with_det(lambda r, i: _set(r, len(r) - 3, "score", float("nan")), "bbox"),
    "score_inf": _with_det(lambda r, i: _set(r, len(r) - 3, "score", float("inf")), "segm"),
    "score_minus_inf": _with_det(lambda r, i: _set(r, len(r) - 3, "score", -float("inf"))),
    "score_missing": _with_det(lambda r, i: r[2].pop("score"), "bbox"),
    "bbox_nan": _with_det(lambda r, i: _set(r, 4, "bbox", [1.0, float("nan"), 3.0, 4.0]), "bbox"),
    "bbox_three": _with_det(lambda r, i: _set(r, 2, "bbox", [1, 2, 3]), "bbox"),
    "image_id_float": _with_det(lambda r, i: _set(r, 3, "image_id", 2.5), "bbox"),
    "image_id_integral_float": _with_det(
        lambda r, i: _set(r, 3, "image_id", float(r[3]["image_id"])), "bbox"
    ),
    "unknown_ids": _with_det(
        lambda r, i: (_set(r, 0, "category_id", 99999), _set(r, 1, "image_id", 123456))
    ),
    "polygon_two_points": _with_det(
        lambda r, i: _set(r, i, "segmentation", [[10.0, 10.0, 20.0, 20.0]])
    ),
    "polygon_odd": _with_det(lambda r, i: _set(r, i, "segmentation", [[1.0, 2.0, 3.0]])),
    "polygon_none": _with_det(lambda r, i: _set(r, i, "segmentation", [])),
    "segm_string": _with_det(lambda r, i: _set(r, i, "segmentation", "not a mask")),
    "rle_no_size": _with_det(lambda r, i: _set(r, i, "segmentation", {"counts": "abc"})),
    "rle_wrong_size": _with_det(
        lambda r, i: _set(r, i, "segmentation", {"size": [3, 4], "counts": "PP"})
    ),
    "rle_counts_number": _with_det(
        lambda r, i: _set(r, i, "segmentation", {"size": [1, 1], "counts": 7})
    ),
    "broken_json": _with_det(lambda r, i: None, "bbox"),  # (cut below)
    # RLE strings and polygons (pycocotools would run for minutes or allocate gigabytes)
    "rle_truncated": _hostile_rle(True),
    "rle_long_run": _hostile_rle(False),
    "gt_rle_truncated": _gt_rle(lambda c: c[:-1]),
    "gt_rle_list_bad_sum": _gt_rle(lambda c: [3, 4]),
    "polygon_1e9": _huge_polygon(1e9, False),
    "polygon_2p31": _huge_polygon(2**31, False),
    "polygon_minus_2p31": _huge_polygon(-(2**31), False),
    "gt_polygon_1e9": _huge_polygon(1e9, True),
    "gt_polygon_2p31": _huge_polygon(2**31, True),
    "far_box_without_mask": _far_box,
    # JSON
    "utf8_ff_bbox": _utf8(b"\xff", "bbox"),
    "utf8_ff_segm": _utf8(b"\xff", "segm"),
    "utf8_c3_bbox": _utf8(b"\xc3(", "bbox"),
    "utf8_c3_segm": _utf8(b"\xc3(", "segm"),
    "utf8_surrogate_bbox": _utf8(b"\xed\xa0\x80", "bbox"),
    "utf8_surrogate_segm": _utf8(b"\xed\xa0\x80", "segm"),
    "nested_2000": _nested(2000, False),
    "nested_100000": _nested(100000, False),
    "gt_nested_100000": _nested(100000, True),
    "huge_image_id": _huge_number("image_id", 10**30),
    "image_id_2p63": _huge_number("image_id", 2**63),
    "huge_category_id": _huge_number("category_id", -(10**25)),
    "huge_score": _huge_number("score", 10**400),
    "huge_bbox": _huge_number("bbox", [0, 0, 10**400, 1]),
    "huge_rle_size": _huge_number("size", [10**30, 5]),
    # found by the independent fuzz of 2026-12-04 (issue 27, item 7)
    "bad_byte_early": _bad_byte_early(),
    "image_70000": _big_image(70000),
    "image_65536": _big_image(65536),
    "long_malformed_rle": _long_rle(2_500_000),
    "category_id_true": _replace_text(b'"category_id": ', b'"category_id": true, "x": '),
    "score_true": _replace_text(b'"score": ', b'"score": true, "x": '),
    "score_string": _replace_text(b'"score": ', b'"score": "0.9", "x": '),
    "bbox_string": _replace_text(b'"bbox": [', b'"bbox": ["1", '),
    "bbox_bool": _replace_text(b'"bbox": [', b'"bbox": [true, '),
    "escaped_key_bbox": _replace_text(b'"bbox"', b'"\\u0062box"', count=10**9),
    "results_ints": _results_text(b"[1, 2]"),
    "results_empty_dict": _results_text(b"[{}]"),
    "results_empty_list": _results_text(b"[[]]"),
    "surrogate_in_skipped_key": _replace_text(b'"score": ', b'"note": "\xed\xa0\x80", "score": '),
    "big_int_in_skipped_key": _replace_text(
        b'"score": ', b'"note": ' + b"7" * 5001 + b', "score": '
    ),
    "offline_escaped_key": _offline_escaped_key,
    "offline_ints": _offline(b"[1, 2]"),
    "offline_empty_dict": _offline(b"[{}]"),
    "offline_empty_list": _offline(b"[[]]"),
    "gt_image_id_string": _gt_image("id", "x"),
    "gt_image_id_float": _gt_image("id", 1.5),
    "gt_image_id_missing": _gt_drop("images", "id"),
    "gt_height_null": _gt_image("height", None),
    "gt_height_string": _gt_image("height", "x"),
    "gt_height_infinity": _gt_image("height", float("inf")),
    "gt_height_negative": _gt_image("height", -5),
    "gt_neg_ids_number": _gt_image("neg_category_ids", 5),
    "gt_annotation_string": _with_gt(lambda ds: ds["annotations"].__setitem__(0, "x")),
    "gt_images_null": _with_gt(lambda ds: ds.__setitem__("images", None)),
    "gt_bbox_strings": _gt_ann("bbox", ["1", "2", "3", "4"]),
    "gt_bbox_negative": _gt_ann("bbox", [1.0, 2.0, -3.0, 4.0]),
    "gt_bbox_strings_bbox": _gt_ann("bbox", ["1", "2", "3", "4"], "bbox"),
    "gt_bbox_negative_bbox": _gt_ann("bbox", [1.0, 2.0, -3.0, 4.0], "bbox"),
    "gt_polygon_two_points": _with_gt(_first_polygon_gt),
    "gt_segmentation_null": _gt_ann("segmentation", None),
    "gt_area_string": _gt_ann("area", "x"),
    "gt_ann_image_id_string": _gt_ann("image_id", "7"),
    "gt_ann_id_missing": _gt_drop("annotations", "id"),
    "gt_category_id_bool": _with_gt(lambda ds: ds["categories"][0].__setitem__("id", True)),
}


def hostile_case(name):
    case = HOSTILE[name]()
    if name == "broken_json":
        case["results"] = case["results"][:-20]
    return case
