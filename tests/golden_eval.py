"""The evaluator's truth, frozen: golden outputs of seeded sets and the outcome of every hostile
input, computed by whatever engine is installed and compared with the saved ones.

    python tests/golden_eval.py --write            # (re)write tests/golden/eval_golden.json
    python tests/golden_eval.py --large --write    # the 5,000-image set: eval_golden_large.json
    python tests/golden_eval.py [--large]          # compare, print the differences

Numbers: for every iou type x protocol (x boxes ignored or not, for masks) of each set, AP and
SHA-256 digests of the summary metrics, precision, recall, per-category AP, ``num_dets`` and
``num_kept`` (bit for bit). Hostile inputs (``tests/eval_cases.py``: named cases and 600 fuzzed
results files): the metrics of an evaluation or the text of its error (file names replaced by
``<dir>``; a long one cut, with its digest), each run in a child process with a time and memory limit, so that a hang or a
crash is an outcome too. A saved entry holds the outcome before the engine was rewritten
(``before``) and, where the rewrite changed it on purpose, the outcome after it (``after``) and
why (``why``); the test (tests/test_eval_golden.py) wants the latest of the two.
"""

import argparse
import hashlib
import json
import math
import os
import pickle
import re
import resource
import signal
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import eval_cases  # noqa: E402  (tests/ is not a package)

GOLDEN = os.path.join(HERE, "golden", "eval_golden.json")
GOLDEN_LARGE = os.path.join(HERE, "golden", "eval_golden_large.json")
CASE_SECONDS = 30  # a hostile case running longer is a hang
CASE_BYTES = 4 << 30  # address space of the process running the hostile cases
FUZZ = (11, 600)  # seed, cases
IOU_TYPES = ("bbox", "segm", "boundary")
PROTOCOLS = ("standard", "fixed", "pool")


def _engine():
    from balms_det import evaluate_detections_file, evaluate_lvis

    try:
        from balms_det.lvis_eval import LVISInputError, evaluate_protocols
    except ImportError:  # the engine before the rewrite
        from balms_det.evaluation.fast_lvis import LVISInputError, evaluate_protocols
    return evaluate_lvis, evaluate_detections_file, LVISInputError, evaluate_protocols


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:24]


def _floats(d):
    """A dict of metrics with exact, comparable values (repr of each float)."""
    return {k: repr(float(v)) for k, v in d.items()}


# ------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------
def _combos(ignore=(False, True), **kw):
    """(iou type, evaluate_protocols keywords) of every iou type (masks: boxes ignored or not),
    each evaluated for every protocol."""
    for iou_type in IOU_TYPES:
        for ig in ignore if iou_type != "bbox" else (False,):
            yield iou_type, dict(kw, ignore_boxes=ig)


def number_sets(large=False):
    """{name: (build, [(iou type, evaluate_lvis keywords)])}: ``build(folder)`` returns
    (ground truth, results) as evaluate_lvis takes them (paths or objects)."""

    def files(make):
        def build(folder):
            gt, res = make()
            paths = []
            for name, obj in (("gt.json", gt), ("res.json", res)):
                path = os.path.join(folder, name)
                with open(path, "w") as f:
                    f.write(json.dumps(obj))
                paths.append(path)
            return paths

        return build

    def adversarial(seed, **kw):
        def make():
            ds = eval_cases.make_dataset(seed, n_img=30, adversarial=True)
            return ds, eval_cases.make_results(ds, seed + 100, adversarial=True, **kw)

        return make

    if large:
        return {"lvis5000": (files(lambda: eval_cases.lvis_like(5000, 300, 0)), list(_combos()))}
    sets = {
        "lvis500": (files(lambda: eval_cases.lvis_like(500, 300, 0)), list(_combos())),
        "adv1": (files(adversarial(1)), list(_combos())),
        "adv2": (
            files(adversarial(2, big_image=400)),
            list(_combos(max_dets=15, dets_per_category=3)),
        ),
        "adv3_list": (lambda folder: adversarial(3)(), list(_combos(dets_per_category=7))),
        "hand": (lambda folder: eval_cases.handcrafted_set(), list(_combos())),
    }
    for seed in range(3):
        sets[f"boundary{seed}"] = (
            lambda folder, seed=seed: eval_cases.boundary_dataset(seed),
            [("boundary", dict(ignore_boxes=ig)) for ig in (False, True)],
        )
    return sets


def _number_key(name, iou_type, protocol, kw):
    extra = ",".join(f"{k}={v}" for k, v in sorted(kw.items()))
    return f"{name}/{iou_type}/{protocol},{extra}"


def numbers(large=False, only=None):
    """{key: golden entry} of the number sets: AP, and one digest of the summary metrics,
    precision, recall, per-category AP, num_dets and num_kept."""
    evaluate_protocols = _engine()[3]
    out = {}
    for name, (build, combos) in number_sets(large).items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            gt, res = build(folder)
            for iou_type, kw in combos:
                got = evaluate_protocols(gt, res, iou_type, PROTOCOLS, workers=1, **kw)
                for protocol, r in got.items():
                    pc = r.per_category_ap() if protocol != "pool" else {}
                    parts = [
                        json.dumps(_floats(r.results)).encode(), r.precision.tobytes(),
                        r.recall.tobytes(), np.array(list(pc.values()), np.float64).tobytes(),
                        np.asarray(r.num_dets, np.int64).tobytes(),
                        np.asarray(r.num_kept, np.int64).tobytes(),
                    ]  # fmt: skip
                    out[_number_key(name, iou_type, protocol, kw)] = [
                        repr(float(r.results["AP"])),
                        _digest(b"".join(parts)),
                    ]
    return out


# ------------------------------------------------------------------------------------------
# Hostile inputs
# ------------------------------------------------------------------------------------------
def _write_case(case, folder, k):
    """(ground truth, results) paths or objects of a case, files in ``folder``."""
    gt, res = case["gt"], case["results"]
    if isinstance(gt, dict):
        gt = json.dumps(gt).encode()
    if isinstance(gt, bytes):
        path = os.path.join(folder, f"gt{k}.json")
        with open(path, "wb") as f:
            f.write(gt)
        gt = path
    if isinstance(res, bytes):
        path = os.path.join(folder, f"res{k}.json")
        with open(path, "wb") as f:
            f.write(res)
        res = path
    return gt, res


def outcome(case, folder, k=0, short=False):
    """("ok", digest of metrics, precision and recall, AP) / ("error", message) / ("crash",
    type, message) of a case."""
    evaluate_lvis, evaluate_detections_file, LVISInputError, _ = _engine()
    gt, res = _write_case(case, folder, k)
    try:
        if case["offline"]:
            got, _, _ = evaluate_detections_file(
                gt, res, protocols=("standard", "fixed", "pool", "boundary"), workers=1
            )
            out = ["ok", _digest(json.dumps({t: _floats(m) for t, m in got.items()}).encode())]
            out.append(" ".join(f"{t}={m['AP']:.6g}" for t, m in got.items()))
        else:
            r = evaluate_lvis(gt, res, case["iou_type"], workers=1, **case["kw"])
            parts = json.dumps(_floats(r.results)).encode() + r.precision.tobytes()
            out = ["ok", _digest(parts + r.recall.tobytes()), f"AP={r.results['AP']:.6g}"]
    except LVISInputError as e:
        out = ["error", str(e)]
    except Exception as e:  # noqa: BLE001 (what the golden file records)
        out = ["crash", type(e).__name__, str(e)[:500]]
    out = json.loads(json.dumps(out).replace(folder, "<dir>"))
    if short and out[0] != "ok":  # a fuzzed file: its name left out
        out[-1] = re.sub(r"^Detections file '<dir>/res\d+\.json'", "(file)", out[-1])
    cut = 90 if short else 160
    if out[0] != "ok" and len(out[-1]) > cut:  # a long message: its start and digest
        text = out[-1]
        out[-1] = f"{text[:cut - 30]}... ({len(text)} chars, {_digest(text.encode())[:12]})"
    return out


def _cases():
    """[(name, build)] of every hostile case: the named ones, then the fuzzed files."""
    out = [(name, lambda name=name: eval_cases.hostile_case(name)) for name in eval_cases.HOSTILE]
    ds, fuzzed = eval_cases.fuzz_cases(*FUZZ)
    for k, (kind, text, iou_type) in enumerate(fuzzed):
        out.append((f"fuzz{k:03d}:{kind}", lambda t=text, i=iou_type: dict(
            gt=ds, results=t, iou_type=i, kw={}, offline=False)))  # fmt: skip
    return out


def _child(conn_w, todo, folder):
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # (a sanitizer maps terabytes)
        resource.setrlimit(resource.RLIMIT_AS, (CASE_BYTES, CASE_BYTES))
    for k, (name, build) in todo:
        os.write(conn_w, pickle.dumps(("start", k)) + b"\n\x00END\x00\n")
        try:
            out = outcome(build(), folder, k, short=name.startswith("fuzz"))
        except MemoryError:
            out = ["crash", "MemoryError", ""]
        os.write(conn_w, pickle.dumps(("done", k, out)) + b"\n\x00END\x00\n")


def hostile(names=None, log=None, times=None):
    """{case name: outcome} of every hostile case (or those named), each in a child process:
    one over CASE_SECONDS is ["timeout"], one that kills its process ["died", signal].
    ``times``: a dict given the seconds each case took."""
    todo = [(k, c) for k, c in enumerate(_cases()) if names is None or c[0] in names]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        while todo:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                code = 0
                try:
                    _child(w, todo, folder)
                except BaseException:  # noqa: BLE001
                    code = 1
                os._exit(code)
            os.close(w)
            buf, current, started = b"", None, time.time()
            while True:
                import select

                ready, _, _ = select.select([r], [], [], 1.0)
                if ready:
                    chunk = os.read(r, 1 << 16)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n\x00END\x00\n" in buf:
                        msg, buf = buf.split(b"\n\x00END\x00\n", 1)
                        msg = pickle.loads(msg)
                        if msg[0] == "start":
                            current, started = msg[1], time.time()
                        else:
                            name = dict(todo)[msg[1]][0]
                            results[name] = msg[2]
                            if times is not None:
                                times[name] = time.time() - started
                            current = None
                            if log:
                                log(f"{name}: {str(msg[2])[:150]} ({time.time() - started:.2f} s)")
                if current is not None and time.time() - started > CASE_SECONDS:
                    os.kill(pid, signal.SIGKILL)
                    break
            _, status = os.waitpid(pid, 0)
            os.close(r)
            if current is not None:  # the case running when the child stopped
                name = dict(todo)[current][0]
                if name not in results:
                    died = os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL
                    results[name] = ["died", os.WTERMSIG(status)] if died else ["timeout"]
                    if log:
                        log(f"{name}: {results[name]}")
            todo = [(k, c) for k, c in todo if c[0] not in results]
    return results


# ------------------------------------------------------------------------------------------
# The golden files
# ------------------------------------------------------------------------------------------
def expected(entry):
    """What the current engine must give for a golden entry."""
    return entry.get("after", entry["before"])


def save(data, path):
    """The golden file, an entry per line."""
    lines = []
    for part in sorted(data):
        entries = [
            f"  {json.dumps(k)}: {json.dumps(data[part][k], sort_keys=True)}"
            for k in sorted(data[part])
        ]
        lines.append(f" {json.dumps(part)}: {{\n" + ",\n".join(entries) + "\n }")
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def load(large=False):
    with open(GOLDEN_LARGE if large else GOLDEN) as f:
        return json.load(f)


def differences(saved, got):
    """[(key, expected, got)] where ``got`` differs from the saved entries' expectations."""
    out = []
    for key, entry in saved.items():
        if key not in got:
            continue
        if not _same(expected(entry), got[key]):
            out.append((key, expected(entry), got[key]))
    return out


# Why the rewrite of 2026-12-05 (issue 27: one path; its item 7: the fuzz findings) changed an
# outcome: tag -> (test of the change, reason); a changed entry records the first tag that applies.
REASONS = {
    "utf8": (lambda n, b, a: a[0] == "error" and "not valid UTF-8" in a[1],
             "invalid UTF-8 is refused wherever it is (the scanner checks every string; an "
             "encoded surrogate was read, or an error found first elsewhere)"),
    "json": (lambda n, b, a: b[0] == a[0] == "error" and "not valid JSON" in b[1] + a[1],
             "a JSON error comes from the compiled scanner: the first one, in one pass, naming "
             "the byte at fault and why (the parsers' messages before)"),
    "crash": (lambda n, b, a: b[0] == "crash" and a[0] == "error",
              "a named error instead of a bare exception (the ground-truth and task rules)"),
    "gt": (lambda n, b, a: n.startswith("gt_") and a[0] == "error",
           "the ground-truth rules (check_ground_truth) name the image or annotation and field"),
    "image": (lambda n, b, a: n.startswith("image_") and a[0] == "error",
              "images beyond 32-bit masks (2**31 - 1 pixels) are refused: mask IoU hung or "
              "areas wrapped around"),
    "type": (lambda n, b, a: b[0] == "ok" and a[0] == "error"
             and ("True" in a[1] or "not a number" in a[1] or "bbox must be" in a[1]),
             "a bool or a string where a number is read is refused (it became a number and "
             "changed the metrics)"),
    "key": (lambda n, b, a: n == "offline_escaped_key",
            "a key spelled with escapes is that key: its task (bbox) is evaluated, no longer "
            "skipped; the other tasks' numbers are the same"),
    "id": (lambda n, b, a: b[0] == a[0] == "error" and re.search(r"ids \[.*\.0\]", b[1]),
           "an integral float id is named as the integer it is read as"),
    "long": (lambda n, b, a: b[0] == a[0] == "error" and re.search(r"(_id -?|\[)1e\+\d+", b[1]),
             "a long integer is named as it is written (not as a float)"),
    "null": (lambda n, b, a: b[0] == a[0] == "error" and "NaN" in b[1] and "not a number" in a[1],
             "a null score is not a number (it was read as NaN)"),
}  # fmt: skip


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def why_changed(name, before, after):
    """The tag (of REASONS) of a change of outcome, or None."""
    for tag, (test, _) in REASONS.items():
        if test(name, before, after):
            return tag
    return None


def accept(saved, got):
    """Record, with why, the outcomes the rewrite changed (a change without a reason raises)."""
    unexplained = []
    for key, entry in saved.items():
        if key not in got or _same(entry["before"], got[key]):
            entry.pop("after", None)
            entry.pop("why", None)
            continue
        why = why_changed(key, entry["before"], got[key])
        if why is None:
            unexplained.append((key, entry["before"], got[key]))
            continue
        entry["after"], entry["why"] = got[key], why
    if unexplained:
        raise SystemExit("changes without a reason:\n" + "\n".join(map(str, unexplained)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", action="store_true", help="the 5,000-image set")
    ap.add_argument("--write", action="store_true", help="save 'before' outcomes")
    ap.add_argument("--accept", action="store_true", help="save changed outcomes with why")
    ap.add_argument("--only", nargs="+", default=None, help="these sets / cases only")
    ap.add_argument("-v", action="store_true", help="print every hostile outcome")
    args = ap.parse_args()
    log = print if args.v else None
    t0 = time.time()
    got = {"numbers": numbers(args.large, args.only)}
    if not args.large:
        got["hostile"] = hostile(args.only, log)
    print(f"computed in {time.time() - t0:.1f} s")
    path = GOLDEN_LARGE if args.large else GOLDEN
    if args.write:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = {part: {k: {"before": v} for k, v in got[part].items()} for part in got}
        save(data, path)
        print(f"wrote {path}")
        return
    saved = load(args.large)
    if args.accept:
        for part in got:
            accept(saved[part], got[part])
        save(saved, path)
        print(f"wrote {path}")
        return
    bad = 0
    for part in got:
        for key, want, have in differences(saved[part], got[part]):
            bad += 1
            print(f"{part} {key}:\n  want {str(want)[:300]}\n  got  {str(have)[:300]}")
    print(f"{bad} differences")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
