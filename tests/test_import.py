import subprocess
import sys


def test_import_without_detectron2_names_the_fix():
    code = (
        "import sys; sys.modules['detectron2'] = None; import balms_det; "
        "from balms_det import add_balms_config"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert "balms_det needs Detectron2" in last
    assert "requirements.txt" in last and "sal-detectron2" in last


def test_public_api_and_registration():
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import ROI_HEADS_REGISTRY

    import balms_det
    from balms_det import add_balms_config

    add_balms_config(get_cfg())  # registers the head and the built-in synthetic datasets
    assert ROI_HEADS_REGISTRY.get("BalmsROIHeads") is balms_det.BalmsROIHeads
    for name in ("synth_lt_train", "synth_lt_val", "synth_lt_tiny_train", "synth_lt_tiny_val"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "lvis"


def test_import_is_light_and_every_public_name_resolves():
    """``import balms_det`` loads neither torch nor Detectron2 (the evaluation engine and the
    offline tools need neither); every name of ``__all__`` resolves on first use."""
    code = (
        "import sys, balms_det; "
        "print(sorted(m for m in ('torch', 'detectron2') if m in sys.modules)); "
        "[getattr(balms_det, n) for n in balms_det.__all__]; "
        "print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]", "True"]
