"""Runtime ``sparse-cpu``: torch + the sparse_cpu kernels, so latency profiles learn where sparse beats dense.

`export` converts the (masked, eval-mode) model with `convert_model` and pickles it; `load` compiles it with
torch.compile so per-op overhead does not swamp small layers (whether that pays was measured: see
docs/benchmarks.md, "Sparse CPU kernels (issue 11)"; `COMPILE` records the choice). Layers the kernels do
not pay for stay dense and run on torch's own kernels inside the same compiled graph.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from latency_models.runtimes.base import Runtime, RuntimeError_

#: torch.compile the converted model in `load` (see module docstring).
COMPILE = True


class SparseCpuRuntime(Runtime):
    name = "sparse-cpu"
    precisions = ("fp32",)
    suffix = ".pt"
    compile = COMPILE
    structured_sparsity = True

    def export(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        import torch

        from .modules import convert_model

        self.check_precision(precision)
        try:
            converted = convert_model(model)
        except Exception as exc:
            raise RuntimeError_(f"{self.name}: cannot convert this model to sparse kernels: {exc}") from exc
        buf = io.BytesIO()
        torch.save(converted, buf)
        return buf.getvalue()

    def load(self, artifact: bytes, threads: int = 1) -> Callable[[Any], Any]:
        import torch

        from .build import load as load_ops

        load_ops()
        torch.set_num_threads(threads)
        try:
            model = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=False).eval()
        except Exception as exc:
            raise RuntimeError_(f"{self.name} cannot unpickle this artifact: {exc}") from exc
        if self.compile:
            model = torch.compile(model, dynamic=False)

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x) if not isinstance(x, torch.Tensor) else x)

        return run

    def versions(self) -> dict[str, str]:
        import torch

        from .build import load as load_ops

        load_ops()
        return {"torch": torch.__version__, "sparse_cpu_isa": torch.ops.sparse_cpu.isa()}


class SparseCpuEagerRuntime(SparseCpuRuntime):
    """The same without torch.compile (for the compile-or-not measurement; not registered)."""

    name = "sparse-cpu-eager"
    compile = False
