"""
Whether this CPU multiplies bfloat16 matrices natively. Without bf16 matrix instructions (AMX-BF16, AVX512-BF16,
Arm's BF16), torch emulates bfloat16 matmuls by converting to float32, and the bf16 path is slower than float32.
"""
import functools

# /proc/cpuinfo flags of native bf16 dot products: x86 AMX and AVX-512, Arm (the "Features" line).
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16_matmul(flags=None):
    """
    True if bf16 matmuls run on dedicated instructions, by the CPU's flags (default: :func:`cpu_flags`; a parameter
    for tests). Where the flags cannot be read the answer is False: float32 is never the slower choice.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    return bool(flags & NATIVE_BF16_FLAGS)
