"""What lvis-api's LVISEval holds after ``run()``: precision, recall and the summary metrics."""

from collections import OrderedDict

import numpy as np

from .params import AREA_RNG, AREA_RNG_LBL, GROUPS, IOU_THRS, REC_THRS

__all__ = ["LVISEvalResult", "category_ap"]


def category_ap(precision, cat_ids):
    """{category id: AP (IoU .50:.95, all areas) or NaN} of lvis-api's precision (T, R, K, A)."""
    out = {}
    for k, cid in enumerate(cat_ids):  # (np.mean: lvis-api's sums, bit for bit)
        p = precision[:, :, k, 0]
        out[cid] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    return out


class LVISEvalResult:
    """What lvis-api's LVISEval holds after run(): ``precision`` (T, R, K, A) and ``recall``
    (T, K, A), -1 where undefined, and the summary ``results`` (AP, AP50, ..., APr, APc, APf,
    AR@max_dets, ...). For AP-pool the K axis is the pools ("all", r, c, f) and AP, AP50,
    AP75, APs/m/l and AR are those of the pool "all", APr/APc/APf of the group pools.

    ``num_dets[k]``: detections of category k the protocol evaluated (kept, of area > 0, in an
    image where the category is positive or negative); a category with ground truth and 0
    here has AP 0 because nothing of it was evaluated. ``num_kept[k]``: those the protocol kept
    (the per-image cap or the per-category top-k), before the other filters; ``num_empty[k]``:
    those kept in an image where the category is positive or negative whose area is 0 (an empty
    mask or box: lvis-api does not evaluate them)."""

    def __init__(self, iou_type, protocol, gt, d, precision, recall, max_dets, k, timings=None):
        """Of the evaluated detections ``d`` (select.Detections) of ground truth ``gt``, and
        their ``precision`` and ``recall``; ``k``: the per-category budget of AP-fixed and
        AP-pool."""
        self.iou_type, self.protocol, self.timings = iou_type, protocol, timings or {}
        self.max_dets = max_dets if protocol == "standard" else -1
        self.dets_per_category = k if protocol != "standard" else None
        self.cat_ids, self.img_ids = [int(c) for c in gt.cat_ids], gt.img_ids
        self.iou_thrs, self.rec_thrs = IOU_THRS, REC_THRS
        self.area_rng, self.area_rng_lbl = AREA_RNG, AREA_RNG_LBL
        self.precision, self.recall, self.freq_groups = precision, recall, gt.freq_groups
        self.num_dets = np.bincount(d.cat, minlength=gt.num_cats)
        self.num_kept, self.num_empty = d.num_kept, d.num_empty
        self.results = self._summarize_all()

    def _summarize(self, summary_type, iou_thr=None, area_rng="all", group=None):
        """lvis-api's LVISEval._summarize: the mean of the defined entries, -1 without one."""
        aidx = [i for i, lbl in enumerate(self.area_rng_lbl) if lbl == area_rng]
        s = self.precision if summary_type == "ap" else self.recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == self.iou_thrs)[0]]
        s = s[..., slice(None) if group is None else group, :][..., aidx]
        return np.mean(s[s > -1]) if (s > -1).any() else -1

    def _summarize_all(self):
        pooled = self.protocol == "pool"
        every = [0] if pooled else None  # AP-pool: the pool "all"
        groups = [[g + 1] for g in range(len(GROUPS))] if pooled else self.freq_groups
        r = OrderedDict(AP=self._summarize("ap", group=every))
        r["AP50"] = self._summarize("ap", iou_thr=0.50, group=every)
        r["AP75"] = self._summarize("ap", iou_thr=0.75, group=every)
        for area in ("small", "medium", "large"):
            r["AP" + area[0]] = self._summarize("ap", area_rng=area, group=every)
        for g, members in zip(GROUPS, groups):
            r["AP" + g] = self._summarize("ap", group=members)
        r[f"AR@{self.max_dets}"] = self._summarize("ar", group=every)
        for area in ("small", "medium", "large"):
            r[f"AR{area[0]}@{self.max_dets}"] = self._summarize("ar", area_rng=area, group=every)
        return r

    def get_results(self):
        return self.results

    def per_category_ap(self):
        """{category id: AP (IoU .50:.95, all areas) or nan}, as lvis-api would for one category."""
        if self.protocol == "pool":
            raise ValueError("AP-pool has no per-category AP (precision is pooled)")
        return category_ap(self.precision, self.cat_ids)

    def summary_str(self):
        """lvis-api's printed summary (LVISEval.print_results)."""
        lines = []
        for key, value in self.results.items():
            title = "Average Precision  (AP)" if "AP" in key else "Average Recall     (AR)"
            iou = f"{self.iou_thrs[0]:0.2f}:{self.iou_thrs[-1]:0.2f}"
            if len(key) > 2 and key[2].isdigit():
                iou = f"{float(key[2:]) / 100:0.2f}"
            group = key[2] if len(key) > 2 and key[2] in GROUPS else "all"
            area = key[2] if len(key) > 2 and key[2] in "sml" else "all"
            lines.append(
                f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={self.max_dets:>3d} "
                f"catIds={group:>3s}] = {value:0.3f}"
            )
        return "\n".join(lines)
