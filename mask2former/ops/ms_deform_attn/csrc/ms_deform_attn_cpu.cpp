// The CPU entry points: they run the kernels compiled for the widest instruction set that the CPU supports, or the
// one that MASK2FORMER_CPU_ISA names (to compare them, or to rule one out). On x86-64 with GCC the kernels are
// compiled three times: baseline x86-64 (this file), AVX2 and AVX-512 (ms_deform_attn_cpu_avx2/avx512.cpp);
// elsewhere once, for the compiler's default target.
#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#define M2F_CPU_KERNELS cpu_kernels_baseline
#include "ms_deform_attn_cpu_kernels.h"

namespace mask2former {
namespace {

struct CpuIsa {
  const char* name;
  const CpuKernels* kernels;
};

// The instruction sets of this build that the CPU supports, widest first.
const std::vector<CpuIsa>& available_isas() {
  static const std::vector<CpuIsa> isas = [] {
    std::vector<CpuIsa> found;
#ifdef M2F_CPU_DISPATCH
    // The extensions each compilation targets (ms_deform_attn_cpu_avx2/avx512.cpp), by names GCC 9 knows.
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                      __builtin_cpu_supports("popcnt");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512cd");
    if (avx512) {
      found.push_back({"avx512", &cpu_kernels_avx512});
    }
    if (avx2) {
      found.push_back({"avx2", &cpu_kernels_avx2});
    }
#endif
    found.push_back({"baseline", &cpu_kernels_baseline});
    return found;
  }();
  return isas;
}

const CpuIsa& chosen_isa() {
  const std::vector<CpuIsa>& isas = available_isas();
  const char* requested = std::getenv("MASK2FORMER_CPU_ISA");
  if (requested == nullptr || *requested == '\0') {
    return isas.front();
  }
  std::string names;
  for (const CpuIsa& isa : isas) {
    if (std::strcmp(isa.name, requested) == 0) {
      return isa;
    }
    names += names.empty() ? isa.name : std::string(", ") + isa.name;
  }
  TORCH_CHECK(false, "MASK2FORMER_CPU_ISA=", requested,
              ": this build has no kernels for that instruction set on this CPU; set it to one of ", names,
              ", or unset it to use the widest");
}

}  // namespace

std::string cpu_isa() { return chosen_isa().name; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> names;
  for (const CpuIsa& isa : available_isas()) {
    names.push_back(isa.name);
  }
  return names;
}

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  return chosen_isa().kernels->forward(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                     const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  return chosen_isa().kernels->backward(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, grad_output);
}

}  // namespace mask2former
