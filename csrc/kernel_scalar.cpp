// Portable kernels: the same blocking as the AVX2 path in plain C++ (the compiler may still use SSE2).
// They run on CPUs without AVX2/FMA and when a test forces them, so both paths stay correct.
#include "sparse_kernels.h"

namespace sparse_cpu {
namespace {

constexpr int kTile = 8;

inline float activate1(float v, int act) {
  if (act >= 1) v = v > 0.f ? v : 0.f;
  if (act == 2) v = v < 6.f ? v : 6.f;
  return v;
}

template <int N>
void run_n(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = a.ptr[b], e1 = a.ptr[b + 1];
    const int64_t rows = a.cout - b * N < N ? a.cout - b * N : N;
    for (int64_t q = q0; q < q1; q += kTile) {
      const int64_t len = q1 - q < kTile ? q1 - q : kTile;
      float acc[N][kTile];
      for (int n = 0; n < N; ++n)
        for (int p = 0; p < kTile; ++p) acc[n][p] = a.bias && n < rows ? a.bias[b * N + n] : 0.f;
      for (int64_t e = e0; e < e1; ++e) {
        const float* xp = a.x + a.offs[e] + q;
        const float* w = a.vals + e * N;
        if (len == kTile) {
          for (int n = 0; n < N; ++n)
            for (int p = 0; p < kTile; ++p) acc[n][p] += w[n] * xp[p];
        } else {
          for (int n = 0; n < N; ++n)
            for (int64_t p = 0; p < len; ++p) acc[n][p] += w[n] * xp[p];
        }
      }
      for (int n = 0; n < rows; ++n) {
        float* yp = a.y + (b * N + n) * a.y_stride + q;
        for (int64_t p = 0; p < len; ++p) yp[p] = activate1(acc[n][p], a.act);
      }
    }
  }
}

}  // namespace

void run_scalar(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1) {
  switch (a.n) {
    case 1: run_n<1>(a, b0, b1, q0, q1); break;
    case 2: run_n<2>(a, b0, b1, q0, q1); break;
    case 4: run_n<4>(a, b0, b1, q0, q1); break;
    case 8: run_n<8>(a, b0, b1, q0, q1); break;
    default: break;
  }
}

int64_t tile_pixels(int n) {
  switch (n) {
    case 1: return 64;
    case 2: return 32;
    case 4: return 24;
    default: return 8;
  }
}

}  // namespace sparse_cpu
