// The CPU kernels for AVX-512 F/BW/DQ/VL/CD on top of the AVX2 set; ms_deform_attn_cpu.cpp runs them where the CPU
// has those.
#include "ms_deform_attn.h"

#ifdef M2F_CPU_DISPATCH
#define M2F_CPU_KERNELS cpu_kernels_avx512
#define M2F_CPU_ISA "avx512"
#define M2F_CPU_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx2,fma,bmi,bmi2,popcnt"
// Feature names that GCC 9 and later know.
#define M2F_CPU_SUPPORTED                                                                                       \
  (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&                                 \
   __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&                                \
   __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&    \
   __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt"))
#include "ms_deform_attn_cpu_kernels.h"
#endif
