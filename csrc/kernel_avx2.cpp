// AVX2 + FMA register-tile kernels. AVX2 is enabled for this translation unit only (pragma below), because
// torch.utils.cpp_extension.load applies one flag set to every source; the dispatcher in sparse_conv.cpp
// calls in here only when the CPU reports AVX2 and FMA.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "sparse_kernels.h"

#ifndef SPARSE_N8_V
#define SPARSE_N8_V 1
#endif

namespace sparse_cpu {
namespace {

inline __m256 activate(__m256 v, int act) {
  if (act >= 1) v = _mm256_max_ps(v, _mm256_setzero_ps());
  if (act == 2) v = _mm256_min_ps(v, _mm256_set1_ps(6.0f));
  return v;
}

inline float activate1(float v, int act) {
  if (act >= 1) v = v > 0.f ? v : 0.f;
  if (act == 2) v = v < 6.f ? v : 6.f;
  return v;
}

// N output channels x (8*V) pixels held in N*V ymm accumulators; bias is the initial value, the
// activation is applied on the way out.
template <int N, int V>
inline void tile(const KernelArgs& a, int64_t b, int64_t q) {
  const int64_t e0 = a.ptr[b], e1 = a.ptr[b + 1];
  const float* __restrict x = a.x + q;
  const float* __restrict w = a.vals + e0 * N;
  const int32_t* __restrict offs = a.offs + e0;
  const int64_t rows = a.cout - b * N < N ? a.cout - b * N : N;
  __m256 acc[N][V];
#pragma GCC unroll 8
  for (int n = 0; n < N; ++n) {
    const __m256 bv = _mm256_set1_ps(a.bias && n < rows ? a.bias[b * N + n] : 0.f);
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[n][v] = bv;
  }
  for (int64_t e = 0; e < e1 - e0; ++e) {
    const float* xp = x + offs[e];
    __m256 xv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_ps(xp + 8 * v);
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) {
      const __m256 wv = _mm256_broadcast_ss(w + e * N + n);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[n][v] = _mm256_fmadd_ps(wv, xv[v], acc[n][v]);
    }
  }
  // Static trip counts everywhere (rows is tested per row, not used as a bound): with a dynamic bound
  // GCC keeps the accumulators in memory and spills all of them on every entry.
#pragma GCC unroll 8
  for (int n = 0; n < N; ++n) {
    if (n >= rows) break;
    float* yp = a.y + (b * N + n) * a.y_stride + q;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(yp + 8 * v, activate(acc[n][v], a.act));
  }
}

// Fewer than 8 pixels left: one pixel at a time, the N weights of an entry in the inner loop.
template <int N>
inline void tail(const KernelArgs& a, int64_t b, int64_t q0, int64_t q1) {
  const int64_t e0 = a.ptr[b], e1 = a.ptr[b + 1];
  const int64_t rows = a.cout - b * N < N ? a.cout - b * N : N;
  for (int64_t q = q0; q < q1; ++q) {
    float acc[N];
    for (int n = 0; n < N; ++n) acc[n] = a.bias && n < rows ? a.bias[b * N + n] : 0.f;
    for (int64_t e = e0; e < e1; ++e) {
      const float xv = a.x[a.offs[e] + q];
      for (int n = 0; n < N; ++n) acc[n] += a.vals[e * N + n] * xv;
    }
    for (int n = 0; n < rows; ++n) a.y[(b * N + n) * a.y_stride + q] = activate1(acc[n], a.act);
  }
}

template <int N, int V>
void run_n(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1) {
  for (int64_t b = b0; b < b1; ++b) {
    int64_t q = q0;
    for (; q + 8 * V <= q1; q += 8 * V) tile<N, V>(a, b, q);
    if (V > 2 && q + 16 <= q1) {
      tile<N, (V > 2 ? 2 : V)>(a, b, q);
      q += 8 * (V > 2 ? 2 : V);
    }
    for (; q + 8 <= q1; q += 8) tile<N, 1>(a, b, q);
    if (q < q1) tail<N>(a, b, q, q1);
  }
}

}  // namespace

void run_avx2(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1) {
  switch (a.n) {
    case 1: run_n<1, 8>(a, b0, b1, q0, q1); break;
    case 2: run_n<2, 4>(a, b0, b1, q0, q1); break;
    case 4: run_n<4, 3>(a, b0, b1, q0, q1); break;
    case 8: run_n<8, SPARSE_N8_V>(a, b0, b1, q0, q1); break;
    default: break;
  }
}

}  // namespace sparse_cpu
#pragma GCC pop_options
