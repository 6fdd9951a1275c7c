import glob

from setuptools import Extension, find_packages, setup

# Detectron2 is deliberately not in install_requires: users with an official source build
# would get two copies. The tested stack is pinned in requirements.txt.
#
# The LVIS evaluation engine's compiled core (C, bound by Cython; no dependency beyond Python's
# headers) is the engine's only path. Where it cannot be built the install still succeeds, and
# evaluating says so and names the reference engine (lvis-api).
try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - Cython is a build requirement (pyproject.toml)
    cythonize = None

core = Extension(
    "balms_det.lvis_eval._core",
    ["balms_det/lvis_eval/_core.pyx"] + sorted(glob.glob("balms_det/lvis_eval/csrc/*.c")),
    depends=["balms_det/lvis_eval/csrc/core.h"],
    # no fused multiply-add: IoUs and precisions must round as pycocotools' and lvis-api's do
    extra_compile_args=["-O2", "-std=c99", "-D_GNU_SOURCE", "-ffp-contract=off"],
    optional=True,
)
setup(
    name="balms-det",
    version="0.1.0",
    description="Balanced Meta-Softmax for long-tailed instance segmentation, on Detectron2",
    packages=find_packages(include=["balms_det", "balms_det.*"]),
    ext_modules=cythonize([core], language_level=3, quiet=True) if cythonize else [],
    python_requires=">=3.8",
    install_requires=["numpy", "pycocotools", "opencv-python", "matplotlib"],
)
