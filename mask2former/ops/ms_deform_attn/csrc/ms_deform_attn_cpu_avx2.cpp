// The CPU kernels for AVX2, FMA, BMI1/2 and POPCNT; ms_deform_attn_cpu.cpp runs them where the CPU has those.
#include "ms_deform_attn.h"

#ifdef M2F_CPU_DISPATCH
#define M2F_CPU_KERNELS cpu_kernels_avx2
#define M2F_CPU_ISA "avx2"
#define M2F_CPU_TARGET "avx2,fma,bmi,bmi2,popcnt"
// Feature names that GCC 9 and later know.
#define M2F_CPU_SUPPORTED                                                                                       \
  (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&          \
   __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt"))
#include "ms_deform_attn_cpu_kernels.h"
#endif
