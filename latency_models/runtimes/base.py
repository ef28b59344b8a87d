"""The runtime interface: how a model becomes something a timer can call, on the runtime that will run it.

A latency figure is only true for one runtime (GUIDE §2: onnxruntime is ~3x faster than torch eager at
batch 1 here), so every measurement goes through a `Runtime`. The interface is two steps so the
expensive, torch-side work (export, quantization) happens in the caller while the timing happens in a
clean process or on a remote device agent:

- ``export(model, example_input, precision) -> bytes``: an artifact (ONNX bytes, a pickled module, ...)
  that can travel to another process or machine;
- ``load(artifact, threads) -> Callable[[np.ndarray], Any]``: a session that runs one inference; it is
  called in the timing process, so it must pin its own threads.

To add a runtime (e.g. the kernels helper's "sparse-cpu"), subclass `Runtime` in any importable module
and call ``register_runtime("name", "package.module:ClassName")``; the registry stores import paths,
not classes, so a timing subprocess can import the runtime by name without importing the caller's code.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any


class RuntimeError_(RuntimeError):
    """A runtime cannot export or run a model; the message says which runtime and what to change."""


class Runtime(ABC):
    """One way of running a model. Subclasses set `name`, `precisions` and fill in `export` / `load`."""

    name: str = "?"
    precisions: tuple[str, ...] = ("fp32",)
    #: artifact file suffix, for people who save an artifact to disk
    suffix: str = ".bin"
    #: the runtime has kernels for block-structured sparse weights (1xN blocks), so its device profile
    #: samples structured masks and learns the block height (`latency_models.profile`)
    structured_sparsity: bool = False
    #: precisions at which the runtime rewrites convs into a blocked layout (see `layout_block`)
    blocked_layout_precisions: tuple[str, ...] = ()

    @abstractmethod
    def export(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """Turn an eval-mode torch module into a transportable artifact for this runtime."""

    @abstractmethod
    def load(self, artifact: bytes, threads: int = 1) -> Callable[[Any], Any]:
        """Build a session from an artifact; the callable runs one inference on a numpy input."""

    def export_kernel(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """Export one of the profiler's tiny single-kernel modules (hundreds per profile).

        Defaults to `export`; a runtime whose deployment exporter is slow (onnxruntime's dynamo path:
        ~3 s a model) overrides it with a faster one that yields the same executed kernel for such a
        one-kernel module.
        """
        return self.export(model, example_input, precision)

    def export_network(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """Export one of the profiler's whole random networks (the context calibration, dozens per profile).

        Its executed graph must be the one `export` ships for the same model: the context fit learns how
        kernels cost inside a network from these. Defaults to `export`; onnxruntime overrides it with its
        fast exporter plus the shipped int8 quantizer (its fast quantizer left a third to two thirds of a
        network's convs in fp32, with quantize / dequantize pairs between them).
        """
        return self.export(model, example_input, precision)

    # ------------------------------------------------------------------ conveniences
    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise RuntimeError_(f"runtime '{self.name}' has no {precision} path; "
                                f"it supports {', '.join(self.precisions)}")

    def prepare(self, model: Any, example_input: Any, precision: str = "fp32",
                threads: int = 1) -> Callable[[Any], Any]:
        """Export and load in this process (no isolation): for quick checks and tests."""
        self.check_precision(precision)
        return self.load(self.export(model, example_input, precision), threads)

    def versions(self) -> dict[str, str]:
        """Library versions that change this runtime's speed (part of a profile's identity)."""
        return {}

    def layout_block(self, precision: str, cpu_flags: Sequence[str], machine: str) -> int:
        """The channel block of the blocked layout this runtime rewrites convs into at `precision` on a
        CPU with these flags (`latency_models.layouts`: its reorders and fused adds are then part of a
        model's kernels), 0 when it runs every kernel in the model's own layout."""
        return 0


# name -> "module:Class". Import paths, so a subprocess or device agent resolves them by name alone.
RUNTIMES: dict[str, str] = {
    "onnxruntime": "latency_models.runtimes.ort:OnnxRuntime",
    "torch-eager": "latency_models.runtimes.torch_rt:TorchEagerRuntime",
    "torch-compile": "latency_models.runtimes.torch_rt:TorchCompileRuntime",
    "sparse-cpu": "latency_models.sparse_kernels.runtime:SparseCpuRuntime",
}


def register_runtime(name: str, target: str) -> None:
    """Register a runtime under `name` as ``"package.module:ClassName"`` (imported lazily)."""
    if ":" not in target:
        raise ValueError(f"runtime target must be 'package.module:ClassName', got {target!r}")
    RUNTIMES[name] = target


def get_runtime(name: str | Runtime) -> Runtime:
    """The runtime registered under `name` (an instance passes through)."""
    if isinstance(name, Runtime):
        return name
    target = RUNTIMES.get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        raise RuntimeError_(f"unknown runtime '{name}'; registered: {', '.join(RUNTIMES)} "
                            "(add one with latency_models.register_runtime)")
    module_name, _, cls_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError_(f"runtime '{name}' ({target}) cannot be imported: {exc}") from exc
    return cls()


def runtime_target(name: str) -> str:
    """The import path of a registered runtime (what a timing subprocess needs)."""
    get_runtime(name)  # validates
    return RUNTIMES.get(name, name)
