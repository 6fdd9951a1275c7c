"""Fail at import, with one clear sentence, when Detectron2 is missing."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_import.py in a subprocess
    raise ImportError(
        "balms_det needs Detectron2, which is not installed: install the tested stack with "
        "`pip install -r requirements.txt` (torch 2.3.1, torchvision 0.18.1, "
        "sal-detectron2 0.7.2, Python 3.10) or build Detectron2 from source "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html)."
    ) from e
