// The CPU kernels for AVX2, FMA, BMI1/2 and POPCNT; ms_deform_attn_cpu.cpp runs them where the CPU has those.
#include "ms_deform_attn.h"

#ifdef M2F_CPU_DISPATCH
#define M2F_CPU_KERNELS cpu_kernels_avx2
#define M2F_CPU_TARGET "avx2,fma,bmi,bmi2,popcnt"
#include "ms_deform_attn_cpu_kernels.h"
#endif
