"""Reading LVIS results: a JSON file (or a list, written as JSON) scanned by the compiled core a
piece at a time into columns, each piece's detections checked under the input rules, located
in the ground truth and, where lvis-api evaluates them, given their masks: areas, boxes made
from masks, and for mask iou types their IoUs with the ground truth of their cell.

A large input is read in byte ranges by several threads (the core works without the GIL); a
range boundary is proved by the range before it ending there. Time and memory are linear in
the input: a piece is scanned once, an element cut by a piece's end is scanned again with a
piece twice as large.
"""

import io
import json
import os
import re

import numpy as np

from ._threads import run_threads
from .jsonio import LVISInputError, format_examples, load_core
from .params import THR_EFF, dilation
from .rules import detections_file, explain_results, ident, mask_problem, segmentation_problem

__all__ = ["Reading", "read_detections", "survey", "results_text"]

PIECE_BYTES = 4 << 20  # text scanned at a time
PARALLEL_MIN_BYTES = 32 << 20  # inputs below this are read by one thread
_THR0 = float(THR_EFF.min())  # a detection below this IoU with every ground truth never matches
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
# the columns of the detections read; of the relevant ones (lvis-api evaluates them) also
# ``mask_area`` (NaN where not made), ``no_seg`` (no segmentation: scored with its box as a
# polygon) and ``iou_off``: where its IoUs with the ground truth of its cell start in
# ``iou_val`` (mask iou types; -1 outside such cells)
FIELDS = ("img", "cat", "score", "has_box", "rel", "box", "mask_area", "no_seg", "iou_off")


class Reading:
    """What to read: the ground truth, the iou type, boxes ignored or not, which mask areas
    ("all" or "boxless": of the detections without a box), the results' file (for messages)."""

    def __init__(self, gt, iou_type, ignore_boxes, areas, source, ious=True):
        self.gt = gt
        self.iou_type = iou_type
        self.masks = iou_type in ("segm", "boundary")
        self.ious = ious and self.masks
        self.ignore_boxes = ignore_boxes
        self.areas = "all" if ignore_boxes else areas
        self.need_segs = self.masks or self.areas == "all"
        self.source = source


def _plain(value):
    """json.dumps' fallback for what a results list may hold beyond JSON's types."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")  # (an RLE string from pycocotools)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"results hold a {type(value).__name__}, which JSON cannot write")


def results_text(results):
    """The JSON text of a results list (read as a file would be)."""
    return json.dumps(list(results), default=_plain).encode()


class _Text:
    """A results input as a seekable byte stream, and the name errors give it."""

    def __init__(self, results, source=None):
        self.source = source
        if isinstance(results, (str, os.PathLike)):
            self.path = os.fspath(results)
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"Detections file '{self.path}' does not exist")
            self.size = os.path.getsize(self.path)
            self.source = self.path
            self.data = None
        elif isinstance(results, (list, tuple)):
            self.data = results_text(results)
            self.size = len(self.data)
        else:
            raise TypeError(f"results must be a list of dicts or a path, not {type(results)}")

    def open(self):
        return open(self.path, "rb") if self.data is None else io.BytesIO(self.data)

    def ranges(self, parts):
        """Byte ranges (start, stop) starting at a '{' after '}, ' (the first at 0): candidate
        element boundaries, proved while reading."""
        if parts <= 1 or self.size < PARALLEL_MIN_BYTES:
            return [(0, self.size)]
        starts = [0]
        with self.open() as f:
            for k in range(1, parts):
                f.seek(self.size * k // parts)
                m = _BOUNDARY.search(f.read(1 << 20))
                if m is not None:
                    cand = self.size * k // parts + m.end() - 1
                    if starts[-1] < cand:
                        starts.append(cand)
        return list(zip(starts, starts[1:] + [self.size]))


class _Range:
    """The result of reading one byte range."""

    def __init__(self):
        self.parts, self.count = [], 0  # (columns of its pieces, elements read)
        self.unknown = ([0, set()], [0, set()])  # (count, ids) of unknown images, categories
        self.any_box = self.any_seg = False
        self.proved = True  # it ends at an element boundary where it should


def _read_range(text, start, stop, how, first):
    """Scan the bytes [start, stop) of ``text`` (``first``: from the array's opening) and read
    each piece (:func:`_piece`); detections counted from the range's start."""
    core = load_core()
    scanner = core.Scanner(core.MODES["OPEN" if first else "ELEMENT"])
    out = _Range()
    with text.open() as f:
        f.seek(start)
        buf, base, left = b"", start, stop - start
        while True:
            more = f.read(min(left, max(PIECE_BYTES, 2 * len(buf))))
            left -= len(more)
            buf = buf + more if buf else more
            status, pos, why = scanner.scan(buf, left == 0)
            cols = scanner.take()
            if status == core.SCAN_BAD_:
                raise _not_json(text, base + pos, why, scanner.mode == core.MODES["OPEN"], buf)
            if len(cols["img"]):
                _piece(cols, buf, out, how, text.source)
            buf, base = buf[pos:], base + pos
            if left == 0:
                break
    closed = status == core.SCAN_DONE_
    if stop == text.size and not closed:
        why = "the array is not closed" if first or out.count else "it holds no array"
        raise LVISInputError(f"{detections_file(text.source)} is not valid JSON: {why}")
    if stop < text.size:  # the next range must start at the element after a ','
        out.proved = not closed and scanner.mode == core.MODES["ELEMENT"] and not buf.strip()
    return out


class _LongInt(int):
    """An integer of more digits than Python converts by default (a value no rule accepts)."""

    def __new__(cls, digits):
        return int.__new__(cls, 2**64)

    def __init__(self, digits):
        self.digits = digits

    def __repr__(self):
        return f"{self.digits[:20]}... ({len(self.digits)} digits)"


def _loads(text):
    """Python's value of a JSON text the scanner read (an integer of any length included)."""
    return json.loads(bytes(text), parse_int=lambda s: int(s) if len(s) < 4000 else _LongInt(s))


def _not_json(text, pos, why, opening, buf):
    """The error of a text that is not a JSON array of results at byte ``pos``."""
    if opening:  # not an array at all
        hint = ""
        if buf.lstrip()[:1] == b"{" and b'"annotations"' in buf[: 1 << 20]:
            hint = (
                " (it looks like an annotation file: it has 'annotations'); pass LVIS results "
                "or instances_predictions.pth"
            )
        return LVISInputError(f"{detections_file(text.source)} must hold a list of results{hint}")
    near = f" (near byte {pos})" if text.data is None else ""
    return LVISInputError(f"{detections_file(text.source)} is not valid JSON{near}: {why}")


def _explain(cols, buf, bad, out, how, source):
    """Raise what is wrong with the elements ``bad`` of a piece."""
    items = []
    for i in bad.tolist():
        a, b = cols["span"][i]
        items.append((out.count + i, _loads(buf[a:b])))
    explain_results(items, source, how.ignore_boxes)


def _piece(cols, buf, out, how, source):
    """Check, locate and read (masks) the elements of one scanned piece into ``out``."""
    F = load_core().FLAGS
    flags = cols["flags"]
    n = len(flags)
    has_box = (flags & F["HAS_BOX"]) != 0
    segkey = (flags & F["SEGKEY"]) != 0
    bad = (flags & F["BAD"]) != 0
    bad |= ~segkey & (~has_box | how.ignore_boxes)
    out.any_box |= bool(has_box.any())
    out.any_seg |= bool(segkey.any())
    if bad.any():
        _explain(cols, buf, np.flatnonzero(bad), out, how, source)
    if how.gt is None:  # a survey: only checked and counted
        out.count += n
        return
    if how.ignore_boxes:
        has_box = np.zeros(n, bool)
    iidx, ifound, cidx, cfound, rel = how.gt.locate(cols["img"], cols["cat"])
    for tally, ids in zip(out.unknown, (cols["img"][~ifound], cols["cat"][~cfound])):
        tally[0] += len(ids)
        tally[1].update(ids.tolist())
    rel_idx = np.flatnonzero(rel)
    nrel = len(rel_idx)
    part = dict(
        img=np.where(ifound, iidx, -1).astype(np.int32),
        cat=np.where(cfound, cidx, -1).astype(np.int32),
        score=cols["score"],
        has_box=has_box,
        rel=rel,
        box=np.where(has_box[rel_idx, None], cols["box"][rel_idx], np.nan),
        mask_area=np.full(nrel, np.nan),
        no_seg=np.zeros(nrel, bool),
        iou_off=np.full(nrel, -1, np.int64),
        iou_val=np.zeros(0),
    )
    need = np.flatnonzero(np.ones(nrel, bool) if how.need_segs else ~has_box[rel_idx])
    if len(need):
        _masks(cols, buf, rel_idx, need, iidx, cidx, part, out, how, source)
    out.parts.append(part)
    out.count += n


def _masks(cols, buf, rel_idx, need, iidx, cidx, part, out, how, source):
    """The masks of the relevant detections ``need`` (positions among them): made under the
    rules (a missing one is its box as a polygon, as lvis-api's LVISResults makes it), then
    their areas, boxes (of those without one) and IoUs with the ground truth of their cell."""
    core = load_core()
    K = core.KINDS
    j = rel_idx[need]
    img = iidx[j]
    h, w = how.gt.img_h[img], how.gt.img_w[img]
    kind = cols["kind"][j].copy()
    seg = cols["seg"][j].copy()
    coords, poly_off = cols["coords"], cols["poly_off"]
    box_poly = (kind == K["NONE"]) & np.isfinite(part["box"][need]).all(1)
    kind[kind == K["NONE"]] = K["OTHER"]  # (without a box either: named below)
    none = np.flatnonzero(box_poly)
    if len(none):  # the box as a polygon, clipped to 1 pixel outside the image: the same mask
        part["no_seg"][need[none]] = True
        x1, y1, bw, bh = part["box"][need[none]].T
        x1, x2 = np.clip(x1, -1.0, w[none] + 1.0), np.clip(x1 + bw, -1.0, w[none] + 1.0)
        y1, y2 = np.clip(y1, -1.0, h[none] + 1.0), np.clip(y1 + bh, -1.0, h[none] + 1.0)
        rect = np.stack([x1, y1, x1, y2, x2, y2, x2, y1], 1)
        kind[none] = K["POLYGONS"]
        seg[none, 4] = len(poly_off) + np.arange(len(none))
        seg[none, 5] = 1
        poly_off = np.r_[poly_off, len(coords) + 8 * np.arange(len(none))]
        coords = np.r_[coords, rect.ravel()]
    escaped = ((cols["flags"][j] & core.FLAGS["ESCAPED"]) != 0).astype(np.uint8)
    counts, off, code, detail = core.masks(
        kind, np.ascontiguousarray(seg), escaped, buf, coords, np.r_[poly_off, len(coords)],
        cols["num"], np.ascontiguousarray(h), np.ascontiguousarray(w),
    )  # fmt: skip
    code[kind == K["OTHER"]] = -1
    if (code != 0).any():
        _segmentation_errors(cols, buf, j, code, detail, h, w, out, source)
    want = np.ones(len(need), bool) if how.areas == "all" else ~part["has_box"][j]
    want &= ~part["no_seg"][need]
    area, mbox = core.mask_stats(counts, off, h, w)
    part["mask_area"][need[want]] = area[want]
    boxless = ~part["has_box"][j]
    part["box"][need[boxless]] = mbox[boxless]
    if how.ious:
        _ious(counts, off, img, cidx[j], h, w, need, part, how)


def _segmentation_errors(cols, buf, j, code, detail, h, w, out, source):
    bad = []
    for k in np.flatnonzero(code != 0).tolist():
        a, b = cols["seg"][j[k], :2]
        segm, hh, ww = _loads(buf[a:b]) if a >= 0 else None, int(h[k]), int(w[k])
        if code[k] < 0:
            reason = segmentation_problem(segm, hh, ww)
        else:
            reason = mask_problem(segm, hh, ww, code[k], detail[k])
        a, b = cols["span"][j[k]]
        bad.append((out.count + int(j[k]), _loads(buf[a:b]), reason))
    shown = "; ".join(f"#{i} ({ident(d)}): {r}" for i, d, r in bad[:5])
    if len(bad) > 5:
        shown += f" ... ({len(bad)} in all)"
    raise LVISInputError(f"{detections_file(source)}: malformed segmentation of detection {shown}")


def _ious(counts, off, img, cat, h, w, need, part, how):
    """IoUs (segm) or min(mask IoU, boundary IoU) (boundary) of the masks with the ground truth
    of their cell, flattened: detection need[k]'s at iou_val[iou_off[need[k]]:][:G]."""
    core = load_core()
    gt = how.gt
    if len(gt.cell_keys) == 0:
        return
    key = img.astype(np.int64) * gt.num_cats + cat
    ci = np.minimum(np.searchsorted(gt.cell_keys, key), len(gt.cell_keys) - 1)
    inside = gt.cell_keys[ci] == key
    g_first = np.where(inside, gt.cell_start[ci], 0)
    g_num = np.where(inside, gt.cell_count[ci], 0)
    out_off = np.cumsum(g_num) - g_num
    vals = np.empty(int(g_num.sum()))
    gc, goff = gt.masks()
    core.ious(counts, off, gc, goff, g_first, g_num, out_off, vals)
    if how.iou_type == "boundary" and len(vals):
        # min() only where the mask IoU reaches the lowest threshold (below it, never matched)
        # and the ground truth is not crowd
        det = np.repeat(np.arange(len(g_num)), g_num)
        g = np.repeat(g_first - out_off, g_num) + np.arange(len(vals))
        pv = np.flatnonzero((vals >= _THR0) & ~gt.g_crowd[g])
        if len(pv):
            core.boundary_ious(
                counts, off, h, w, dilation(h, w), gc, goff, det[pv], g[pv], pv, vals
            )
    part["iou_off"][need] = np.where(g_num > 0, out_off, -1)
    part["iou_val"] = vals


def _merge(parts):
    """One dict of columns from consecutive parts."""
    if not parts:
        return dict(
            img=np.zeros(0, np.int32), cat=np.zeros(0, np.int32), score=np.zeros(0),
            has_box=np.zeros(0, bool), rel=np.zeros(0, bool), box=np.zeros((0, 4)),
            mask_area=np.zeros(0), no_seg=np.zeros(0, bool), iou_off=np.zeros(0, np.int64),
            iou_val=np.zeros(0),
        )  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    out = {name: np.concatenate([p[name] for p in parts]) for name in FIELDS[:-1]}
    shift = np.cumsum([0] + [len(p["iou_val"]) for p in parts])
    out["iou_off"] = np.concatenate(
        [np.where(p["iou_off"] >= 0, p["iou_off"] + s, -1) for p, s in zip(parts, shift)]
    )
    out["iou_val"] = np.concatenate([p["iou_val"] for p in parts])
    return out


def _read(text, how, workers):
    ranges = text.ranges(workers)
    jobs = [(text, a, b, how, k == 0) for k, (a, b) in enumerate(ranges)]
    try:
        outs = run_threads(_read_range, jobs)
    except LVISInputError:
        if len(jobs) == 1:
            raise
        outs = None  # a later range counts from its own start: name the detection in one range
    if outs is None or not all(o.proved for o in outs):
        outs = [_read_range(text, 0, text.size, how, True)]
    return outs


def read_detections(results, how, workers=1):
    """The detections of ``results`` (a file or a list) as one dict of columns (see FIELDS),
    read by up to ``workers`` threads; raises the rules' errors, naming the detection by its
    index in the results."""
    text = _Text(results, how.source)
    if how.gt is not None:
        how.gt.lookup_tables()  # before the readers start: they share them
        if how.ious:
            how.gt.masks()
    outs = _read(text, how, workers)
    problems = []
    where = f"the annotation file '{how.gt.source}'" if how.gt.source else "the annotations"
    for k, what in ((1, "category"), (0, "image")):
        count = sum(o.unknown[k][0] for o in outs)
        if count:
            ids = set().union(*[o.unknown[k][1] for o in outs])
            problems.append(
                f"{count} detections have {what} ids {format_examples(ids)} that are not in {where}"
            )
    if problems:
        raise LVISInputError(f"{detections_file(text.source)}: " + "; ".join(problems))
    return _merge([p for o in outs for p in o.parts])


def survey(results, source=None):
    """(number of results, any has a "bbox", any has a "segmentation") of a results file or
    list, every result checked (a result that is not an object, lacks a key, has a value of
    another kind: LVISInputError)."""
    text = _Text(results, source)
    out = _read_range(text, 0, text.size, Reading(None, "bbox", False, "boxless", source), True)
    return out.count, out.any_box, out.any_seg
