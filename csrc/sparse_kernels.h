// Plain C++ interface between the torch-facing op (sparse_conv.cpp) and the ISA-specific kernels.
// It includes no torch header on purpose: the AVX2 translation unit is compiled with AVX2/FMA enabled,
// and any inline torch code it pulled in would be compiled for AVX2 too and could be picked by the linker
// for the portable path (an ODR trap that crashes CPUs without AVX2).
#pragma once
#include <cstdint>

namespace sparse_cpu {

// One sparse "matrix x channel-major activations" problem. Output rows are grouped in blocks of n
// consecutive output channels; block b owns stored entries [ptr[b], ptr[b+1]). Entry e reads input
// row x + offs[e] (an input channel, a kernel tap already turned into a shift) and holds n weights,
// one per output channel of the block, at vals[e*n .. e*n+n).
struct KernelArgs {
  const float* x;        // activations; pixel q of entry e is x[offs[e] + q]
  const int32_t* offs;   // per entry input offset (floats)
  const float* vals;     // per entry n weights
  const int64_t* ptr;    // n_blocks + 1 entry pointers
  const float* bias;     // cout values, or null when the layer has none
  float* y;              // output rows; channel c, pixel q at y[c * y_stride + q]
  int64_t y_stride;
  int64_t cout;          // rows >= cout (padding of the last block) are not stored
  int n;                 // block height: 1, 2, 4 or 8
  int act;               // 0 none, 1 ReLU, 2 ReLU6 (fused into the store)
};

// Computes output blocks [b0, b1) for pixels [q0, q1). Reads only x[offs[e] + q] for q in [q0, q1).
void run_avx2(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1);
void run_scalar(const KernelArgs& a, int64_t b0, int64_t b1, int64_t q0, int64_t q1);

// Pixels per register tile for block height n (the unit in which work is split between threads).
int64_t tile_pixels(int n);

}  // namespace sparse_cpu
