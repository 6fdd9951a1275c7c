"""The evaluator's truth, frozen before its engine was rewritten (tests/golden_eval.py): the
golden numbers of seeded sets (every iou type x protocol, bit for bit) and the outcome of every
hostile input (named cases and 600 fuzzed results files: the metrics, or the error's text) are
what the engine gives. An outcome the rewrite changed on purpose is saved with its new value and
why; every such change refuses an input (an error where there was one, or where the input was
accepted, crashed or hung), none changes a number. The 5,000-image set:
``BALMS_GOLDEN_LARGE=1`` (``make golden``)."""

import json
import os

import pytest

import golden_eval

pytestmark = pytest.mark.torch_free


def _text(outcome):
    return json.dumps(outcome, sort_keys=True)


def test_golden_numbers():
    saved = golden_eval.load()["numbers"]
    got = golden_eval.numbers()
    assert set(got) == set(saved)
    diffs = golden_eval.differences(saved, got)
    assert not diffs, "\n".join(f"{k}:\n want {w}\n got  {g}" for k, w, g in diffs[:5])


def test_hostile_outcomes_and_fuzz():
    """Every case in a child process with a time and memory limit: a hang is a timeout, a
    crash of the process an outcome too."""
    saved = golden_eval.load()["hostile"]
    times = {}
    got = golden_eval.hostile(times=times)
    assert set(got) == set(saved)
    diffs = golden_eval.differences(saved, got)
    assert not diffs, "\n".join(f"{k}:\n want {w}\n got  {g}" for k, w, g in diffs[:5])


def test_changes_to_the_truth_only_refuse_inputs():
    """The outcomes the rewrite changed: each says why, and turns into an error what was an
    error, accepted input, a crash or a hang, never into other numbers."""
    saved = golden_eval.load()
    for part in ("numbers", "hostile"):
        for key, entry in saved[part].items():
            if "after" not in entry:
                continue
            assert part == "hostile", key  # no golden number changed
            assert entry.get("why"), key
            assert entry["after"][0] == "error", key
            assert _text(entry["after"]) != _text(entry["before"]), key


@pytest.mark.skipif(not os.environ.get("BALMS_GOLDEN_LARGE"), reason="BALMS_GOLDEN_LARGE=1")
def test_golden_numbers_of_the_large_set():
    saved = golden_eval.load(large=True)["numbers"]
    got = golden_eval.numbers(large=True)
    assert not golden_eval.differences(saved, got)
