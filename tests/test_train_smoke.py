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


def test_summary_table_for_one_or_several_datasets():
    from balms_det.engine.trainer import format_results

    def rows(table):  # the cells of a Markdown table, header and rule dropped
        lines = table.splitlines()[2:]
        return [[c.strip() for c in line.strip("|").split("|")] for line in lines]

    one = format_results({"bbox": {"AP": 1.0, "APr": 2.0}, "segm": {"AP": 3.0}}, "val")
    assert one.splitlines()[0].replace(" ", "") == "|dataset|task|AP|APr|"
    assert rows(one) == [["val", "bbox", "1.00", "2.00"], ["val", "segm", "3.00", ""]]
    several = format_results({"a": {"bbox": {"AP": 1.0}}, "b": {"bbox": {"AP": 4.0}}})
    assert rows(several) == [["a", "bbox", "1.00"], ["b", "bbox", "4.00"]]
    assert format_results({}) == "(no results)"
