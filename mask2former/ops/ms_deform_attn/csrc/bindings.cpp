// Python binding: checks the inputs once and dispatches to the CPU or CUDA kernels by device.
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include "ms_deform_attn.h"

namespace mask2former {
namespace {

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_locations.sizes());
  const Problem pb = problem_of(value, sampling_locations);
  TORCH_CHECK(sampling_locations.size(0) == pb.batch && sampling_locations.size(2) == pb.heads,
              "sampling_locations ", sampling_locations.sizes(), " does not match value ", value.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "attention_weights must be (N, Lq, M, L, P) = ", sampling_locations.sizes().slice(0, 5), ", got ",
              attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == pb.levels && spatial_shapes.size(1) == 2,
              "spatial_shapes must be (L, 2) with L = ", pb.levels, ", got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == pb.levels,
              "level_start_index must be (L,) with L = ", pb.levels, ", got ", level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == acc_type && attention_weights.scalar_type() == acc_type,
              "sampling_locations and attention_weights must be ", acc_type, " for ", value.scalar_type(),
              " values");
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "all inputs must be contiguous");
    TORCH_CHECK(t->device() == value.device(), "all inputs must be on ", value.device(), ", got ", t->device());
  }
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return forward_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
#else
    TORCH_CHECK(false, "this build of the ms_deform_attn extension has no CUDA kernels");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn runs on CPU or CUDA tensors, got ", value.device());
  return forward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const Problem pb = problem_of(value, sampling_locations);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({pb.batch, pb.queries, pb.heads * pb.channels}) &&
                  grad_output.scalar_type() == value.scalar_type() && grad_output.is_contiguous() &&
                  grad_output.device() == value.device(),
              "grad_output must be a contiguous (N, Lq, M * D) tensor like the forward output");
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return backward_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         grad_output);
#else
    TORCH_CHECK(false, "this build of the ms_deform_attn extension has no CUDA kernels");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn runs on CPU or CUDA tensors, got ", value.device());
  return backward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output);
}

}  // namespace
}  // namespace mask2former

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multi-scale deformable attention kernels (CPU, and CUDA when built with it)";
  m.def("forward", &mask2former::forward, "(value, spatial_shapes, level_start_index, locations, weights) -> output");
  m.def("backward", &mask2former::backward,
        "(value, spatial_shapes, level_start_index, locations, weights, grad_output) -> "
        "[grad_value, grad_locations, grad_weights]");
  m.def("cpu_isa", &mask2former::cpu_isa,
        "the instruction set of the CPU kernels that run now: avx512, avx2 or baseline (MASK2FORMER_CPU_ISA)");
  m.def("cpu_isas", &mask2former::cpu_isas, "the instruction sets of this build that the CPU supports, widest first");
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_archs") = mask2former::cuda_archs();
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_archs") = std::vector<int64_t>();
#endif
}
