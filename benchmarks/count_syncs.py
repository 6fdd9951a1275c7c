#!/usr/bin/env python
"""Host-device syncs that balms-det's code asks for in a training step of the tiny model, per
LOSS, and in the Meta Reweigher's step: the table of docs/RESULTS.md ("Host-device syncs").

Counted on the CPU by ``balms_det.sync_counter.SyncCounter`` (the calls that would make a GPU
wait: ``item``, ``bool(t)``, ``tolist``, ``.cpu()``, boolean-mask indexing, ``nonzero``, ...,
attributed to balms_det's frames; Detectron2's own are not counted). Columns: the first step
(the counts are resolved then, once), a later step, a step with class weights set, a
diagnostics iteration (DIAGNOSTICS_PERIOD 4), and three meta steps. On a code base without
``set_class_weights`` the weights are written into the buffer with ``copy_``.

    python benchmarks/count_syncs.py [-v]       (-v: the counted call sites)
"""

import os
import sys
import types

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from balms_det.engine.meta_reweigher import MetaReweigher
from balms_det.engine.trainer import setup_cfg
from balms_det.modeling.roi_heads import LOSS_FAMILIES, BalmsFastRCNNOutputLayers
from balms_det.sync_counter import SyncCounter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "synthetic", "tiny.yaml")
FAST = ["MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]
FAST += ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "40", "MODEL.ROI_BOX_HEAD.FC_DIM", "32"]
FAST += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "SEED", "0"]
FAST += ["MODEL.ROI_BOX_HEAD.BALMS.DIAGNOSTICS_PERIOD", "4", "DATASETS.TEST", "()"]


def main(verbose):
    torch.set_num_threads(1)
    cfg = setup_cfg(TINY, FAST)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:2]]

    def step(it):
        with EventStorage(it), SyncCounter() as sc:
            sum(model(batch).values()).backward()
        if verbose:
            print(f"iteration {it}:\n{sc.report()}")
        return sc.count

    print("| LOSS | first step | later step | with class weights | diagnostics step |")
    print("|---|---|---|---|---|")
    for loss in LOSS_FAMILIES:
        c = setup_cfg(TINY, FAST + ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", loss])
        heads = model.roi_heads
        heads.box_predictor = pred = BalmsFastRCNNOutputLayers(c, heads.box_head.output_shape)
        first, later = step(1), step(1)
        w = torch.linspace(0.5, 2.0, pred.num_classes)
        if hasattr(pred, "set_class_weights"):
            pred.set_class_weights(w)
        else:
            with torch.no_grad():
                pred.class_weights.copy_(w)
        print(f"| {loss} | {first} | {later} | {step(2)} | {step(4)} |", flush=True)

    meta = ["BALMS.META.ENABLED", "True", "MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax"]
    mc = setup_cfg(TINY, FAST + meta)
    torch.manual_seed(0)
    mm = build_model(mc)
    opt = torch.optim.SGD(mm.parameters(), lr=0.01, momentum=0.9)
    hook = MetaReweigher(mc, mm, opt)
    hook.trainer = types.SimpleNamespace(iter=0, max_iter=100, optimizer=opt)
    hook.before_train()
    counts = []
    for it in range(3):
        hook.trainer.iter = it
        with EventStorage(it):
            sum(mm(batch).values()).backward()
            opt.step()
            opt.zero_grad()
            with SyncCounter() as sc:
                hook.after_step()
        counts.append(sc.count)
        if verbose:
            print(f"meta step {it}:\n{sc.report()}")
    print(f"\nMeta Reweigher after_step, iterations 0-2 (BALMS.META defaults): {counts}")


if __name__ == "__main__":
    main("-v" in sys.argv[1:])
