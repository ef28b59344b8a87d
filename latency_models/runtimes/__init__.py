"""Runtimes a model can be timed on; see `base.py` for the interface and how to register one."""

from latency_models.runtimes.base import (
    RUNTIMES,
    Runtime,
    RuntimeError_,
    get_runtime,
    register_runtime,
    runtime_target,
)

__all__ = ["RUNTIMES", "Runtime", "RuntimeError_", "get_runtime", "register_runtime", "runtime_target"]
