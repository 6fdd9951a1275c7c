"""The Detectron2 side of LVIS-protocol evaluation over the torch-free engine
(:mod:`balms_det.lvis_eval`): ``lvis_evaluator`` (``BalmsLVISEvaluator``, the only module that
imports Detectron2), ``tasks`` (each protocol's tasks and metrics, the engines), ``offline``
(``evaluate_detections_file``), ``report`` (tables, plots), ``lvis_compat`` (the reference
engine, lvis-api). Importing this package imports nothing.
"""
