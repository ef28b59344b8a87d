// Sparse conv2d / linear ops for x86 CPUs without AVX-512, registered as torch ops (namespace sparse_cpu).
//
// Design (after XNNPACK's sparse matmul, widened to AVX2): activations stay channel-major (NCHW at batch 1
// is already that); a weight is pre-packed once into blocks of n consecutive output channels, each block a
// list of entries = (input channel, kernel tap) + n weights. The kernel keeps a register tile of pixels x n
// output channels and streams the entries. A k x k conv with stride s and padding p becomes the same
// problem by gathering the padded input into s*s phase planes: then every tap is a constant shift into one
// plane and output pixels (on a slightly wider grid) are contiguous. Threads come from torch's own pool
// (at::parallel_for); a second OpenMP runtime skewed timings about 3x in the prototype.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <vector>

#include "sparse_kernels.h"

namespace sparse_cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// "auto" picks AVX2 when the CPU has it; "scalar" forces the portable path (tests, or the
// SPARSE_CPU_FORCE_SCALAR=1 environment variable at load time).
struct IsaState {
  bool use_avx2;
  bool warned = false;
  IsaState() {
    const char* env = std::getenv("SPARSE_CPU_FORCE_SCALAR");
    use_avx2 = cpu_has_avx2() && !(env && env[0] == '1');
  }
};

IsaState& isa() {
  static IsaState state;
  return state;
}

using RunFn = void (*)(const KernelArgs&, int64_t, int64_t, int64_t, int64_t);

RunFn pick_kernel() {
  IsaState& s = isa();
  if (s.use_avx2) return run_avx2;
  if (!s.warned) {
    s.warned = true;
    std::cerr << "[sparse_cpu] AVX2/FMA kernels not in use (CPU lacks AVX2+FMA or the portable path was "
                 "forced): running the portable kernels, expect them to be slower than dense.\n";
  }
  return run_scalar;
}

std::string set_isa(const std::string& name) {
  if (name == "scalar") {
    isa().use_avx2 = false;
  } else if (name == "avx2" || name == "auto") {
    if (!cpu_has_avx2()) {
      if (name == "avx2") TORCH_CHECK(false, "sparse_cpu: this CPU lacks AVX2/FMA; use set_isa('scalar')");
      isa().use_avx2 = false;
    } else {
      isa().use_avx2 = true;
    }
  } else {
    TORCH_CHECK(false, "sparse_cpu.set_isa: unknown ISA '", name, "'; expected 'auto', 'avx2' or 'scalar'");
  }
  return isa().use_avx2 ? "avx2" : "scalar";
}

std::string current_isa() { return isa().use_avx2 ? "avx2" : "scalar"; }

// Pack a dense (masked) weight (cout, cin, kh, kw) or (cout, cin) into blocks of n output channels.
// Returns (idx int32 [entries] = ic*kh*kw + tap, vals float [entries, n], ptr int64 [blocks + 1]).
// An entry is stored when any of the block's n weights at that (ic, tap) is non-zero.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pack(const at::Tensor& weight, int64_t n) {
  TORCH_CHECK(n == 1 || n == 2 || n == 4 || n == 8, "sparse_cpu.pack: block height n must be 1, 2, 4 or 8, got ", n);
  TORCH_CHECK(weight.dim() == 2 || weight.dim() == 4,
              "sparse_cpu.pack: weight must be (cout, cin) or (cout, cin, kh, kw), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "sparse_cpu.pack: only float32 weights are supported");
  const at::Tensor w = weight.contiguous().reshape({weight.size(0), -1});
  const int64_t cout = w.size(0), k = w.size(1);
  const int64_t nblocks = (cout + n - 1) / n;
  const float* wp = w.data_ptr<float>();
  std::vector<int32_t> idx;
  std::vector<float> vals;
  std::vector<int64_t> ptr(nblocks + 1, 0);
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int64_t c = 0; c < k; ++c) {
      bool any = false;
      for (int64_t r = 0; r < n && b * n + r < cout; ++r) any |= wp[(b * n + r) * k + c] != 0.f;
      if (!any) continue;
      idx.push_back(static_cast<int32_t>(c));
      for (int64_t r = 0; r < n; ++r) vals.push_back(b * n + r < cout ? wp[(b * n + r) * k + c] : 0.f);
    }
    ptr[b + 1] = static_cast<int64_t>(idx.size());
  }
  const int64_t ne = static_cast<int64_t>(idx.size());
  at::Tensor idx_t = at::empty({ne}, at::kInt);
  at::Tensor vals_t = at::empty({ne, n}, at::kFloat);
  at::Tensor ptr_t = at::empty({nblocks + 1}, at::kLong);
  if (ne) std::memcpy(idx_t.data_ptr<int32_t>(), idx.data(), ne * sizeof(int32_t));
  if (ne) std::memcpy(vals_t.data_ptr<float>(), vals.data(), ne * n * sizeof(float));
  std::memcpy(ptr_t.data_ptr<int64_t>(), ptr.data(), (nblocks + 1) * sizeof(int64_t));
  return {idx_t, vals_t, ptr_t};
}

void check_packed(const at::Tensor& idx, const at::Tensor& vals, const at::Tensor& ptr, int64_t cout, int64_t n) {
  TORCH_CHECK(n == 1 || n == 2 || n == 4 || n == 8, "sparse_cpu: block height n must be 1, 2, 4 or 8, got ", n);
  TORCH_CHECK(idx.scalar_type() == at::kInt && vals.scalar_type() == at::kFloat && ptr.scalar_type() == at::kLong,
              "sparse_cpu: packed tensors must be (int32 idx, float32 vals, int64 ptr): use sparse_cpu.pack");
  TORCH_CHECK(ptr.numel() == (cout + n - 1) / n + 1, "sparse_cpu: ptr has ", ptr.numel(),
              " entries but out_channels=", cout, " and n=", n, " need ", (cout + n - 1) / n + 1);
  TORCH_CHECK(vals.numel() == idx.numel() * n, "sparse_cpu: vals must hold n weights per idx entry");
}

// The bias as a contiguous float tensor (undefined when there is none); read-only by the kernels.
at::Tensor bias_tensor(const c10::optional<at::Tensor>& bias, int64_t cout) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  TORCH_CHECK(bias->numel() == cout, "sparse_cpu: bias has ", bias->numel(), " values, expected ", cout);
  return bias->to(at::kFloat).contiguous();
}

const float* bias_ptr(const at::Tensor& b) { return b.defined() ? b.data_ptr<float>() : nullptr; }

// Per-thread scratch that grows and is reused: allocating the padded input and the wide output afresh on
// every call costs page faults (large blocks come from mmap) that rival the sparse work at high sparsity.
struct Scratch {
  std::vector<float> buf, tmp;
  std::vector<int32_t> offs;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Split blocks x pixel tiles between torch's threads; chunks are whole register tiles.
void run_parallel(const KernelArgs& a, int64_t nblocks, int64_t q_total) {
  const RunFn fn = pick_kernel();
  const int64_t tile = tile_pixels(a.n);
  const int64_t threads = at::get_num_threads();
  int64_t chunks = 1;
  if (threads > 1 && nblocks < 4 * threads) {
    chunks = std::max<int64_t>(1, std::min<int64_t>((4 * threads + nblocks - 1) / nblocks, q_total / (2 * tile)));
  }
  const int64_t q_chunk = ((q_total + chunks - 1) / chunks + tile - 1) / tile * tile;
  chunks = q_chunk > 0 ? (q_total + q_chunk - 1) / q_chunk : 1;
  at::parallel_for(0, nblocks * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / chunks, c = i % chunks;
      const int64_t q0 = c * q_chunk, q1 = std::min(q_total, q0 + q_chunk);
      if (q0 < q1) fn(a, b, b + 1, q0, q1);
    }
  });
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& idx, const at::Tensor& vals, const at::Tensor& ptr,
                  const c10::optional<at::Tensor>& bias, int64_t cout, int64_t kh, int64_t kw, int64_t stride,
                  int64_t padding, int64_t n, int64_t act) {
  TORCH_CHECK(input.dim() == 4, "sparse_cpu.conv2d: input must be NCHW, got ", input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat, "sparse_cpu.conv2d: only float32 input is supported");
  TORCH_CHECK(stride >= 1 && padding >= 0 && kh >= 1 && kw >= 1, "sparse_cpu.conv2d: bad geometry");
  TORCH_CHECK(act >= 0 && act <= 2, "sparse_cpu.conv2d: act must be 0 (none), 1 (relu) or 2 (relu6)");
  check_packed(idx, vals, ptr, cout, n);
  const at::Tensor x = input.contiguous();
  const int64_t batch = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hp = h + 2 * padding, wp = w + 2 * padding;
  TORCH_CHECK(hp >= kh && wp >= kw, "sparse_cpu.conv2d: input ", h, "x", w, " smaller than the kernel");
  const int64_t hout = (hp - kh) / stride + 1, wout = (wp - kw) / stride + 1;
  const int64_t nblocks = (cout + n - 1) / n, ne = idx.numel();
  const at::Tensor bias_c = bias_tensor(bias, cout);
  at::Tensor out = at::empty({batch, cout, hout, wout}, x.options());
  const int32_t* ip = idx.data_ptr<int32_t>();
  if (ne) {
    const int32_t max_idx = *std::max_element(ip, ip + ne);
    TORCH_CHECK(max_idx < cin * kh * kw, "sparse_cpu.conv2d: packed weight refers to input channel ",
                max_idx / (kh * kw), " but the input has ", cin, " channels");
  }
  Scratch& sc = scratch();
  std::vector<int32_t>& offs = sc.offs;
  offs.resize(ne);
  KernelArgs a{nullptr, offs.data(), vals.data_ptr<float>(), ptr.data_ptr<int64_t>(), bias_ptr(bias_c),
               nullptr, 0, cout, static_cast<int>(n), static_cast<int>(act)};

  if (kh == 1 && kw == 1 && stride == 1 && padding == 0) {
    // Pointwise: the input already is channel-major; no copy at all.
    const int64_t q = h * w;
    TORCH_CHECK(cin * q < (int64_t{1} << 31), "sparse_cpu.conv2d: input too large for 32-bit offsets");
    for (int64_t e = 0; e < ne; ++e) offs[e] = static_cast<int32_t>(ip[e] * q);
    for (int64_t bi = 0; bi < batch; ++bi) {
      a.x = x.data_ptr<float>() + bi * cin * q;
      a.y = out.data_ptr<float>() + bi * cout * q;
      a.y_stride = q;
      run_parallel(a, nblocks, q);
    }
    return out;
  }

  // General case: gather the zero-padded input into (up to) s*s phase planes of hq x wq, so tap (i, j) of input
  // channel c is plane (c, i % s, j % s) shifted by (i / s) rows and (j / s) columns, and output pixel
  // (oh, ow) sits at oh * wq + ow on a grid wq wide (columns >= wout are computed and dropped).
  const int64_t s = stride, hq = (hp + s - 1) / s, wq = (wp + s - 1) / s, plane = hq * wq;
  const int64_t q = hout * wq, q_pad = (q + 7) / 8 * 8;
  // Only the phase planes some tap reads are gathered (a 1x1 stride-2 conv needs one of the four).
  const int64_t kk = kh * kw;
  std::vector<int64_t> phase_slot(s * s, -1);
  int64_t nphase = 0;
  for (int64_t t = 0; t < kk; ++t) {
    const int64_t ph = ((t / kw) % s) * s + (t % kw) % s;
    if (phase_slot[ph] < 0) phase_slot[ph] = nphase++;
  }
  const int64_t buf_len = cin * nphase * plane + (q_pad - q) + wq + 8;
  TORCH_CHECK(buf_len < (int64_t{1} << 31), "sparse_cpu.conv2d: input too large for 32-bit offsets");
  // Offsets are recomputed per call (they depend on the input size) but without integer division per
  // entry, which cost more than the sparse FMAs on small layers: a per-tap table, and the channel index
  // from a rounded floating-point reciprocal (exact: the fractional parts are multiples of 1 / (kh * kw)).
  std::vector<int64_t> tap_off(kk);
  for (int64_t t = 0; t < kk; ++t) {
    const int64_t i = t / kw, j = t % kw;
    tap_off[t] = phase_slot[(i % s) * s + (j % s)] * plane + (i / s) * wq + (j / s);
  }
  const double inv_kk = 1.0 / static_cast<double>(kk);
  const int64_t chan_stride = nphase * plane;
  for (int64_t e = 0; e < ne; ++e) {
    const int64_t c = static_cast<int64_t>((ip[e] + 0.5) * inv_kk);
    offs[e] = static_cast<int32_t>(c * chan_stride + tap_off[ip[e] - c * kk]);
  }
  const int64_t gathered = cin * nphase * plane;
  if (static_cast<int64_t>(sc.buf.size()) < buf_len) sc.buf.resize(buf_len);
  if (static_cast<int64_t>(sc.tmp.size()) < cout * q_pad) sc.tmp.resize(cout * q_pad);
  float* bp = sc.buf.data();
  std::memset(bp + gathered, 0, (buf_len - gathered) * sizeof(float));  // the tail read by garbage pixels
  const int64_t grain = std::max<int64_t>(1, 16384 / (nphase * plane));
  for (int64_t bi = 0; bi < batch; ++bi) {
    const float* xb = x.data_ptr<float>() + bi * cin * h * w;
    at::parallel_for(0, cin, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t pa = 0; pa < s; ++pa) {
          for (int64_t pb = 0; pb < s; ++pb) {
            if (phase_slot[pa * s + pb] < 0) continue;
            float* dst = bp + (c * nphase + phase_slot[pa * s + pb]) * plane;
            for (int64_t r = 0; r < hq; ++r) {
              const int64_t src_r = r * s + pa - padding;
              float* drow = dst + r * wq;
              if (src_r < 0 || src_r >= h) {
                std::memset(drow, 0, wq * sizeof(float));
                continue;
              }
              const float* srow = xb + (c * h + src_r) * w;
              if (s == 1) {
                std::memset(drow, 0, padding * sizeof(float));
                std::memcpy(drow + padding, srow, w * sizeof(float));
                std::memset(drow + padding + w, 0, (wq - padding - w) * sizeof(float));
              } else {
                // columns whose source col * s + pb - padding lies inside the row; zeros either side
                const int64_t lo = std::min<int64_t>(wq, std::max<int64_t>(0, (padding - pb + s - 1) / s));
                const int64_t last = w - 1 + padding - pb;  // floor division: a negative value means no column
                const int64_t hi = last < 0 ? lo : std::max<int64_t>(lo, std::min<int64_t>(wq, last / s + 1));
                std::fill(drow, drow + lo, 0.f);
                const float* src = srow + (lo * s + pb - padding);
                for (int64_t col = lo; col < hi; ++col) drow[col] = src[(col - lo) * s];
                std::fill(drow + hi, drow + wq, 0.f);
              }
            }
          }
        }
      }
    });
    a.x = bp;
    a.y = sc.tmp.data();
    a.y_stride = q_pad;
    run_parallel(a, nblocks, q_pad);
    float* ob = out.data_ptr<float>() + bi * cout * hout * wout;
    const float* tp = sc.tmp.data();
    for (int64_t c = 0; c < cout; ++c)
      for (int64_t r = 0; r < hout; ++r)
        std::memcpy(ob + (c * hout + r) * wout, tp + c * q_pad + r * wq, wout * sizeof(float));
  }
  return out;
}

// Linear: rows of the input (tokens, batch) play the role of pixels. One row needs no copy; more rows are
// transposed to channel-major and back.
at::Tensor linear(const at::Tensor& input, const at::Tensor& idx, const at::Tensor& vals, const at::Tensor& ptr,
                  const c10::optional<at::Tensor>& bias, int64_t cout, int64_t n, int64_t act) {
  TORCH_CHECK(input.dim() >= 1, "sparse_cpu.linear: input must have a feature dimension");
  TORCH_CHECK(input.scalar_type() == at::kFloat, "sparse_cpu.linear: only float32 input is supported");
  check_packed(idx, vals, ptr, cout, n);
  const int64_t cin = input.size(-1);
  const int64_t m = cin ? input.numel() / cin : 0;
  const int64_t ne = idx.numel();
  const int32_t* ip = idx.data_ptr<int32_t>();
  if (ne) {
    TORCH_CHECK(*std::max_element(ip, ip + ne) < cin, "sparse_cpu.linear: packed weight has more input "
                "features than the input's ", cin);
  }
  const at::Tensor xt = input.reshape({m, cin}).t().contiguous();  // (cin, m)
  at::Tensor yt = at::empty({cout, m}, input.options());
  const at::Tensor bias_c = bias_tensor(bias, cout);
  std::vector<int32_t>& offs = scratch().offs;
  offs.resize(ne);
  for (int64_t e = 0; e < ne; ++e) offs[e] = static_cast<int32_t>(ip[e] * m);
  KernelArgs a{xt.data_ptr<float>(), offs.data(), vals.data_ptr<float>(), ptr.data_ptr<int64_t>(),
               bias_ptr(bias_c), yt.data_ptr<float>(), m, cout, static_cast<int>(n), static_cast<int>(act)};
  if (m) run_parallel(a, (cout + n - 1) / n, m);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = cout;
  return yt.t().contiguous().reshape(shape);
}

}  // namespace
}  // namespace sparse_cpu

TORCH_LIBRARY(sparse_cpu, m) {
  m.def("pack(Tensor weight, int n) -> (Tensor, Tensor, Tensor)");
  m.def("conv2d(Tensor x, Tensor idx, Tensor vals, Tensor ptr, Tensor? bias, int out_channels, int kernel_h, "
        "int kernel_w, int stride, int padding, int n, int act) -> Tensor");
  m.def("linear(Tensor x, Tensor idx, Tensor vals, Tensor ptr, Tensor? bias, int out_features, int n, int act) "
        "-> Tensor");
  m.def("set_isa(str name) -> str", &sparse_cpu::set_isa);
  m.def("isa() -> str", &sparse_cpu::current_isa);
}

TORCH_LIBRARY_IMPL(sparse_cpu, CPU, m) {
  m.impl("pack", &sparse_cpu::pack);
  m.impl("conv2d", &sparse_cpu::conv2d);
  m.impl("linear", &sparse_cpu::linear);
}
