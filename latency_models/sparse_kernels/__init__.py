"""Sparse CPU kernels (issue 11): AVX2 1xN-block and unstructured sparse conv/linear ops for torch.

`load()` builds (cached) and registers ``torch.ops.sparse_cpu``; `SparseConv2d` / `SparseLinear` run a
masked layer on them; `convert_model` swaps a masked model's layers where the kernels pay; the runtime
``sparse-cpu`` (`runtime.SparseCpuRuntime`) times and runs such models.
"""

from .build import BuildError, build_dir, load
from .modules import (
    MIN_SPARSITY,
    SparseConv2d,
    SparseLinear,
    block_fill,
    choose_block,
    convert_model,
    sparse_layers,
)

__all__ = ["BuildError", "MIN_SPARSITY", "SparseConv2d", "SparseLinear", "block_fill", "build_dir",
           "choose_block", "convert_model", "load", "sparse_layers"]
