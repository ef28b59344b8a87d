"""torch eager and torch.compile on CPU (fp32). The artifact is the pickled eval-mode module.

Pickled modules only travel between processes of the same code base (the timing subprocess, a device
agent running this package); onnxruntime is the runtime for remote devices.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from latency_models.runtimes.base import Runtime, RuntimeError_


class TorchEagerRuntime(Runtime):
    name = "torch-eager"
    precisions = ("fp32",)
    suffix = ".pt"

    def export(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        import torch

        self.check_precision(precision)
        buf = io.BytesIO()
        torch.save(model.eval(), buf)
        return buf.getvalue()

    def _module(self, artifact: bytes, threads: int):
        import torch

        torch.set_num_threads(threads)
        try:
            model = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RuntimeError_(f"{self.name} cannot unpickle this artifact: {exc}") from exc
        return model.eval()

    def load(self, artifact: bytes, threads: int = 1) -> Callable[[Any], Any]:
        import torch

        model = self._module(artifact, threads)

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return run

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__}


class TorchCompileRuntime(TorchEagerRuntime):
    """torch.compile (inductor); compilation happens on the first (warm-up) calls, never in the timed ones."""

    name = "torch-compile"

    def load(self, artifact: bytes, threads: int = 1) -> Callable[[Any], Any]:
        import torch

        model = torch.compile(self._module(artifact, threads), dynamic=False)

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return run
