import pytest
import torch
from conftest import tiny_cfg

from balms_det.engine.decoupled import FrozenNormHook, freeze_except


def test_stage2_trains_exactly_the_classifier(tmp_path):
    from balms_det.engine.trainer import BalmsTrainer

    cfg = tiny_cfg(
        "BALMS.TRAINABLE_PARAMS",
        "['cls_score']",
        "SOLVER.MAX_ITER",
        "3",
        "MODEL.ROI_BOX_HEAD.BALMS.LOSS",
        "balanced_softmax",
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
        # a random frozen network: what is checked here is which parameters move
        "BALMS.ALLOW_FROZEN_RANDOM_INIT",
        "True",
        output_dir=tmp_path,
    )
    trainer = BalmsTrainer(cfg)
    model = trainer.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    }
    # frozen BatchNorm layers stayed in eval mode: running stats did not move (checked above)
    # and the hook reports them
    assert any(isinstance(h, FrozenNormHook) for h in trainer._hooks)


def test_pattern_matching_nothing_is_an_error():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cls_scor3"):
        freeze_except(m, ["cls_scor3"])
    assert freeze_except(m, ["0.bias"]) == ["0.bias"]
    assert not m[0].weight.requires_grad and m[0].bias.requires_grad
