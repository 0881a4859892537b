// The CPU entry points: they run the kernels compiled for the widest instruction set that the CPU supports, or the
// one that MASK2FORMER_CPU_ISA names (to compare them, or to rule one out). On x86-64 with GCC the kernels are
// compiled three times: baseline x86-64 (this file), AVX2 and AVX-512 (ms_deform_attn_cpu_avx2/avx512.cpp);
// elsewhere once, for the compiler's default target.
#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#define M2F_CPU_KERNELS cpu_kernels_baseline
#define M2F_CPU_ISA "baseline"
#include "ms_deform_attn_cpu_kernels.h"

namespace mask2former {
namespace {

// The kernels of this build that the CPU runs, widest instruction set first.
const std::vector<const CpuKernels*>& available_kernels() {
  static const std::vector<const CpuKernels*> found = [] {
    const std::vector<const CpuKernels*> built = {
#ifdef M2F_CPU_DISPATCH
        &cpu_kernels_avx512,
        &cpu_kernels_avx2,
#endif
        &cpu_kernels_baseline};
    std::vector<const CpuKernels*> supported;
    for (const CpuKernels* kernels : built) {
      if (kernels->supported()) {
        supported.push_back(kernels);
      }
    }
    return supported;
  }();
  return found;
}

const CpuKernels& chosen_kernels() {
  const std::vector<const CpuKernels*>& available = available_kernels();
  const char* requested = std::getenv("MASK2FORMER_CPU_ISA");
  if (requested == nullptr || *requested == '\0') {
    return *available.front();
  }
  std::string names;
  for (const CpuKernels* kernels : available) {
    if (std::strcmp(kernels->isa, requested) == 0) {
      return *kernels;
    }
    names += names.empty() ? kernels->isa : std::string(", ") + kernels->isa;
  }
  TORCH_CHECK(false, "MASK2FORMER_CPU_ISA=", requested,
              ": this build has no kernels for that instruction set on this CPU; set it to one of ", names,
              ", or unset it to use the widest");
}

}  // namespace

std::string cpu_isa() { return chosen_kernels().isa; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> names;
  for (const CpuKernels* kernels : available_kernels()) {
    names.push_back(kernels->isa);
  }
  return names;
}

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  return chosen_kernels().forward(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                     const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  return chosen_kernels().backward(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, grad_output);
}

}  // namespace mask2former
