"""The evaluator's truth, frozen before its engine was rewritten (tests/golden_eval.py): the
golden numbers of seeded sets (every iou type x protocol, bit for bit) and the outcome of every
hostile input (named cases and 600 fuzzed results files: the metrics, or the error's text) are
what the engine gives. An outcome the rewrite changed on purpose is saved with its new value and
why; every such change refuses an input (an error where there was one, or where the input was
accepted, crashed or hung), none changes a number. The 5,000-image set:
``BALMS_GOLDEN_LARGE=1`` (``make golden``)."""

import json
import os

import golden_eval
import pytest

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
    crash of the process an outcome too, and both differ from the saved ones."""
    saved = golden_eval.load()["hostile"]
    times = {}
    got = golden_eval.hostile(times=times)
    assert set(got) == set(saved)
    diffs = golden_eval.differences(saved, got)
    assert not diffs, "\n".join(f"{k}:\n want {w}\n got  {g}" for k, w, g in diffs[:5])
    slow = {k: t for k, t in times.items() if t > 3 and not k.startswith("bad_byte")}
    assert not slow, slow  # tiny inputs: milliseconds each (a missed check shows as seconds)
    kinds = {}
    for k, outcome in got.items():
        kinds.setdefault(outcome[0], set()).add(k.split(":")[-1].split("+")[0])
    assert set(kinds) == {"ok", "error"}, kinds  # no crash, no hang, no other exception
    assert {"rle-insert", "rle-cut", "polygon", "utf8", "nest", "number"} <= kinds["error"]


def test_changes_to_the_truth_only_refuse_inputs():
    """The outcomes the rewrite changed: each says why, and turns into an error what was an
    error, accepted input, a crash or a hang, never into other numbers (but for a task no
    longer skipped, the others' as they were)."""
    saved = golden_eval.load()
    for part in ("numbers", "hostile"):
        for key, entry in saved[part].items():
            if "after" not in entry:
                continue
            assert part == "hostile", key  # no golden number changed
            assert entry.get("why") in golden_eval.REASONS, key
            assert _text(entry["after"]) != _text(entry["before"]), key
            if entry["after"][0] == "ok":  # a task no longer skipped: the others' AP as before
                assert entry["before"][0] == "ok", key
                assert set(entry["before"][2].split()) < set(entry["after"][2].split()), key
            else:
                assert entry["after"][0] == "error", key


@pytest.mark.skipif(not os.environ.get("BALMS_GOLDEN_LARGE"), reason="BALMS_GOLDEN_LARGE=1")
def test_golden_numbers_of_the_large_set():
    saved = golden_eval.load(large=True)["numbers"]
    got = golden_eval.numbers(large=True)
    assert not golden_eval.differences(saved, got)
