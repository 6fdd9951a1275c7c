"""The import contract (.importlinter, checked by import-linter's lint-imports): the evaluation
engine imports neither torch, Detectron2 nor the rest of balms_det; its layers and the
adapter's import one way; no package has an import cycle between its modules. It holds for the
package, and fails for a copy of it with each kind of violation. The torch-free tests import
no torch."""

import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.torch_free
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root):
    env = dict(os.environ, PYTHONPATH=root)
    cmd = [LINT, "--config", os.path.join(REPO, ".importlinter"), "--no-cache"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)


def test_the_package_keeps_the_contract():
    p = _lint(REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken" in p.stdout


@pytest.mark.parametrize(
    "module,line,contract",
    [
        ("lvis_eval/params.py", "import torch", "imports neither torch"),
        ("lvis_eval/rules.py", "from . import reader", "layers import one way"),
        ("evaluation/report.py", "from . import lvis_evaluator", "adapter sits on the engine"),
        ("engine/merging.py", "from . import btm", "No import cycle"),
    ],
)
def test_a_violation_breaks_the_contract(tmp_path, module, line, contract):
    shutil.copytree(os.path.join(REPO, "balms_det"), tmp_path / "balms_det",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))  # fmt: skip
    with open(tmp_path / "balms_det" / module, "a") as f:
        f.write(f"\n{line}  # a violation\n")
    p = _lint(str(tmp_path))
    assert p.returncode != 0
    broken = p.stdout.split("Broken contracts")[-1]
    assert contract in broken, p.stdout[-3000:]


def test_torch_free_tests_import_no_torch():
    """The test modules marked torch_free (their imports: the engine, lvis-api, the tools'
    torch-free paths) load neither torch nor Detectron2."""
    tests = os.path.dirname(os.path.abspath(__file__))
    names = [
        f[:-3]
        for f in sorted(os.listdir(tests))
        if f.startswith("test_") and f.endswith(".py")
        and re.search(r"^pytestmark = pytest.mark.torch_free", open(os.path.join(tests, f)).read(), re.M)
    ]  # fmt: skip
    assert {"test_eval_golden", "test_eval_core", "test_eval_hostile", "test_fast_lvis"} <= set(
        names
    )
    code = (
        f"import sys; sys.path.insert(0, {tests!r})\n"
        f"for n in {names!r}: __import__(n)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'detectron2')))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"
