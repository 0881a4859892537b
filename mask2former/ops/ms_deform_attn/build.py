"""
How the op's extension is compiled: shared by ``setup.py`` (ahead of time, during ``pip install -e .``) and by the
JIT build on first use. It imports nothing from the package, so that ``setup.py`` can load it by path.

The CPU kernels are always compiled. The CUDA kernels are compiled when ``FORCE_CUDA=1``, or, unless
``FORCE_CUDA=0``, when torch is a CUDA build and a CUDA toolkit is found (``$CUDA_HOME``/``$CUDA_PATH``, else the
``nvcc`` on ``PATH``, else ``/usr/local/cuda``), for the architectures in ``TORCH_CUDA_ARCH_LIST`` (default ahead
of time: ``default_cuda_arch_list()``, the installed torch's own plus PTX of the newest; for the JIT build: the
visible GPUs').
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "mask2former.ops.ms_deform_attn._C"
JIT_NAME = "mask2former_ms_deform_attn"
# Used when the installed torch does not say which architectures it was built for.
FALLBACK_CUDA_ARCH_LIST = "8.0;9.0+PTX"
# ATen's parallel_for is an OpenMP loop compiled into the extension: without -fopenmp it would run serially.
# Reassociating float sums (no fast-math beyond that: NaN/inf semantics and rounding of each operation are kept)
# lets the compiler vectorize the CPU kernels' channel dot products, which halves the CPU backward's time.
# No fused multiply-adds: the forward, vectorized across channels, then rounds the same way in the baseline, AVX2
# and AVX-512 compilations, so its output does not depend on the CPU that runs it.
CXX_FLAGS = ["-O3", "-fopenmp", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3"]
LINK_FLAGS = ["-fopenmp"]


def _nvcc_reported_root(nvcc):
    """The toolkit root as nvcc itself reports it, for an ``nvcc`` that is a wrapper script outside the toolkit."""
    try:
        run = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", run.stdout + run.stderr, re.MULTILINE)
    return Path(match.group(1).strip()).parent if match else None


def find_cuda_home():
    """The CUDA toolkit root (the folder with ``bin/nvcc`` and ``include/cuda_runtime.h``), or None."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]

    def candidates():
        nvcc = shutil.which("nvcc")
        if nvcc:
            yield Path(nvcc).resolve().parent.parent
            yield _nvcc_reported_root(nvcc)
        yield Path("/usr/local/cuda")

    for root in candidates():
        if root is not None and (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file():
            return str(root)
    return None


def _nvcc_architectures(home):
    """The real architectures (e.g. ``{"75", "90"}``) the toolkit's nvcc compiles for, or None if it cannot say."""
    try:
        run = subprocess.run(
            [str(Path(home) / "bin" / "nvcc"), "--list-gpu-code"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = set(re.findall(r"^sm_(\d+[a-z]?)$", run.stdout, re.MULTILINE))
    return found if run.returncode == 0 and found else None


def default_cuda_arch_list():
    """
    ``TORCH_CUDA_ARCH_LIST`` for the ahead-of-time build: the architectures the installed torch was built for
    (``torch.cuda.get_arch_list()``, e.g. Turing to Blackwell for CUDA 13) that the toolkit's nvcc supports, plus
    PTX of the newest, so that GPUs newer than all of them still run (JIT-compiled by the driver).
    """
    import torch

    archs = [a[len("sm_"):] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    home = find_cuda_home()
    supported = _nvcc_architectures(home) if home else None
    if supported is not None:
        archs = [a for a in archs if a in supported]
    if not archs:
        return FALLBACK_CUDA_ARCH_LIST
    # "sm_90a" -> "9.0a", "sm_120" -> "12.0": the last digit (and suffix) is the minor version
    versions = [f"{a.rstrip('abf')[:-1]}.{a[len(a.rstrip('abf')) - 1:]}" for a in archs]
    return ";".join(versions) + "+PTX"


def wants_cuda():
    """Whether to compile the CUDA kernels."""
    import torch

    force = os.environ.get("FORCE_CUDA")
    if force in ("0", "1"):
        return force == "1"
    return torch.version.cuda is not None and find_cuda_home() is not None


def _point_torch_at_cuda_home():
    """torch's own toolkit guess (parent of the ``nvcc`` on ``PATH``) is wrong for wrapper scripts: use ours."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise RuntimeError("the CUDA kernels need a CUDA build of torch: set FORCE_CUDA=0 for the CPU kernels only")
    home = find_cuda_home()
    if home is None:
        raise RuntimeError("no CUDA toolkit found: set CUDA_HOME to the toolkit root (the folder with bin/nvcc)")
    cpp_extension.CUDA_HOME = home


def _sources(with_cuda):
    patterns = ("*.cpp", "*.cu") if with_cuda else ("*.cpp",)
    return sorted(str(p) for pattern in patterns for p in CSRC.glob(pattern))


def setup_extension(root):
    """
    ``ext_modules`` and ``cmdclass`` for ``setup.py`` (source paths relative to ``root``). Where torch or a C++
    compiler is missing there is nothing to build now: the op is then built on first use, or replaced by the
    reference. Where both exist, a compile error fails the install.
    """
    compiler = os.environ.get("CXX", "c++")  # what torch's build_ext compiles with
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        print(f"mask2former: not compiling the deformable-attention op: torch does not import ({e})", file=sys.stderr)
        return [], {}
    if shutil.which(compiler.split()[0]) is None:
        print(f"mask2former: not compiling the deformable-attention op: no C++ compiler ({compiler})", file=sys.stderr)
        return [], {}

    with_cuda = wants_cuda()
    sources = [os.path.relpath(p, root) for p in _sources(with_cuda)]
    if with_cuda:
        _point_torch_at_cuda_home()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_cuda_arch_list())
        extension = CUDAExtension(
            EXTENSION_NAME,
            sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    else:
        extension = CppExtension(
            EXTENSION_NAME, sources, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS
        )
    return [extension], {"build_ext": BuildExtension}


def jit_build(with_cuda, arch=None):
    """
    Compiles and imports the extension (cached by torch in ``$TORCH_EXTENSIONS_DIR``, default ~/.cache). ``arch``
    (e.g. "9.0") builds the CUDA kernels for that architecture only, under a name of its own; by default they are
    built for ``TORCH_CUDA_ARCH_LIST``, else the visible GPUs.
    """
    from torch.utils import cpp_extension

    if with_cuda:
        _point_torch_at_cuda_home()
    defines = ["-DWITH_CUDA"] if with_cuda else []
    name = f"{JIT_NAME}_{'cuda' if with_cuda else 'cpu'}"
    flags = list(NVCC_FLAGS)
    if arch is not None:
        number = arch.replace(".", "")
        name += f"_sm{number}"
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
    return cpp_extension.load(
        name=name,
        sources=_sources(with_cuda),
        extra_cflags=CXX_FLAGS + defines,
        extra_cuda_cflags=flags + defines,
        extra_ldflags=LINK_FLAGS,
        with_cuda=with_cuda,
    )
