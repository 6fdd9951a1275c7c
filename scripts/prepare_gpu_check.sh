#!/usr/bin/env bash
# Prepare .gpu_check/ (git-ignored) for `make gpu-check` on a CUDA machine that has Python 3.12
# and PyTorch but no Detectron2, fvcore, pycocotools or lvis, and no network (docs/GPU.md).
# Run it here, on a machine with the network; the folder then travels with the working tree.
#
#   scripts/prepare_gpu_check.sh [DETECTRON2_SOURCE]
#
# DETECTRON2_SOURCE (or $DETECTRON2_SRC): a Detectron2 source tree (the folder with its
# setup.py) or the git directory of a clone (bare or not; its HEAD is taken). Get one with
#   git clone https://github.com/facebookresearch/detectron2
# PyPI has no source distribution of Detectron2: sal-detectron2 0.7.2, the tested stack's, is a
# single CPython 3.10 wheel whose compiled _C is built for torch 2.3.
#
# Wheels: `pip download` for CPython 3.12 on manylinux x86_64, at the tested stack's versions
# (.venv, 2026-12-05); fvcore, iopath and antlr4-python3-runtime have no wheel on PyPI: built here
# (pure Python). numpy<2 travels too: the tested stack's, and lvis 0.5.3's.
# Result: .gpu_check/detectron2/ (setup.py, detectron2/, configs/, the three projects its
# setup.py packages), .gpu_check/wheels/*.whl and .gpu_check/MANIFEST.txt; about 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_DIR:-.gpu_check}
SRC=${1:-${DETECTRON2_SRC:-}}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}

if [ -z "$SRC" ]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "error: give the Detectron2 source (a tree or a git directory)" >&2
  exit 2
fi

D2_PATHS=(setup.py setup.cfg LICENSE detectron2 configs projects/PointRend/point_rend
          projects/DeepLab/deeplab projects/Panoptic-DeepLab/panoptic_deeplab)
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/detectron2" "$OUT.tmp/wheels"
if [ -f "$SRC/setup.py" ] && [ -d "$SRC/detectron2" ]; then
  (cd "$SRC" && tar -cf - --exclude=__pycache__ --exclude='*.so' --exclude=build \
     --exclude=detectron2/model_zoo/configs \
     $(for p in "${D2_PATHS[@]}"; do [ -e "$p" ] && echo "$p"; done)) | tar -xf - -C "$OUT.tmp/detectron2"
  origin="source tree $SRC"
  commit=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)
elif git --git-dir="$SRC" rev-parse --verify -q HEAD >/dev/null 2>&1 \
     || git --git-dir="$SRC/.git" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  gd=$SRC; git --git-dir="$gd" rev-parse --verify -q HEAD >/dev/null 2>&1 || gd=$SRC/.git
  present=()
  for p in "${D2_PATHS[@]}"; do
    git --git-dir="$gd" cat-file -e "HEAD:$p" 2>/dev/null && present+=("$p")
  done
  git --git-dir="$gd" archive HEAD "${present[@]}" | tar -xf - -C "$OUT.tmp/detectron2"
  origin="git directory $SRC"
  commit=$(git --git-dir="$gd" rev-parse HEAD)
else
  echo "error: '$SRC' is neither a Detectron2 source tree (setup.py + detectron2/) nor a git" \
       "directory" >&2
  exit 2
fi
[ -f "$OUT.tmp/detectron2/detectron2/layers/csrc/vision.cpp" ] || {
  echo "error: '$SRC' has no detectron2/layers/csrc/vision.cpp: not Detectron2's source" >&2; exit 2; }

# CPython 3.12 manylinux wheels (binary ones: pycocotools, numpy, orjson) and pure ones
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(numpy==1.26.4 pycocotools==2.0.11 lvis==0.5.3 yacs==0.1.8
        termcolor==3.3.0 omegaconf==2.3.1 hydra-core==1.3.8 orjson==3.13.0)
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${PLAT[@]}" -d "$OUT.tmp/wheels" \
  "${WHEELS[@]}"
BUILT=(fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3)  # sdists only
"$PY" -m pip wheel -q --use-pep517 --no-deps -w "$OUT.tmp/wheels" "${BUILT[@]}"
for w in "$OUT.tmp"/wheels/{fvcore,iopath,antlr4}*.whl; do
  case "$w" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
    *) echo "error: $w is not a pure-Python wheel" >&2; exit 1 ;; esac
done

{
  echo "Prepared by scripts/prepare_gpu_check.sh on $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "Detectron2: $origin, commit $commit"
  echo "Wheels (CPython 3.12, manylinux x86_64):"
  (cd "$OUT.tmp/wheels" && ls -1 *.whl | sed 's/^/  /')
} > "$OUT.tmp/MANIFEST.txt"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
cat "$OUT/MANIFEST.txt"
echo "Size: $(du -sh "$OUT" | cut -f1) in $OUT (the working tree that travels must stay under 64 MiB)"
