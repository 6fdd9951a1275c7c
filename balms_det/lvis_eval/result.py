"""What lvis-api's LVISEval holds after ``run()``: precision, recall and the summary metrics."""

from collections import OrderedDict

import numpy as np

from .params import AREA_RNG, AREA_RNG_LBL, GROUPS, IOU_THRS, REC_THRS

__all__ = ["LVISEvalResult"]


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

    def __init__(
        self,
        iou_type,
        protocol,
        max_dets,
        cat_ids,
        img_ids,
        precision,
        recall,
        freq_groups,
        num_dets,
        num_kept=None,
        dets_per_category=None,
        timings=None,
        num_empty=None,
    ):
        self.iou_type = iou_type
        self.protocol = protocol
        self.max_dets = max_dets
        self.dets_per_category = dets_per_category
        self.cat_ids = [int(c) for c in cat_ids]
        self.img_ids = img_ids
        self.iou_thrs = IOU_THRS
        self.rec_thrs = REC_THRS
        self.area_rng = AREA_RNG
        self.area_rng_lbl = AREA_RNG_LBL
        self.precision = precision
        self.recall = recall
        self.freq_groups = freq_groups
        self.num_dets = num_dets
        self.num_kept = num_kept
        self.num_empty = num_empty
        self.timings = timings or {}
        self.results = self._summarize_all()

    def _summarize(self, summary_type, iou_thr=None, area_rng="all", group=None):
        aidx = [i for i, lbl in enumerate(self.area_rng_lbl) if lbl == area_rng]
        if summary_type == "ap":
            s = self.precision
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, :, group, aidx] if group is not None else s[:, :, :, aidx]
        else:
            s = self.recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, group, aidx] if group is not None else s[:, :, aidx]
        if len(s[s > -1]) == 0:
            return -1
        return np.mean(s[s > -1])

    def _summarize_all(self):
        pooled = self.protocol == "pool"
        every = [0] if pooled else None  # AP-pool: the pool "all"
        groups = [[g + 1] for g in range(len(GROUPS))] if pooled else self.freq_groups
        r = OrderedDict()
        r["AP"] = self._summarize("ap", group=every)
        r["AP50"] = self._summarize("ap", iou_thr=0.50, group=every)
        r["AP75"] = self._summarize("ap", iou_thr=0.75, group=every)
        r["APs"] = self._summarize("ap", area_rng="small", group=every)
        r["APm"] = self._summarize("ap", area_rng="medium", group=every)
        r["APl"] = self._summarize("ap", area_rng="large", group=every)
        for g, members in zip(GROUPS, groups):
            r["AP" + g] = self._summarize("ap", group=members)
        r[f"AR@{self.max_dets}"] = self._summarize("ar", group=every)
        for area_rng in ["small", "medium", "large"]:
            r[f"AR{area_rng[0]}@{self.max_dets}"] = self._summarize(
                "ar", area_rng=area_rng, group=every
            )
        return r

    def get_results(self):
        return self.results

    def per_category_ap(self):
        """{category id: AP (IoU .50:.95, all areas) or nan}, as lvis-api would for one category."""
        if self.protocol == "pool":
            raise ValueError("AP-pool has no per-category AP (precision is pooled)")
        out = {}
        for k, cid in enumerate(self.cat_ids):
            p = self.precision[:, :, k, 0]
            p = p[p > -1]
            out[cid] = float(np.mean(p)) if p.size else float("nan")
        return out

    def summary_str(self):
        template = (
            " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} catIds={:>3s}]" " = {:0.3f}"
        )
        lines = []
        for key, value in self.results.items():
            if "AP" in key:
                title, _type = "Average Precision", "(AP)"
            else:
                title, _type = "Average Recall", "(AR)"
            if len(key) > 2 and key[2].isdigit():
                iou = f"{float(key[2:]) / 100:0.2f}"
            else:
                iou = f"{self.iou_thrs[0]:0.2f}:{self.iou_thrs[-1]:0.2f}"
            cat_group = key[2] if len(key) > 2 and key[2] in GROUPS else "all"
            area = key[2] if len(key) > 2 and key[2] in ["s", "m", "l"] else "all"
            lines.append(template.format(title, _type, iou, area, self.max_dets, cat_group, value))
        return "\n".join(lines)
