from setuptools import Extension, find_packages, setup

# Detectron2 is deliberately not in install_requires: users with an official source build
# would get two copies. The tested stack is pinned in requirements.txt.
#
# The evaluation engine's compiled core (C, no dependency beyond Python's headers) is optional:
# where it cannot be built, the engine gives the same numbers in numpy, slower.
setup(
    name="balms-det",
    version="0.1.0",
    description="Balanced Meta-Softmax for long-tailed instance segmentation, on Detectron2",
    packages=find_packages(include=["balms_det", "balms_det.*"]),
    ext_modules=[
        Extension(
            "balms_det.evaluation._ccore",
            ["balms_det/evaluation/_ccore.c"],
            # no fused multiply-add: the IoUs must round as pycocotools' do
            extra_compile_args=["-O2", "-std=c99", "-ffp-contract=off"],
            optional=True,
        )
    ],
    python_requires=">=3.8",
    install_requires=["numpy", "pycocotools", "opencv-python", "matplotlib"],
)
