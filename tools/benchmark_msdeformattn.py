#!/usr/bin/env python
"""
Speed of the multi-scale deformable attention implementations: forward, and forward + backward, on the shapes of
the Swin-T pixel decoder (8 heads x 32 channels, 4 points, 3 levels at strides 8/16/32, one query per pixel).

Implementations:
  reference  pure PyTorch (grid_sample), mask2former/ops/ms_deform_attn/reference.py
  kernel     the compiled op (CPU kernel for --device cpu, CUDA kernels for --device cuda); on CPU the kernels
             compiled for the widest instruction set the CPU has
  kernel:ISA CPU only: the kernels compiled for a narrower instruction set (avx2, baseline) that the CPU also runs
  classic    CUDA only: the classic Deformable-DETR op design, compiled from this file for comparison: one thread
             per output element, value gradients by scalar atomics, location/weight gradients reduced in shared
             memory by the first thread of each (batch, query, head)

Prints one table (median of --repeats timed runs after warm-up), with the device name.

Example:
    python tools/benchmark_msdeformattn.py --device cpu --repeats 3
    python tools/benchmark_msdeformattn.py --device cuda --dtypes float32 bfloat16 float16
"""
import argparse
import platform
import statistics
import time

import torch
from tabulate import tabulate

from mask2former.ops.ms_deform_attn import MSDeformAttnFunction, cpu_isa, kernels_for, ms_deform_attn_reference
from mask2former.ops.ms_deform_attn.build import CSRC, find_cuda_home

HEADS, CHANNELS, POINTS = 8, 32, 4
STRIDES = (8, 16, 32)
# name: (batch, image height, image width)
SHAPES = {"LSJ 1024 train (batch 2)": (2, 1024, 1024), "800x1216 inference (batch 1)": (1, 800, 1216)}

CLASSIC_SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include "bilinear.h"

using mask2former::BilinearSample;

// One thread per output element (n, q, m, d).
__global__ void classic_forward(const float* value, const int64_t* shapes, const int64_t* starts, const float* loc,
                                const float* attn, float* out, int64_t n_units, int S, int M, int D, int Q, int L,
                                int P) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_units * D) return;
  const int d = t % D;
  const int64_t unit = t / D;  // (n * Q + q) * M + m
  const int m = unit % M;
  const int64_t n = unit / (static_cast<int64_t>(Q) * M);
  float acc = 0;
  for (int l = 0; l < L; ++l) {
    const int h = shapes[2 * l], w = shapes[2 * l + 1];
    const float* level = value + ((n * S + starts[l]) * M + m) * D + d;
    for (int p = 0; p < P; ++p) {
      const int64_t i = (unit * L + l) * P + p;
      const BilinearSample<float> b(loc[2 * i], loc[2 * i + 1], h, w);
      if (!b.touches) continue;
      for (int k = 0; k < 4; ++k)
        if (b.valid(k)) acc += attn[i] * b.weight(k) * level[static_cast<int64_t>(b.index(k)) * M * D];
    }
  }
  out[t] = acc;
}

// One thread per (n, q, m, d); the D threads of a (n, q, m) sit in one block and reduce through shared memory.
__global__ void classic_backward(const float* value, const int64_t* shapes, const int64_t* starts, const float* loc,
                                 const float* attn, const float* grad_out, float* grad_value, float* grad_loc,
                                 float* grad_attn, int64_t n_units, int S, int M, int D, int Q, int L, int P) {
  extern __shared__ float partial[];  // 3 * blockDim.x
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = t < n_units * D;
  const int d = t % D;
  const int64_t unit = active ? t / D : 0;
  const int m = unit % M;
  const int64_t n = unit / (static_cast<int64_t>(Q) * M);
  const float g = active ? grad_out[t] : 0.f;
  for (int l = 0; l < L; ++l) {
    const int h = shapes[2 * l], w = shapes[2 * l + 1];
    const int64_t level = ((n * S + starts[l]) * M + m) * D + d;
    for (int p = 0; p < P; ++p) {
      const int64_t i = (unit * L + l) * P + p;
      const BilinearSample<float> b(loc[2 * i], loc[2 * i + 1], h, w);
      const float a = attn[i];
      float da = 0, dx = 0, dy = 0;
      for (int k = 0; k < 4 && active && b.touches; ++k) {
        if (!b.valid(k)) continue;
        const int64_t offset = level + static_cast<int64_t>(b.index(k)) * M * D;
        const float v = value[offset];
        da += b.weight(k) * g * v;
        dx += b.dweight_dx(k) * g * v;
        dy += b.dweight_dy(k) * g * v;
        atomicAdd(grad_value + offset, a * b.weight(k) * g);
      }
      partial[threadIdx.x] = da;
      partial[blockDim.x + threadIdx.x] = dx;
      partial[2 * blockDim.x + threadIdx.x] = dy;
      __syncthreads();
      if (active && d == 0) {
        float sa = 0, sx = 0, sy = 0;
        for (int j = 0; j < D; ++j) {
          sa += partial[threadIdx.x + j];
          sx += partial[blockDim.x + threadIdx.x + j];
          sy += partial[2 * blockDim.x + threadIdx.x + j];
        }
        grad_attn[i] = sa;
        grad_loc[2 * i] = a * w * sx;
        grad_loc[2 * i + 1] = a * h * sy;
      }
      __syncthreads();
    }
  }
}

torch::Tensor forward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts, torch::Tensor loc,
                      torch::Tensor attn) {
  const int N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  auto out = torch::empty({N, Q, M * D}, value.options());
  const int64_t units = static_cast<int64_t>(N) * Q * M;
  const int threads = 256;
  classic_forward<<<(units * D + threads - 1) / threads, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      value.data_ptr<float>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc.data_ptr<float>(),
      attn.data_ptr<float>(), out.data_ptr<float>(), units, S, M, D, Q, L, P);
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts, torch::Tensor loc,
                                    torch::Tensor attn, torch::Tensor grad_out) {
  const int N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  TORCH_CHECK(256 % D == 0, "the classic baseline needs D dividing 256");
  auto grad_value = torch::zeros_like(value);
  auto grad_loc = torch::empty_like(loc);
  auto grad_attn = torch::empty_like(attn);
  const int64_t units = static_cast<int64_t>(N) * Q * M;
  const int threads = 256;
  classic_backward<<<(units * D + threads - 1) / threads, threads, 3 * threads * sizeof(float),
                     c10::cuda::getCurrentCUDAStream()>>>(
      value.data_ptr<float>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), loc.data_ptr<float>(),
      attn.data_ptr<float>(), grad_out.data_ptr<float>(), grad_value.data_ptr<float>(), grad_loc.data_ptr<float>(),
      grad_attn.data_ptr<float>(), units, S, M, D, Q, L, P);
  return {grad_value, grad_loc, grad_attn};
}
"""


CLASSIC_DECLARATIONS = """
torch::Tensor forward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts, torch::Tensor loc,
                      torch::Tensor attn);
std::vector<torch::Tensor> backward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts, torch::Tensor loc,
                                    torch::Tensor attn, torch::Tensor grad_out);
"""


def build_classic():
    """Compiles the classic-design baseline (fp32 only) for the visible GPU."""
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = find_cuda_home() or cpp_extension.CUDA_HOME
    return cpp_extension.load_inline(
        name="ms_deform_attn_classic_baseline",
        cpp_sources=CLASSIC_DECLARATIONS,
        cuda_sources=CLASSIC_SOURCE,
        functions=["forward", "backward"],
        extra_include_paths=[str(CSRC)],
        extra_cuda_cflags=["-O3"],
    )


def make_inputs(batch, height, width, dtype, device):
    shapes = torch.tensor([[-(-height // s), -(-width // s)] for s in STRIDES])
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels = len(STRIDES)
    g = torch.Generator().manual_seed(0)
    # One query per pixel of every level, with its reference point at the pixel centre; as in a trained model,
    # each head samples a few pixels around it on every level (some points fall off the map near the borders).
    centres = []
    for h, w in shapes.tolist():
        y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([x.flatten(), y.flatten()], -1))
    centres = torch.cat(centres)  # (S, 2)
    pixels = centres.shape[0]
    offsets = torch.randn(batch, pixels, HEADS, levels, POINTS, 2, generator=g) * 2.0
    locations = centres[None, :, None, None, None, :] + offsets / shapes.flip(1)[None, None, None, :, None, :]
    weights = torch.rand(batch, pixels, HEADS, levels, POINTS, generator=g).softmax(-1)
    value = torch.randn(batch, pixels, HEADS, CHANNELS, generator=g)
    return value.to(device, dtype), shapes.to(device), starts.to(device), locations.to(device), weights.to(device)


def run(fn, inputs, backward):
    if not backward:
        with torch.no_grad():
            return fn(*inputs)
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    out.backward(torch.ones_like(out))
    return out


def median_seconds(fn, inputs, backward, repeats, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(fn, inputs, backward)  # warm-up (and lazy builds)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(fn, inputs, backward)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def implementations(device, dtype):
    """name -> callable(value, shapes, starts, locations, weights) for what runs on this device and dtype."""
    impls = {
        "reference": lambda value, shapes, starts, locations, weights: ms_deform_attn_reference(
            value, shapes, starts, locations.to(value.dtype), weights.to(value.dtype)
        )
    }
    kernels = kernels_for(device.type)
    if kernels is not None:
        impls["kernel"] = lambda *args: MSDeformAttnFunction.apply(kernels, *args)
        if device.type == "cpu":
            for isa in kernels.cpu_isas()[1:]:
                impls[f"kernel:{isa}"] = _with_cpu_isa(isa, impls["kernel"])
    if device.type == "cuda" and dtype == torch.float32:
        classic = build_classic()
        impls["classic"] = lambda *args: MSDeformAttnFunction.apply(classic, *args)
    return impls


def _with_cpu_isa(isa, fn):
    def run_with(*args):
        with cpu_isa(isa):
            return fn(*args)

    return run_with


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    kernels = kernels_for("cpu")
    isa = f", kernels for {kernels.cpu_isa()}" if kernels is not None else ""
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads{isa}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 on CPU; float32 bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default: 3 CPU, 20 CUDA)")
    parser.add_argument(
        "--impls", nargs="+", default=None, help="subset of: reference kernel kernel:avx2 kernel:baseline classic"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    default_dtypes = ["float32", "bfloat16"] if device.type == "cuda" else ["float32"]
    dtypes = [getattr(torch, d) for d in args.dtypes or default_dtypes]
    repeats = args.repeats or (20 if device.type == "cuda" else 3)

    rows = []
    for shape_name, (batch, height, width) in SHAPES.items():
        for dtype in dtypes:
            inputs = make_inputs(batch, height, width, dtype, device)
            impls = implementations(device, dtype)
            times = {
                name: [median_seconds(fn, inputs, backward, repeats, device) for backward in (False, True)]
                for name, fn in impls.items()
                if args.impls is None or name in args.impls
            }
            for name, (fwd, fwd_bwd) in times.items():
                row = [shape_name, str(dtype).replace("torch.", ""), name, f"{fwd * 1e3:.2f}", f"{fwd_bwd * 1e3:.2f}"]
                for base, column in (("reference", 0), ("reference", 1), ("classic", 1)):
                    row.append(f"{times[base][column] / (fwd, fwd_bwd)[column]:.2f}x" if base in times else "-")
                rows.append(row)
    print(f"ms_deform_attn on {device_name(device)}, torch {torch.__version__}; median of {repeats} runs")
    print(f"heads={HEADS} channels={CHANNELS} points={POINTS} strides={STRIDES}, queries = all pixels")
    headers = ["shape", "dtype", "impl", "fwd ms", "fwd+bwd ms", "fwd vs reference", "fwd+bwd vs reference"]
    headers.append("fwd+bwd vs classic")
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
