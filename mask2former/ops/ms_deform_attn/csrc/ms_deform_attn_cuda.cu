// CUDA kernels.
//
// A group of G threads (a power of two up to 32, sized to the channel count D) handles one (batch, query, head).
// Each thread owns VEC consecutive channels, read with one 16-byte load per corner, and accumulates in the
// accumulation type (fp32 for fp32/fp16/bf16 values, fp64 for fp64). No batch-size restriction: one thread group
// per (batch, query, head), whatever the batch.
// Backward: the group reduces its partial location/weight gradients with warp shuffles (no shared memory, no
// block barriers), and adds value gradients to an accumulation-type buffer with atomics, 16 bytes at a time on sm_90+.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "bilinear.h"
#include "ms_deform_attn.h"

namespace mask2former {
namespace {

constexpr int kThreads = 256;

// How the channels of one (batch, query, head) are spread over the threads of its group.
struct Layout {
  int vec;    // channels per thread per step: one 16-byte load, or 1 when D or the pointers do not allow it
  int group;  // threads per (batch, query, head), a power of two dividing 32
  int steps;  // passes over the channels: group * vec * steps >= D
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load(const scalar_t* p, acc_t (&x)[VEC]) {
  const Pack<scalar_t, VEC> pack = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    x[j] = static_cast<acc_t>(pack.v[j]);
  }
}

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store(scalar_t* p, const acc_t (&x)[VEC]) {
  Pack<scalar_t, VEC> pack;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    pack.v[j] = static_cast<scalar_t>(x[j]);
  }
  *reinterpret_cast<Pack<scalar_t, VEC>*>(p) = pack;
}

template <int VEC>
__device__ __forceinline__ void atomic_add(float* p, const float (&x)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int j = 0; j < VEC; j += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + j), make_float4(x[j], x[j + 1], x[j + 2], x[j + 3]));
    }
    return;
  }
#endif
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    atomicAdd(p + j, x[j]);
  }
}

template <int VEC>
__device__ __forceinline__ void atomic_add(double* p, const double (&x)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    atomicAdd(p + j, x[j]);
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ loc,
                   const at::opmath_type<scalar_t>* __restrict__ attn, scalar_t* __restrict__ out, const Problem pb,
                   const Layout layout) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t unit = thread / layout.group;  // ((n * Lq) + q) * M + m
  if (unit >= pb.batch * pb.queries * pb.heads) {
    return;
  }
  const int lane = static_cast<int>(thread % layout.group);
  const int64_t m = unit % pb.heads;
  const int64_t n = unit / (pb.queries * pb.heads);
  const int64_t row = pb.heads * pb.channels;  // distance between two pixels of one head
  const scalar_t* head = value + n * pb.pixels * row + m * pb.channels;
  for (int step = 0; step < layout.steps; ++step) {
    const int64_t c0 = (static_cast<int64_t>(step) * layout.group + lane) * VEC;
    if (c0 >= pb.channels) {
      break;
    }
    acc_t acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] = 0;
    }
    for (int64_t l = 0; l < pb.levels; ++l) {
      const int h = static_cast<int>(shapes[2 * l]);
      const int w = static_cast<int>(shapes[2 * l + 1]);
      const scalar_t* level = head + starts[l] * row + c0;
      for (int64_t p = 0; p < pb.points; ++p) {
        const int64_t i = (unit * pb.levels + l) * pb.points + p;
        const BilinearSample<acc_t> b(loc[2 * i], loc[2 * i + 1], h, w);
        if (!b.touches) {
          continue;
        }
        const acc_t a = attn[i];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (b.valid(k)) {
            acc_t v[VEC];
            load<VEC>(level + b.index(k) * row, v);
            const acc_t coeff = a * b.weight(k);
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
              acc[j] += coeff * v[j];
            }
          }
        }
      }
    }
    store<VEC>(out + unit * pb.channels + c0, acc);
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ loc,
                    const at::opmath_type<scalar_t>* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                    at::opmath_type<scalar_t>* __restrict__ grad_value,
                    at::opmath_type<scalar_t>* __restrict__ grad_loc,
                    at::opmath_type<scalar_t>* __restrict__ grad_attn, const Problem pb, const Layout layout) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t unit = thread / layout.group;
  // Groups are aligned inside warps and never straddle the end, so whole groups leave here together.
  if (unit >= pb.batch * pb.queries * pb.heads) {
    return;
  }
  const int lane = static_cast<int>(thread % layout.group);
  const unsigned warp_lane = threadIdx.x & 31u;
  const unsigned group_mask =
      layout.group == 32 ? 0xffffffffu : ((1u << layout.group) - 1u) << (warp_lane & ~(layout.group - 1u));
  const int64_t m = unit % pb.heads;
  const int64_t n = unit / (pb.queries * pb.heads);
  const int64_t row = pb.heads * pb.channels;
  const int64_t head_offset = n * pb.pixels * row + m * pb.channels;
  for (int step = 0; step < layout.steps; ++step) {
    const int64_t c0 = (static_cast<int64_t>(step) * layout.group + lane) * VEC;
    // Lanes past the last channel hold zeros but still take part in the group's shuffles.
    const bool owns = c0 < pb.channels;
    acc_t g[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      g[j] = 0;
    }
    if (owns) {
      load<VEC>(grad_out + unit * pb.channels + c0, g);
    }
    for (int64_t l = 0; l < pb.levels; ++l) {
      const int h = static_cast<int>(shapes[2 * l]);
      const int w = static_cast<int>(shapes[2 * l + 1]);
      const int64_t level_offset = head_offset + starts[l] * row + c0;
      for (int64_t p = 0; p < pb.points; ++p) {
        const int64_t i = (unit * pb.levels + l) * pb.points + p;
        const BilinearSample<acc_t> b(loc[2 * i], loc[2 * i + 1], h, w);
        const acc_t a = attn[i];
        acc_t d_attn = 0, d_x = 0, d_y = 0;
        if (b.touches && owns) {
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (b.valid(k)) {
              const int64_t offset = level_offset + b.index(k) * row;
              acc_t v[VEC];
              load<VEC>(value + offset, v);
              acc_t g_dot_v = 0;
              acc_t contribution[VEC];
              const acc_t coeff = a * b.weight(k);
#pragma unroll
              for (int j = 0; j < VEC; ++j) {
                g_dot_v += g[j] * v[j];
                contribution[j] = coeff * g[j];
              }
              atomic_add<VEC>(grad_value + offset, contribution);
              d_attn += b.weight(k) * g_dot_v;
              d_x += b.dweight_dx(k) * g_dot_v;
              d_y += b.dweight_dy(k) * g_dot_v;
            }
          }
        }
        for (int delta = layout.group / 2; delta > 0; delta /= 2) {
          d_attn += __shfl_xor_sync(group_mask, d_attn, delta, layout.group);
          d_x += __shfl_xor_sync(group_mask, d_x, delta, layout.group);
          d_y += __shfl_xor_sync(group_mask, d_y, delta, layout.group);
        }
        if (lane == 0) {
          const acc_t gx = a * static_cast<acc_t>(w) * d_x;
          const acc_t gy = a * static_cast<acc_t>(h) * d_y;
          if (step == 0) {
            grad_attn[i] = d_attn;
            grad_loc[2 * i] = gx;
            grad_loc[2 * i + 1] = gy;
          } else {
            grad_attn[i] += d_attn;
            grad_loc[2 * i] += gx;
            grad_loc[2 * i + 1] += gy;
          }
        }
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

Layout layout_for(const at::Tensor& value, int64_t channels, bool pointers_aligned) {
  const int wide = static_cast<int>(16 / value.element_size());
  const int vec = pointers_aligned && channels % wide == 0 ? wide : 1;
  const int64_t vectors = (channels + vec - 1) / vec;
  int group = 1;
  while (group < 32 && group < vectors) {
    group *= 2;
  }
  return {vec, group, static_cast<int>((vectors + group - 1) / group)};
}

unsigned int blocks_for(const Problem& pb, const Layout& layout) {
  const int64_t threads = pb.batch * pb.queries * pb.heads * layout.group;
  return static_cast<unsigned int>((threads + kThreads - 1) / kThreads);
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights) {
  const c10::cuda::CUDAGuard guard(value.device());
  const Problem pb = problem_of(value, sampling_locations);
  at::Tensor out = at::empty({pb.batch, pb.queries, pb.heads * pb.channels}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  const Layout layout = layout_for(value, pb.channels, aligned16(value.data_ptr()) && aligned16(out.data_ptr()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kWide = 16 / sizeof(scalar_t);
    auto kernel = layout.vec == kWide ? forward_kernel<scalar_t, kWide> : forward_kernel<scalar_t, 1>;
    kernel<<<blocks_for(pb, layout), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
        sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), pb,
        layout);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard guard(value.device());
  const Problem pb = problem_of(value, sampling_locations);
  const at::ScalarType acc_type = sampling_locations.scalar_type();
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros_like(sampling_locations);
  at::Tensor grad_attn = at::zeros_like(attention_weights);
  if (grad_output.numel() > 0) {
    const Layout layout = layout_for(value, pb.channels,
                                     aligned16(value.data_ptr()) && aligned16(grad_output.data_ptr()) &&
                                         aligned16(grad_value.data_ptr()));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      constexpr int kWide = 16 / sizeof(scalar_t);
      auto kernel = layout.vec == kWide ? backward_kernel<scalar_t, kWide> : backward_kernel<scalar_t, 1>;
      kernel<<<blocks_for(pb, layout), kThreads, 0, stream>>>(
          value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
          sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(),
          grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), pb, layout);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

std::vector<int64_t> cuda_archs() { return {__CUDA_ARCH_LIST__}; }

}  // namespace mask2former
