import math

import torch

from conftest import tiny_cfg


def test_two_iterations_then_evaluation(tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    cfg = tiny_cfg("MODEL.ROI_BOX_HEAD.BALMS.LOSS", "balanced_softmax", output_dir=tmp_path)
    trainer = BalmsTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    hist = trainer.storage.history("total_loss").values()
    assert len(hist) == 2 and all(math.isfinite(v) for v, _ in hist)
    res = results  # one test dataset: DefaultTrainer.test returns its results directly
    for task in ("bbox", "segm"):
        for k in ("AP", "APr", "APc", "APf", "hmean", "gmean", "min"):
            assert k in res[task]
            assert isinstance(res[task][k], float)
    assert (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "inference" / "synth_lt_tiny_val" / "lvis_instances_results.json").exists()
