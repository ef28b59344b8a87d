"""Cost accounting: the ONE place with the cost formulas (analytic, from `SearchSpace.compressed_layers`).

Per prunable layer, after the policy (channel counts already shrunk by coupled channel pruning):

* weights   W = out * (in / groups) * kh * kw                 (the GEMM matrix, out x cols)
* macs      conv: Ho * Wo * W;  linear/attention: tokens * W   (dense MACs of the shrunk layer)
* density   d = the scheme's exact kept fraction (`PruningScheme.density`, equal to its mask's)
* effective_macs = macs * d   (what a kernel that skips every pruned weight would execute)
* kept weights K = round(W * d); bias B = out if the layer had a bias
* bits      b = weight_bits or 32 (float)
* size      ceil(K * b / 8) + index bytes + 4 * B, where the index (sparsity encoding) costs:
    dense, channel   0                     (nothing to index; channel is physical)
    unstructured     ceil(W / 8)           (one bit per weight: a bitmap beats CSR above ~6% density)
    nm               ceil(K * ceil(log2 m) / 8)  (position of each kept weight inside its group)
    block1xn         ceil((out / n) * (cols / (kh*kw)) / 8)  (one bit per 1xN block)
    pattern          ceil(kernels / 8) + ceil(kept_kernels * 3 / 8)  (connectivity bit + 3-bit pattern id)
    block_punched    ceil((out / rows) * cols / 8)            (one bit per column of each block row)

Model totals: dense_macs = sum of the dense model's prunable-layer MACs (attention score matmuls are
not counted: no scheme touches them); params = sum over layers of K + B, plus the dense model's
parameters outside prunable layers (norms, embeddings: `SearchSpace.other_params`, not shrunk, a
small over-count when channels are pruned); size_bytes = sum of layer sizes + 4 bytes per other param.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from automl.policy import CompressionPolicy
from search_spaces.schemes.base import round_half_up
from search_spaces.space import CompressedLayer, SearchSpace


@dataclass(frozen=True)
class LayerCost:
    name: str
    macs: int
    effective_macs: float
    weights: int
    kept_weights: int
    bias: int
    size_bytes: int


@dataclass(frozen=True)
class CostReport:
    dense_macs: int
    effective_macs: float
    mac_ratio: float  # effective_macs / dense_macs
    params: int
    size_bytes: int
    per_layer: dict[str, LayerCost] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        """Flat numbers (for MLflow metrics)."""
        return {"dense_macs": self.dense_macs, "effective_macs": self.effective_macs, "mac_ratio": self.mac_ratio,
                "params": self.params, "size_bytes": self.size_bytes}


def index_bytes(cl: CompressedLayer, kept: int) -> int:
    """Bytes of the sparsity encoding of one layer (see the module docstring)."""
    kh, kw = cl.kernel_size
    if cl.scheme in ("dense", "channel"):
        return 0
    if cl.scheme == "unstructured":
        return math.ceil(cl.weights / 8)
    if cl.scheme == "nm":
        return math.ceil(kept * math.ceil(math.log2(cl.m)) / 8)
    if cl.scheme == "block1xn":
        return math.ceil((cl.out_channels // cl.n) * (cl.gemm_cols // (kh * kw)) / 8)
    if cl.scheme == "pattern":
        kernels = cl.weights // 9
        kept_kernels = kept // 4
        return math.ceil(kernels / 8) + math.ceil(kept_kernels * 3 / 8)
    if cl.scheme == "block_punched":
        return math.ceil((cl.out_channels // cl.block[0]) * cl.gemm_cols / 8)
    raise ValueError(f"no index formula for scheme '{cl.scheme}'")


def layer_cost(cl: CompressedLayer, has_bias: bool) -> LayerCost:
    kept = round_half_up(cl.weights * cl.density)
    bias = cl.out_channels if has_bias else 0
    bits = cl.weight_bits or 32
    size = math.ceil(kept * bits / 8) + index_bytes(cl, kept) + 4 * bias
    return LayerCost(cl.name, cl.macs, cl.effective_macs, cl.weights, kept, bias, size)


def cost_report(space: SearchSpace, policy: CompressionPolicy) -> CostReport:
    """Analytic costs of `policy` on `space`'s model (no weights touched; ~1 ms for the zoo models)."""
    infos = {lc.layer.name: lc.layer for lc in space.layers}
    per_layer: dict[str, LayerCost] = {}
    for cl in space.compressed_layers(policy):
        info = infos[cl.name]
        dense_weights = info.out_channels * info.gemm_cols
        per_layer[cl.name] = layer_cost(cl, has_bias=info.params > dense_weights)
    dense = sum(i.macs for i in infos.values())
    eff = sum(c.effective_macs for c in per_layer.values())
    params = sum(c.kept_weights + c.bias for c in per_layer.values()) + space.other_params
    size = sum(c.size_bytes for c in per_layer.values()) + 4 * space.other_params
    return CostReport(dense, eff, eff / dense if dense else 1.0, params, size, per_layer)
