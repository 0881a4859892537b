// Bilinear sampling geometry shared by the CPU and CUDA kernels, so that the CPU tests also cover the CUDA math.
//
// It reproduces grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False) at a normalized location
// (x, y) in [0, 1] of an h x w map: pixel centres sit at (i + 0.5) / w, so the pixel coordinate is x * w - 0.5,
// and corners outside the map read as zero.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define M2F_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define M2F_HOST_DEVICE inline
#endif

namespace mask2former {

M2F_HOST_DEVICE float floor_of(float v) { return floorf(v); }
M2F_HOST_DEVICE double floor_of(double v) { return floor(v); }

// The four corners around one sampling location. Corner k: (k & 1) selects the right column, (k >> 1) the
// bottom row.
template <typename acc_t>
struct BilinearSample {
  int h, w;
  int x0, y0;    // top-left corner, -1 when left of / above the first pixel centre
  acc_t fx, fy;  // fractional position inside the cell: the weights of the right column and the bottom row
  bool touches;  // false when no corner lies on the map (the sample is zero); also false for NaN locations

  M2F_HOST_DEVICE BilinearSample(acc_t loc_x, acc_t loc_y, int height, int width) : h(height), w(width) {
    const acc_t x = loc_x * static_cast<acc_t>(width) - static_cast<acc_t>(0.5);
    const acc_t y = loc_y * static_cast<acc_t>(height) - static_cast<acc_t>(0.5);
    touches = x > static_cast<acc_t>(-1) && y > static_cast<acc_t>(-1) && x < static_cast<acc_t>(width) &&
              y < static_cast<acc_t>(height);
    // Only in-range coordinates are converted to int (far-away or NaN locations would overflow).
    const acc_t xf = touches ? floor_of(x) : static_cast<acc_t>(0);
    const acc_t yf = touches ? floor_of(y) : static_cast<acc_t>(0);
    x0 = static_cast<int>(xf);
    y0 = static_cast<int>(yf);
    fx = touches ? x - xf : static_cast<acc_t>(0);
    fy = touches ? y - yf : static_cast<acc_t>(0);
  }

  M2F_HOST_DEVICE bool valid(int k) const {
    const int cx = x0 + (k & 1);
    const int cy = y0 + (k >> 1);
    return cx >= 0 && cx < w && cy >= 0 && cy < h;
  }

  // Pixel index of corner k inside its level (row-major, y * w + x).
  M2F_HOST_DEVICE int index(int k) const { return (y0 + (k >> 1)) * w + x0 + (k & 1); }

  M2F_HOST_DEVICE acc_t weight_x(int k) const { return (k & 1) ? fx : static_cast<acc_t>(1) - fx; }
  M2F_HOST_DEVICE acc_t weight_y(int k) const { return (k >> 1) ? fy : static_cast<acc_t>(1) - fy; }

  M2F_HOST_DEVICE acc_t weight(int k) const { return weight_x(k) * weight_y(k); }

  // Derivatives of weight(k) with respect to the pixel coordinates x and y.
  M2F_HOST_DEVICE acc_t dweight_dx(int k) const { return (k & 1) ? weight_y(k) : -weight_y(k); }
  M2F_HOST_DEVICE acc_t dweight_dy(int k) const { return (k >> 1) ? weight_x(k) : -weight_x(k); }
};

}  // namespace mask2former
