"""LVIS-protocol evaluation (Gupta et al. 2019) with the challenge protocols of large-vocabulary
detection: AP-fixed and AP-pool (Dave et al. 2021) and boundary AP (Cheng et al. 2021).

Modules (none imports torch or Detectron2 except ``lvis_evaluator``; importing this package
imports nothing):

* ``fast_lvis``: the engine, lvis-api 0.5.3's numbers fast (:func:`~.fast_lvis.evaluate_lvis`);
* ``protocols``: the tasks of each protocol and their reported metrics;
* ``detections_io``: reading and checking detection files, ``evaluate_detections_file``;
* ``matching``: lvis-api's greedy matching and accumulation, vectorised;
* ``boundary``: boundary IoU;
* ``lvis_evaluator``: ``BalmsLVISEvaluator``, the Detectron2 evaluator;
* ``report``: per-class tables and plots (LVIS groups and worst-class metrics: ``balms_det.longtail``);
* ``lvis_compat``: lvis-api itself on a current numpy (the reference).
"""
