"""
Installs the ``mask2former`` package (``pip install -e .``) and compiles the multi-scale deformable attention op:
the CPU kernels when a C++ compiler is found, the CUDA kernels too when a CUDA toolkit is found or ``FORCE_CUDA=1``
(see ``mask2former/ops/ms_deform_attn/build.py``). A compile error fails the install.
"""
import importlib.util
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def op_build():
    """The op's build description, loaded by path: the package cannot be imported before it is installed."""
    path = ROOT / "mask2former" / "ops" / "ms_deform_attn" / "build.py"
    spec = importlib.util.spec_from_file_location("ms_deform_attn_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext_modules, cmdclass = op_build().setup_extension(ROOT)

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former (masked-attention mask transformer) for universal image segmentation, on detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=["mask2former", "mask2former.*"]),
    package_data={"mask2former.data.datasets": ["meta/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
