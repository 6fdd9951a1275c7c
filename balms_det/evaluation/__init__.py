"""The Detectron2 side of LVIS-protocol evaluation (the engine itself, torch-free, is
:mod:`balms_det.lvis_eval`):

* ``lvis_evaluator``: ``BalmsLVISEvaluator``, Detectron2's LVISEvaluator on the engine, with the
  challenge protocols' streaming per-category top-k;
* ``tasks``: the tasks of each protocol, their metrics, the engines ("fast", "lvis-api");
* ``offline``: ``evaluate_detections_file``, a saved detections file without the model;
* ``report``: per-class tables and plots;
* ``lvis_compat``: lvis-api itself on a current numpy (the reference engine).

Only ``lvis_evaluator`` imports Detectron2; importing this package imports nothing.
"""
