"""Installs the ``mask2former`` package (``pip install -e .``)."""
from setuptools import find_packages, setup

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former (masked-attention mask transformer) for universal image segmentation, on detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=["mask2former", "mask2former.*"]),
)
