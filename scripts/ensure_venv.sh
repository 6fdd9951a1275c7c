#!/usr/bin/env bash
# Create .venv with the tested stack (Python 3.10) and balms-det in editable mode, once.
# Re-runs pip only when requirements.txt, setup.py or the compiled core's source changed since
# the last install (the editable install builds the evaluation engine's core,
# balms_det/lvis_eval/_core, in place).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BALMS_VENV:-.venv}
stamp="$VENV/.balms-installed"
is_py310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }
find_python() {
  local c
  local candidates=("${PYTHON310:-}")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.10.*/bin/python3.10)
  fi
  candidates+=("$HOME"/.pyenv/versions/3.10.*/bin/python3.10 "$(command -v python3.10 || true)"
               /usr/bin/python3.10 /usr/local/bin/python3.10)
  for c in "${candidates[@]}"; do  # a pyenv shim may exist without a working 3.10 behind it
    [ -n "$c" ] && [ -x "$c" ] && is_py310 "$c" && { echo "$c"; return; }
  done
  echo "error: Python 3.10 not found (the tested stack needs it: sal-detectron2 ships a" \
       "compiled extension for CPython 3.10); set PYTHON310=/path/to/python3.10" >&2
  exit 1
}
if [ ! -x "$VENV/bin/python" ]; then
  py=$(find_python)
  echo "Creating $VENV with $py"
  "$py" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find balms_det/lvis_eval/_core.pyx balms_det/lvis_eval/csrc -newer "$stamp")" ]; then
  echo "Installing the tested stack into $VENV (requirements.txt; several GB, a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
