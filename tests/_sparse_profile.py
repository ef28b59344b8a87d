"""Device profiles for tests, fitted on synthetic recorded samples (no live timing).

The kernel configurations are the profiler's own (`latency_models.sampling.random_kernel`, with the
structured masks of a sparse-cpu profile); each one's latency comes from a law instead of a timer, so
tests are fast and deterministic. The law follows the per-layer medians measured for the sparse kernels
(docs/benchmarks.md, "Sparse CPU kernels (issue 11)", 28 px, 1 thread): a conv/linear costs its dense time
(fixed cost + MACs at ~24 GMAC/s) unless the runtime swaps it onto a sparse kernel, which happens, as in
`convert_model`, when its sparsity reaches `MIN_SPARSITY` for the kernel's block height N; a swapped layer
costs dense x (a + b x density), with (a, b) fitted to the measured speedups (N=4: 2.2x / 3.4x / 5.4x at
50 / 75 / 90 %, N=1: 1.1x / 2.0x / 3.6x; N=2 halfway). On "onnxruntime" nothing is swapped: masks never
pay, only fewer channels do.
"""

from __future__ import annotations

import random

from latency_models import DeviceProfile
from latency_models.estimate import device_fingerprint, device_info
from latency_models.kernels import Kernel, kernel_block
from latency_models.predictors import Sample
from latency_models.profile import PROFILE_VERSION, STRUCTURED_PROFILE_VERSION
from latency_models.sampling import random_kernel, zoo_prior
from latency_models.sparse_kernels.modules import MIN_SPARSITY

MACS_PER_MS = 2.4e7
SPARSE_COST = {4: (0.118, 0.674), 2: (0.12, 1.1), 1: (0.12, 1.58)}
MIX = (("conv", 0.6), ("linear", 0.2), ("eltwise", 0.1), ("pool", 0.1))


def sparse_kernel_n(block: float) -> int:
    """The block height convert_model runs a weight with 1x`block` zeros on (1x8 blocks are 1x4 blocks)."""
    return 4 if block % 4 == 0 else 2 if block == 2 else 1


def law_ms(k: Kernel, sparse_runtime: bool) -> float:
    p = k.params
    if k.type in ("conv", "linear"):
        if k.type == "conv":
            cin, cout, ks, s, h, w = p[:6]
            macs, density = cin * cout * ks * ks * -(-h // s) * -(-w // s), p[8]
        else:
            macs, density = p[0] * p[1] * p[2], p[4]
        dense = 0.004 + macs / MACS_PER_MS
        n = sparse_kernel_n(kernel_block(k))
        if sparse_runtime and 1.0 - density >= MIN_SPARSITY[n]:
            a, b = SPARSE_COST[n]
            return 0.006 + (dense - 0.004) * (a + b * density)
        return dense
    return 0.001 + p[0] * 2e-7


def synthetic_samples(runtime: str, n: int = 700, seed: int = 0) -> list[Sample]:
    sparse_runtime = runtime == "sparse-cpu"
    rng = random.Random(seed)
    prior = zoo_prior()
    types, weights = zip(*MIX, strict=True)
    out = []
    for _ in range(n):
        k = random_kernel(rng, prior, [rng.choices(types, weights)[0]], structured=sparse_runtime)
        out.append(Sample(k, law_ms(k, sparse_runtime)))
    return out


def synthetic_profile(runtime: str = "sparse-cpu", n: int = 700, seed: int = 0) -> DeviceProfile:
    """A profile stamped as measured here, on `runtime`, from `synthetic_samples`."""
    info = device_info()
    return DeviceProfile(device=info["device"], runtime=runtime, batch=1, threads=1, precision="fp32",
                         versions=info["versions"], fingerprint=device_fingerprint(info),
                         samples=synthetic_samples(runtime, n, seed), overhead_ms=0.02,
                         format_version=STRUCTURED_PROFILE_VERSION if runtime == "sparse-cpu" else PROFILE_VERSION
                         ).fit()
