// CPU kernels: parallel over (batch, query) for the forward, over (batch, level, group of heads) for the backward,
// whose tasks then own disjoint slices of every gradient, so value gradients accumulate without locks or atomics.
//
// The channel loops are innermost and contiguous and handle the four corners of a sample together; corners off
// the map point at a row of zeros (reads) or at a scratch row (gradient writes), so these loops have no branches
// and vectorize. When D = 32 (all Mask2Former models) it is a compile-time constant and the rows live in registers.
//
// Each ms_deform_attn_cpu*.cpp compiles this file once, for one instruction set. It defines M2F_CPU_KERNELS, the
// name of the CpuKernels it provides, and M2F_CPU_ISA, the instruction set's name; all but the baseline also define
// M2F_CPU_TARGET, the extensions of its code, and M2F_CPU_SUPPORTED, the run-time test that the CPU has them.
// Everything is included before the target applies, so that only this file's own functions, which have internal
// linkage, are compiled for it: the extensions never leak into inline functions shared with other files. The target
// adds extensions and keeps the architecture, so that those inline functions (bfloat16 conversions, the bilinear
// geometry) still inline into the kernels.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "bilinear.h"
#include "ms_deform_attn.h"

namespace mask2former {
namespace {

// Compiled before the target applies, so that it runs on any CPU.
bool cpu_supported() {
#ifdef M2F_CPU_TARGET
  __builtin_cpu_init();
  return M2F_CPU_SUPPORTED;
#else
  return true;
#endif
}

}  // namespace
}  // namespace mask2former

#ifdef M2F_CPU_TARGET
#define M2F_PRAGMA(text) _Pragma(#text)
#define M2F_TARGET(isa) M2F_PRAGMA(GCC target(isa))
M2F_TARGET(M2F_CPU_TARGET)
#endif

namespace mask2former {
namespace {

// acc += sum over corners k of w[k] * v[k]
template <typename acc_t, typename scalar_t>
inline void gather4(int64_t channels, acc_t* __restrict acc, const acc_t (&w)[4], const scalar_t* __restrict v0,
                    const scalar_t* __restrict v1, const scalar_t* __restrict v2, const scalar_t* __restrict v3) {
  for (int64_t c = 0; c < channels; ++c) {
    acc[c] += w[0] * static_cast<acc_t>(v0[c]) + w[1] * static_cast<acc_t>(v1[c]) +
              w[2] * static_cast<acc_t>(v2[c]) + w[3] * static_cast<acc_t>(v3[c]);
  }
}

// dots[k] = g . v[k], and gv[k] += coeff[k] * g
template <typename acc_t, typename scalar_t>
inline void scatter4(int64_t channels, const acc_t* __restrict g, const acc_t (&coeff)[4], acc_t (&dots)[4],
                     const scalar_t* __restrict v0, const scalar_t* __restrict v1, const scalar_t* __restrict v2,
                     const scalar_t* __restrict v3, acc_t* __restrict gv0, acc_t* __restrict gv1,
                     acc_t* __restrict gv2, acc_t* __restrict gv3) {
  acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t gc = g[c];
    d0 += gc * static_cast<acc_t>(v0[c]);
    d1 += gc * static_cast<acc_t>(v1[c]);
    d2 += gc * static_cast<acc_t>(v2[c]);
    d3 += gc * static_cast<acc_t>(v3[c]);
    gv0[c] += coeff[0] * gc;
    gv1[c] += coeff[1] * gc;
    gv2[c] += coeff[2] * gc;
    gv3[c] += coeff[3] * gc;
  }
  dots[0] = d0;
  dots[1] = d1;
  dots[2] = d2;
  dots[3] = d3;
}

// kChannels > 0 fixes D at compile time; 0 reads it from the problem.
template <typename scalar_t, int kChannels>
void forward_kernel(const Problem& pb, const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : pb.channels;
  const int64_t row = pb.heads * channels;  // distance between two pixels of one head
  at::parallel_for(0, pb.batch * pb.queries, 16, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, static_cast<scalar_t>(0));
    std::vector<acc_t> heap(kChannels > 0 ? 0 : channels);
    acc_t stack[kChannels > 0 ? kChannels : 1];
    acc_t* acc = kChannels > 0 ? stack : heap.data();
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / pb.queries;
      for (int64_t m = 0; m < pb.heads; ++m) {
        std::fill(acc, acc + channels, static_cast<acc_t>(0));
        const int64_t sample0 = (nq * pb.heads + m) * pb.levels * pb.points;
        for (int64_t l = 0; l < pb.levels; ++l) {
          const int h = static_cast<int>(shapes[2 * l]);
          const int w = static_cast<int>(shapes[2 * l + 1]);
          const scalar_t* level = value + ((n * pb.pixels + starts[l]) * pb.heads + m) * channels;
          for (int64_t p = 0; p < pb.points; ++p) {
            const int64_t i = sample0 + l * pb.points + p;
            const BilinearSample<acc_t> b(loc[2 * i], loc[2 * i + 1], h, w);
            if (!b.touches) {
              continue;
            }
            const scalar_t* v[4];
            acc_t weights[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = b.valid(k) ? level + b.index(k) * row : zeros.data();
              weights[k] = attn[i] * b.weight(k);
            }
            gather4(channels, acc, weights, v[0], v[1], v[2], v[3]);
          }
        }
        std::copy(acc, acc + channels, out + (nq * pb.heads + m) * channels);
      }
    }
  });
}

// Tasks are (batch, level, group of heads): each owns the value gradients of its level and heads, and the location
// and weight gradients of its samples. Whole groups of heads keep the memory accesses on long contiguous rows.
template <typename scalar_t, int kChannels>
void backward_kernel(const Problem& pb, int64_t heads_per_task, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const at::opmath_type<scalar_t>* loc,
                     const at::opmath_type<scalar_t>* attn, const scalar_t* grad_out,
                     at::opmath_type<scalar_t>* grad_value, at::opmath_type<scalar_t>* grad_loc,
                     at::opmath_type<scalar_t>* grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : pb.channels;
  const int64_t row = pb.heads * channels;
  const int64_t head_groups = pb.heads / heads_per_task;
  at::parallel_for(0, pb.batch * pb.levels * head_groups, 1, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, static_cast<scalar_t>(0));
    std::vector<acc_t> scratch(4 * channels);  // one per corner, so that the four gradient rows never alias
    std::vector<acc_t> heap(kChannels > 0 ? 0 : channels);
    acc_t stack[kChannels > 0 ? kChannels : 1];
    acc_t* g = kChannels > 0 ? stack : heap.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first_head = (task % head_groups) * heads_per_task;
      const int64_t l = (task / head_groups) % pb.levels;
      const int64_t n = task / (head_groups * pb.levels);
      const int h = static_cast<int>(shapes[2 * l]);
      const int w = static_cast<int>(shapes[2 * l + 1]);
      const int64_t level_offset = (n * pb.pixels + starts[l]) * row;
      for (int64_t q = 0; q < pb.queries; ++q) {
        for (int64_t m = first_head; m < first_head + heads_per_task; ++m) {
          const int64_t nqm = (n * pb.queries + q) * pb.heads + m;
          std::copy(grad_out + nqm * channels, grad_out + (nqm + 1) * channels, g);
          const scalar_t* level = value + level_offset + m * channels;
          acc_t* grad_level = grad_value + level_offset + m * channels;
          for (int64_t p = 0; p < pb.points; ++p) {
            const int64_t i = (nqm * pb.levels + l) * pb.points + p;
            const BilinearSample<acc_t> b(loc[2 * i], loc[2 * i + 1], h, w);
            const acc_t a = attn[i];
            acc_t d_attn = 0, d_x = 0, d_y = 0;
            if (b.touches) {
              const scalar_t* v[4];
              acc_t* gv[4];
              acc_t coeff[4];
              acc_t dots[4];
              for (int k = 0; k < 4; ++k) {
                const bool valid = b.valid(k);
                v[k] = valid ? level + b.index(k) * row : zeros.data();
                gv[k] = valid ? grad_level + b.index(k) * row : scratch.data() + k * channels;
                coeff[k] = a * b.weight(k);
              }
              scatter4(channels, g, coeff, dots, v[0], v[1], v[2], v[3], gv[0], gv[1], gv[2], gv[3]);
              for (int k = 0; k < 4; ++k) {
                d_attn += b.weight(k) * dots[k];
                d_x += b.dweight_dx(k) * dots[k];
                d_y += b.dweight_dy(k) * dots[k];
              }
            }
            grad_attn[i] = d_attn;
            grad_loc[2 * i] = a * static_cast<acc_t>(w) * d_x;
            grad_loc[2 * i + 1] = a * static_cast<acc_t>(h) * d_y;
          }
        }
      }
    }
  });
}

// As many heads per backward task as still leaves a few tasks per thread.
int64_t heads_per_task(const Problem& pb) {
  int64_t heads = pb.heads;
  while (heads % 2 == 0 && pb.batch * pb.levels * (pb.heads / heads) < 4 * at::get_num_threads()) {
    heads /= 2;
  }
  return heads;
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  const Problem pb = problem_of(value, sampling_locations);
  at::Tensor out = at::empty({pb.batch, pb.queries, pb.heads * pb.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = pb.channels == 32 ? forward_kernel<scalar_t, 32> : forward_kernel<scalar_t, 0>;
    kernel(pb, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
           sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const Problem pb = problem_of(value, sampling_locations);
  const at::ScalarType acc_type = sampling_locations.scalar_type();
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::empty_like(sampling_locations);
  at::Tensor grad_attn = at::empty_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = pb.channels == 32 ? backward_kernel<scalar_t, 32> : backward_kernel<scalar_t, 0>;
    kernel(pb, heads_per_task(pb), value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
           level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<acc_t>(),
           attention_weights.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<acc_t>(),
           grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>());
  });
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

const CpuKernels M2F_CPU_KERNELS = {M2F_CPU_ISA, &cpu_supported, &forward, &backward};

}  // namespace mask2former
