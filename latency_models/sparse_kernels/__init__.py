"""Sparse CPU kernels (issue 11): AVX2 1xN-block and unstructured sparse conv/linear ops for torch.

`load()` builds (cached) and registers ``torch.ops.sparse_cpu``; `SparseConv2d` / `SparseLinear` run a
masked layer on them; `convert_model` swaps a masked model's layers where the kernels pay; the runtime
``sparse-cpu`` (`runtime.SparseCpuRuntime`) times and runs such models.

Names are imported lazily so ``python -m latency_models.sparse_kernels.build`` runs cleanly and importing
the package costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildError": "build", "build_dir": "build", "load": "build",
    "MIN_SPARSITY": "modules", "SparseConv2d": "modules", "SparseLinear": "modules", "block_fill": "modules",
    "choose_block": "modules", "convert_model": "modules", "plan_layer": "modules", "sparse_layers": "modules",
    "SparseCpuRuntime": "runtime",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latency_models.sparse_kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
