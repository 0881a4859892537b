// Multi-scale deformable attention kernels: declarations shared by the binding and the CPU/CUDA sources.
//
// Shapes (all tensors contiguous, on one device):
//   value               (N, S, M, D)        any floating dtype; S = sum over levels of H_l * W_l
//   spatial_shapes      (L, 2) int64        (H_l, W_l)
//   level_start_index   (L,) int64          offset of each level in S
//   sampling_locations  (N, Lq, M, L, P, 2) normalized (x, y), dtype = accumulation type of value
//   attention_weights   (N, Lq, M, L, P)    dtype = accumulation type of value
//   output              (N, Lq, M * D)      dtype of value
// The accumulation type is float for float/half/bfloat16 values and double for double values.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mask2former {

// Problem sizes, read off the inputs once.
struct Problem {
  int64_t batch, pixels, heads, channels, queries, levels, points;
};

inline Problem problem_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

// Kernels compiled for one CPU instruction set (ms_deform_attn_cpu_kernels.h).
struct CpuKernels {
  const char* isa;      // "avx512", "avx2" or "baseline"
  bool (*supported)();  // whether this CPU has the instruction set
  at::Tensor (*forward)(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights);
  std::vector<at::Tensor> (*backward)(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, const at::Tensor& grad_output);
};

// GCC on x86-64 also compiles the kernels for AVX2 and AVX-512, and picks among them at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define M2F_CPU_DISPATCH
extern const CpuKernels cpu_kernels_avx2;
extern const CpuKernels cpu_kernels_avx512;
#endif
extern const CpuKernels cpu_kernels_baseline;

// The instruction set whose kernels forward_cpu and backward_cpu run: "avx512", "avx2" or "baseline".
std::string cpu_isa();

// The instruction sets of this build that the CPU supports, widest first.
std::vector<std::string> cpu_isas();

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights);

// Returns {grad_value (dtype of value), grad_sampling_locations, grad_attention_weights (accumulation type)}.
std::vector<at::Tensor> backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                     const at::Tensor& attention_weights, const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights);

std::vector<at::Tensor> backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, const at::Tensor& grad_output);

// The virtual architectures the CUDA kernels were compiled for (e.g. {800, 900}).
std::vector<int64_t> cuda_archs();
#endif

}  // namespace mask2former
