#!/usr/bin/env python
"""Logits Magnitude and Regularized Standard Deviation per class (docs/METHODS.md, "Classifier
diagnostics") of a trained model, on the ground-truth boxes of a test dataset.

    python tools/logit_diagnostics.py --config-file output/main/config.yaml \
        --output output/main/diagnostics MODEL.WEIGHTS output/main/model_final.pth

Writes ``<output>/logit_diagnostics.json`` (per-class rows and group means) and
``<output>/logit_diagnostics.png`` (both diagnostics against training image count), and prints
the group means. ``--dataset`` defaults to the first of DATASETS.TEST.
"""

import argparse
import os

from balms_det.engine.trainer import setup_cfg
from balms_det.engine.logit_diagnostics import KEYS, diagnose_model
from balms_det.utils import markdown_table


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="folder for the JSON and the plot")
    p.add_argument("--dataset", default="", help="test dataset (default: DATASETS.TEST[0])")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    a = p.parse_args()
    cfg = setup_cfg(a.config_file, a.opts)
    dataset = a.dataset or cfg.DATASETS.TEST[0]
    _, means = diagnose_model(cfg, dataset, a.output)
    groups = list(means[KEYS[0]])
    print(markdown_table([[k, *means[k].values()] for k in KEYS], ["diagnostic", *groups], ".4f"))
    print(f"Wrote {os.path.join(a.output, 'logit_diagnostics.json')} and the plot")


if __name__ == "__main__":
    main()
