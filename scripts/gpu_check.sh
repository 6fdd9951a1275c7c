#!/usr/bin/env bash
# make gpu-check: the GPU check of balms-det (docs/GPU.md) on a CUDA machine with Python 3.12 and
# PyTorch but no Detectron2, fvcore, pycocotools or lvis and no network: installs the wheels and
# builds Detectron2 from what scripts/prepare_gpu_check.sh put in .gpu_check/, builds the
# evaluation core, then runs scripts/gpu_check.py (one table; its parts take at most 480 s and
# end by GPU_CHECK_DEADLINE_S = 420 s after the start, the build included; a second run on the
# same machine keeps the built Detectron2).
#
#   scripts/gpu_check.sh [--dry-run] [gpu_check.py options, e.g. --out DIR --parts tiny lvis]
#
# --dry-run (a machine without a GPU, the project's .venv): checks that .gpu_check/ holds wheels
# that install on CPython 3.12 (pip's own dry run), prints the build command, and runs
# gpu_check.py --device cpu on the carried Detectron2 source's Python code: everything up to the
# first CUDA call.
set -euo pipefail
cd "$(dirname "$0")/.."
PREP=${GPU_CHECK_DIR:-.gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/balms_gpu_check}
DRY=0
ARGS=()
for a in "$@"; do
  if [ "$a" = --dry-run ]; then DRY=1; else ARGS+=("$a"); fi
done
if [ ! -f "$PREP/detectron2/setup.py" ] || ! ls "$PREP"/wheels/*.whl >/dev/null 2>&1; then
  echo "error: $PREP/ lacks the Detectron2 source or the wheels: run" \
       "scripts/prepare_gpu_check.sh DETECTRON2_SOURCE first (on a machine with the network)" >&2
  exit 2
fi
cat "$PREP/MANIFEST.txt" 2>/dev/null || true
BUILD_ENV=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}" "MAX_JOBS=$(nproc)")

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  echo "== dry run: the wheels against CPython 3.12 manylinux x86_64 (pip --dry-run)"
  "$PY" -m pip install -q --dry-run --ignore-installed --no-index --no-deps --target "$WORK/dry" \
    --python-version 3.12 --implementation cp --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 "$PREP"/wheels/*.whl
  echo "   ok: $(ls "$PREP"/wheels/*.whl | wc -l) wheels install on CPython 3.12"
  echo "== dry run: would build Detectron2 with" \
       "(cd $WORK/detectron2 && ${BUILD_ENV[*]} python3 setup.py build_ext --inplace)"
  rm -rf "$WORK/detectron2" && mkdir -p "$WORK" && cp -r "$PREP/detectron2" "$WORK/detectron2"
  ln -s "$WORK/detectron2/configs" "$WORK/detectron2/detectron2/model_zoo/configs"
  echo "== dry run: gpu_check.py --device cpu with this .venv and the carried Detectron2 source"
  echo "   (its Python code: no _C built here)"
  PYTHONPATH="$WORK/detectron2:$PWD" exec "$PY" scripts/gpu_check.py --device cpu "${ARGS[@]}"
fi

PY=${PYTHON:-python3}
t0=$(date +%s)
echo "== $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "GPU", torch.cuda.is_available())')"
mkdir -p "$WORK"
echo "== wheels -> $WORK/site"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$WORK/site" "$PREP"/wheels/*.whl
if ! PYTHONPATH="$WORK/site" "$PY" -c "import numpy, torch, cv2, matplotlib, pycocotools" 2>/dev/null; then
  echo "   numpy<2 (the tested stack's) does not import with this machine's torch / cv2 /" \
       "matplotlib: the machine's own numpy is used instead"
  rm -rf "$WORK"/site/numpy "$WORK"/site/numpy-*.dist-info "$WORK"/site/numpy.libs
fi
echo "== Detectron2 build (${BUILD_ENV[*]}), log in $WORK/detectron2_build.log"
stamp="$(cat "$PREP/MANIFEST.txt" 2>/dev/null | cksum) ${BUILD_ENV[*]}"
if [ -f "$WORK/detectron2/.built" ] && [ "$(cat "$WORK/detectron2/.built")" = "$stamp" ]; then
  echo "   already built from the same source on this machine: kept"
elif rm -rf "$WORK/detectron2" && cp -r "$PREP/detectron2" "$WORK/detectron2" \
    && (cd "$WORK/detectron2" && env "${BUILD_ENV[@]}" PYTHONPATH="$WORK/site" \
      "$PY" setup.py build_ext --inplace >"$WORK/detectron2_build.log" 2>&1); then
  echo "$stamp" > "$WORK/detectron2/.built"
  echo "   built in $(( $(date +%s) - t0 )) s"
else
  tail -n 30 "$WORK/detectron2_build.log"
  echo "   Detectron2's _C did not build: the check goes on with its Python code (Mask R-CNN" \
       "needs no _C); the table says '_C missing'"
fi
# Detectron2's setup.py links its configs into the package for model_zoo; keep that without _C
[ -e "$WORK/detectron2/detectron2/model_zoo/configs" ] \
  || ln -s "$WORK/detectron2/configs" "$WORK/detectron2/detectron2/model_zoo/configs"
export PYTHONPATH="$WORK/site:$WORK/detectron2:$PWD"
echo "== balms-det's evaluation core"
"$PY" setup.py -q build_ext --inplace >"$WORK/core_build.log" 2>&1 \
  || echo "   not built (see $WORK/core_build.log): the evaluator uses its numpy path"
"$PY" -c "import torch, detectron2, balms_det; from detectron2.utils.collect_env import collect_env_info" \
  || { echo "error: the environment does not import" >&2; exit 1; }
setup_s=$(( $(date +%s) - t0 ))
# the parts get at most 8 minutes, and end by GPU_CHECK_DEADLINE_S seconds after this script
# started (default 420: a 450 s limit on the whole command leaves time to print the table, and
# 15 minutes of device time leave room for a second call)
budget=$(( ${GPU_CHECK_DEADLINE_S:-420} - setup_s - 15 ))
[ "$budget" -gt 480 ] && budget=480
[[ " ${ARGS[*]-} " == *" --budget-s "* ]] || ARGS+=(--budget-s "$budget")
echo "== gpu_check.py (set up in ${setup_s} s; parts budget ${budget} s)"
exec "$PY" scripts/gpu_check.py --device cuda "${ARGS[@]}"
