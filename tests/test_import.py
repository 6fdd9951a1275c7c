import subprocess
import sys


def test_import_without_detectron2_names_the_fix():
    code = "import sys; sys.modules['detectron2'] = None; import balms_det"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "balms_det needs Detectron2" in last
    assert "requirements.txt" in last and "sal-detectron2" in last


def test_public_api_and_registration():
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import ROI_HEADS_REGISTRY

    import balms_det
    from balms_det import add_balms_config  # noqa: F401

    assert ROI_HEADS_REGISTRY.get("BalmsROIHeads") is balms_det.BalmsROIHeads
    for name in ("synth_lt_train", "synth_lt_val", "synth_lt_tiny_train", "synth_lt_tiny_val"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "lvis"
