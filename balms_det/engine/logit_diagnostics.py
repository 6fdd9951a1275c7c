"""Per-class classifier diagnostics of the Label Over-Smoothing paper (Sun, Lu, Li et al.):
Logits Magnitude and Regularized Standard Deviation, computed on ground-truth ROIs.

Definitions (docs/METHODS.md, "Classifier diagnostics"). For N validation ROIs with foreground
logits ``z`` (N, K) and true classes ``y`` (N,), and a class j with n_j >= 1 samples:

* ``m_j = mean_{i: y_i = j} z_ij - mean_{i: y_i != j} z_ij``: the raw magnitude, how much higher
  the classifier scores class j on its own samples than on the others';
* **Logits Magnitude** ``LM_j = m_j / sum_k |m_k|`` (the sum over the classes with samples): the
  magnitudes normalised by their 1-norm, so that models and losses of different logit scale
  compare; a balanced classifier has a flat LM over classes, a long-tail-biased one a rising LM;
* **Regularized Standard Deviation** ``RSD_j = std_{i: y_i = j}(z_ij) / m_j`` (population std,
  n_j >= 2, m_j > 0): how spread the class's own logits are relative to its margin; smaller is
  a more confident, better separated class. A class with ``m_j <= 0`` (its own samples score it
  no higher than the others do: not separated at all) has no RSD; :func:`diagnostics_group_means`
  counts such classes.

Classes without validation samples (or with one, for RSD) get NaN. Group summaries are means for
LM (linear in the logits) and medians for RSD (a ratio that explodes as ``m_j`` nears 0). The ROIs are the validation
set's non-crowd ground-truth boxes themselves (ROIs matched to ground truth by construction), run
through the trained model's backbone, box pooler, box head and classifier: the logits the
detector would give a perfectly localised proposal. Softmax-family models are read on their K
foreground columns (the background column is left out), sigmoid-family models likewise.
"""

import os

import numpy as np

from ..longtail import GROUPS, frequency_group

__all__ = [
    "logit_diagnostics",
    "diagnostics_rows",
    "diagnostics_group_means",
    "gt_roi_logits",
    "plot_diagnostics",
    "diagnose_model",
    "num_unseparated",
    "KEYS",
]

KEYS = ("logits_magnitude", "regularized_std")


def logit_diagnostics(logits, labels, num_classes=None):
    """Logits Magnitude and Regularized Standard Deviation per class.

    Args:
        logits: (N, K) array-like of foreground logits of N ROIs.
        labels: (N,) integer array-like of true classes in [0, K).
        num_classes: K (default: ``logits.shape[1]``).

    Returns:
        dict of (K,) float64 arrays: ``num_samples``, ``magnitude_raw`` (m_j),
        ``logits_magnitude`` (LM_j) and ``regularized_std`` (RSD_j); NaN where undefined.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    K = z.shape[1] if num_classes is None else int(num_classes)
    if z.shape[1] != K or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match K = {K}")
    if y.size and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}); got {y.min()}..{y.max()}")
    n = np.bincount(y, minlength=K).astype(np.float64)
    N = float(y.size)
    col_sum = z.sum(axis=0)
    own_sum = np.zeros(K)
    np.add.at(own_sum, y, z[np.arange(y.size), y])
    own_sq = np.zeros(K)
    np.add.at(own_sq, y, z[np.arange(y.size), y] ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = own_sum / n
        neg = (col_sum - own_sum) / (N - n)
        m = np.where(n > 0, pos - neg, np.nan)
        var = np.maximum(own_sq / n - pos**2, 0.0)
        rsd = np.where((n >= 2) & (m > 0), np.sqrt(var) / m, np.nan)
    norm = np.nansum(np.abs(m))
    lm = m / norm if norm > 0 else np.full(K, np.nan)
    return dict(num_samples=n, magnitude_raw=m, logits_magnitude=lm, regularized_std=rsd)


def diagnostics_rows(diag, train_image_counts, names=None):
    """One dict per class (contiguous id, name, training image count, LVIS group, the three
    diagnostics; NaN as None) for a JSON table."""
    rows = []
    for j, c in enumerate(train_image_counts):
        c = int(c)
        row = dict(
            class_id=j,
            name=names[j] if names else str(j),
            train_image_count=c,
            group=frequency_group(c),
            num_samples=int(diag["num_samples"][j]),
        )
        for k in ("magnitude_raw", "logits_magnitude", "regularized_std"):
            v = float(diag[k][j])
            row[k] = v if np.isfinite(v) else None
        rows.append(row)
    return rows


def diagnostics_group_means(rows, key, stat=None):
    """``stat`` (default: mean for LM, median for RSD) of ``key`` over the classes of each LVIS
    group and over all (NaN when none)."""
    stat = stat or (np.median if key == "regularized_std" else np.mean)
    out = {}
    for g in (*GROUPS, "all"):
        v = [r[key] for r in rows if r[key] is not None and (g == "all" or r["group"] == g)]
        out[g] = float(stat(v)) if v else float("nan")
    return out


def num_unseparated(rows):
    """Classes with validation samples whose raw magnitude is <= 0, per group and in all."""
    out = {}
    for g in (*GROUPS, "all"):
        out[g] = sum(
            1
            for r in rows
            if r["magnitude_raw"] is not None
            and r["magnitude_raw"] <= 0
            and (g == "all" or r["group"] == g)
        )
    return out


def gt_roi_logits(model, dataset_dicts, min_size_test, max_size_test, batch_size=8):
    """Foreground logits of every non-crowd ground-truth box of ``dataset_dicts``.

    ``model`` is a Detectron2 ``GeneralizedRCNN`` with ``StandardROIHeads`` (or a subclass). Each
    image is read and resized as Detectron2's test loader does (``ResizeShortestEdge``), its boxes
    are transformed alike and pooled as ROIs. Returns ``(logits (N, K) float32, labels (N,))``
    numpy arrays, in dataset order.
    """
    import torch
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T
    from detectron2.structures import Boxes, BoxMode

    heads = model.roi_heads
    K = heads.num_classes
    aug = T.ResizeShortestEdge(min_size_test, max_size_test)
    was_training = model.training
    model.eval()
    out_z, out_y = [], []
    try:
        with torch.no_grad():
            for s in range(0, len(dataset_dicts), batch_size):
                inputs, boxes, labels = [], [], []
                for d in dataset_dicts[s : s + batch_size]:
                    anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
                    if not anns:
                        continue
                    img = utils.read_image(d["file_name"], format=model.input_format)
                    tf = aug.get_transform(img)
                    img = tf.apply_image(img)
                    b = np.array(
                        [
                            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                            for a in anns
                        ],
                        dtype=np.float32,
                    )
                    img_t = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
                    inputs.append({"image": img_t})
                    boxes.append(Boxes(torch.as_tensor(tf.apply_box(b)).to(model.device)))
                    labels.extend(int(a["category_id"]) for a in anns)
                if not inputs:
                    continue
                images = model.preprocess_image(inputs)
                feats = model.backbone(images.tensor)
                x = heads.box_pooler([feats[f] for f in heads.box_in_features], boxes)
                scores, _ = heads.box_predictor(heads.box_head(x))
                out_z.append(scores[:, :K].float().cpu().numpy())
                out_y.extend(labels)
    finally:
        model.train(was_training)
    if not out_z:
        return np.zeros((0, K), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(out_z), np.asarray(out_y, np.int64)


_TITLES = {"logits_magnitude": "Logits Magnitude", "regularized_std": "Regularized std"}


def plot_diagnostics(rows_by_label, path):
    """PNG with Logits Magnitude and Regularized Standard Deviation against training image count
    (log scale), one series per label (``{label: rows}`` of :func:`diagnostics_rows`)."""
    from ..evaluation.report import _new_figure, _save

    fig = _new_figure(11.0, 4.2)
    for k, key in enumerate(KEYS):
        title = _TITLES[key]
        ax = fig.add_subplot(1, 2, k + 1)
        for label, rows in rows_by_label.items():
            pts = sorted((r["train_image_count"], r[key]) for r in rows if r[key] is not None)
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o", markersize=3, linewidth=1.0, alpha=0.8, label=label)
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        ax.set_xlabel("training images of the class")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if key == "regularized_std":
            ax.set_ylim(0, 1.5)
        ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return path


def diagnose_model(cfg, dataset, output_dir, label="model"):
    """Diagnostics of ``cfg``'s MODEL.WEIGHTS on the registered ``dataset``: writes
    ``logit_diagnostics.json`` (per-class rows, group means) and ``logit_diagnostics.png`` into
    ``output_dir`` and returns ``(rows, {diagnostic: group means})``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..class_counts import class_counts_from_cfg
    from .trainer import BalmsTrainer
    from ..utils import atomic_write_json

    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained model to diagnose")
    model = BalmsTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    z, y = gt_roi_logits(
        model, DatasetCatalog.get(dataset), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )
    counts, _ = class_counts_from_cfg(cfg)
    names = MetadataCatalog.get(dataset).get("thing_classes")
    diag = logit_diagnostics(z, y, model.roi_heads.num_classes)
    rows = diagnostics_rows(diag, counts.image_count, names)
    means = {k: diagnostics_group_means(rows, k) for k in KEYS}
    os.makedirs(output_dir, exist_ok=True)
    payload = dict(weights=cfg.MODEL.WEIGHTS, dataset=dataset, num_rois=int(len(y)))
    payload.update(group_means=means, unseparated=num_unseparated(rows), per_class=rows)
    atomic_write_json(payload, os.path.join(output_dir, "logit_diagnostics.json"))
    plot_diagnostics({label: rows}, os.path.join(output_dir, "logit_diagnostics.png"))
    return rows, means
