from setuptools import find_packages, setup

# Detectron2 is deliberately not in install_requires: users with an official source build
# would get two copies. The tested stack is pinned in requirements.txt.
setup(
    name="balms-det",
    version="0.1.0",
    description="Balanced Meta-Softmax for long-tailed instance segmentation, on Detectron2",
    packages=find_packages(include=["balms_det", "balms_det.*"]),
    python_requires=">=3.8",
    install_requires=["numpy", "pycocotools", "opencv-python", "matplotlib"],
)
