"""balms-det's LVIS evaluation engine: lvis-api 0.5.3's numbers, its challenge protocols
(AP-fixed, AP-pool) and boundary AP, fast, from a compiled core (``csrc/``, bound by ``_core``).

It imports neither torch nor Detectron2 nor the rest of balms_det. Its modules import one way
(checked by tests/test_import_contract.py):

* ``params``: the LVIS protocol's constants; ``jsonio``: reading JSON, ``LVISInputError``;
* ``rules``: every input rule, ``check_ground_truth``;
* ``ground_truth``: ``LVISGroundTruth``; ``reader``: detections into columns, masks, IoUs;
* ``select``: what each protocol evaluates; ``score``: matching and accumulation;
* ``result``: ``LVISEvalResult``; ``evaluate``: ``evaluate_lvis``, the protocol driver.
"""

from .evaluate import check_detections, evaluate_lvis, evaluate_protocols
from .ground_truth import LVISGroundTruth
from .jsonio import LVISInputError, read_json
from .params import DETS_PER_CATEGORY, GROUPS, IOU_TYPES, MAX_DETS, PROTOCOLS
from .reader import survey
from .result import LVISEvalResult, category_ap
from .rules import check_ground_truth

__all__ = [
    "evaluate_lvis", "evaluate_protocols", "check_detections", "check_ground_truth", "survey",
    "LVISGroundTruth", "LVISEvalResult", "category_ap", "LVISInputError", "read_json", "DETS_PER_CATEGORY",
    "GROUPS", "IOU_TYPES", "MAX_DETS", "PROTOCOLS",
]  # fmt: skip
