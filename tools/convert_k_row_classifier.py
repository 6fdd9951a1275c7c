#!/usr/bin/env python
"""Convert a checkpoint whose classifier has K rows (no background row: the layout of the
published BALMS detection code) to Detectron2's K+1 layout that every balms-det loss uses, once,
offline. A zero background row is appended to ``cls_score`` (the sigmoid family ignores that
row; a softmax-family loss learns it).

    python tools/convert_k_row_classifier.py balms_lvis_v05.pth balms_lvis_v05_k1.pth \
        --num-classes 1230
"""

import argparse

import torch

from balms_det.engine.merging import load_model_state
from balms_det.utils import atomic_torch_save

PREFIX = "roi_heads.box_predictor.cls_score."


def convert(state, num_classes, prefix=PREFIX):
    """Append a zero background row to the K-row classifier of ``state`` (in place); returns
    ``state``. A classifier that already has K+1 rows is left as is; any other size raises."""
    w = state.get(prefix + "weight")
    if w is None:
        raise KeyError(f"the checkpoint has no '{prefix}weight'")
    rows = w.shape[0]
    if rows == num_classes + 1:
        return state
    if rows != num_classes:
        raise ValueError(
            f"'{prefix}weight' has {rows} rows; expected {num_classes} (K) or {num_classes + 1} "
            "(K+1): --num-classes does not match the checkpoint"
        )
    state[prefix + "weight"] = torch.cat([w, w.new_zeros(1, *w.shape[1:])])
    b = state.get(prefix + "bias")
    if b is not None:
        state[prefix + "bias"] = torch.cat([b, b.new_zeros(1)])
    return state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", help="checkpoint (.pth of Detectron2's checkpointer, or .pkl)")
    p.add_argument("output", help="converted .pth, loadable by DetectionCheckpointer")
    p.add_argument("--num-classes", type=int, required=True, help="K, foreground classes")
    a = p.parse_args(argv)
    state = convert(load_model_state(a.input), a.num_classes)
    atomic_torch_save({"model": state}, a.output)
    print(f"Wrote {a.output}: {PREFIX}weight {tuple(state[PREFIX + 'weight'].shape)}")


if __name__ == "__main__":
    main()
