"""Latency models: runtimes, honest measurement, an on-device agent, a kernel-level predictor, device profiles.

The pipeline reads like nn-Meter's folders: `runtimes` (what runs a model) -> `measure` / `agent` (timing
it honestly, locally or on a device) -> `kernels` (the fused op groups a runtime executes) ->
`predictors` (one regressor per kernel type) -> `profile` (a versioned, machine-bound artifact).

Names are imported lazily (PEP 562) so the timing subprocess, which imports this package, does not pay
for torch or scikit-learn unless the runtime it times needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LatencyEstimate": "latency_models.estimate",
    "device_fingerprint": "latency_models.estimate",
    "device_info": "latency_models.estimate",
    "summarize": "latency_models.estimate",
    "Runtime": "latency_models.runtimes.base",
    "RUNTIMES": "latency_models.runtimes.base",
    "RuntimeError_": "latency_models.runtimes.base",
    "get_runtime": "latency_models.runtimes.base",
    "register_runtime": "latency_models.runtimes.base",
    "measure_latency": "latency_models.measure",
    "compare": "latency_models.measure",
    "MeasurementError": "latency_models.measure",
    "AgentClient": "latency_models.agent",
    "AgentError": "latency_models.agent",
    "make_server": "latency_models.agent",
    "Kernel": "latency_models.kernels",
    "kernels_for_model": "latency_models.kernels",
    "LatencyPredictor": "latency_models.predictors",
    "KernelPredictor": "latency_models.predictors",
    "DeviceProfile": "latency_models.profile",
    "ProfileError": "latency_models.profile",
    "PairStore": "latency_models.profile",
    "build_profile": "latency_models.profile",
    "get_or_build_profile": "latency_models.profile",
    "predict_policy": "latency_models.profile",
    "predict_model": "latency_models.profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'latency_models' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
