"""What a latency figure is: a number tied to the device, runtime, batch, threads and precision it holds for.

`LatencyEstimate` is plain data so it crosses process, HTTP and MLflow boundaries unchanged, and it says
whether it was *predicted* or *measured*: every figure the project reports carries that.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any

SOURCES = ("predicted", "measured")


@dataclass(frozen=True)
class LatencyEstimate:
    """Median latency of one inference of `batch` samples. std_ms is robust (IQR / 1.349) when measured,
    the predictor's uncertainty when predicted."""

    ms: float
    std_ms: float
    source: str
    device: str
    runtime: str
    batch: int = 1
    threads: int = 1
    precision: str = "fp32"
    p25_ms: float | None = None
    p75_ms: float | None = None
    repeats: int | None = None
    #: 10th percentile: the uncontended latency when other jobs share the cores (what profiles of versions
    #: 1-2 fitted; version 3 profiles fit the median, `ms`)
    p10_ms: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyEstimate:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __str__(self) -> str:
        iqr = f" [IQR {self.p25_ms:.3f}-{self.p75_ms:.3f}]" if self.p25_ms is not None else ""
        return (f"{self.ms:.3f} ms ±{self.std_ms:.3f}{iqr} ({self.source}; {self.runtime} {self.precision}, "
                f"batch {self.batch}, {self.threads} thread{'s' if self.threads != 1 else ''}, {self.device})")


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Median, quartiles and a robust std of per-call times; the median resists the shared machine's spikes."""
    if not times_ms:
        raise ValueError("no timings to summarize")
    ordered = sorted(times_ms)
    if len(ordered) >= 4:
        q = statistics.quantiles(ordered, n=4, method="inclusive")
        p25, med, p75 = q[0], q[1], q[2]
    else:
        p25 = med = p75 = statistics.median(ordered)
    return {"median": med, "p25": p25, "p75": p75, "std": (p75 - p25) / 1.349, "n": len(ordered),
            "p10": low_quantile(ordered)}


def low_quantile(times_ms: list[float], q: float = 0.10) -> float:
    """The q-quantile of the timings: on a shared machine a 2 ms call is often preempted for a whole
    scheduler slice (~20 ms, seen in onnxruntime's node profile here), which moves even the median;
    the fastest decile estimates what the kernel costs when it has the core."""
    ordered = sorted(times_ms)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------------------ the device
def cpu_model() -> str:
    """The CPU's model name (what makes a profile from one machine wrong on another)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_flags() -> list[str]:
    """SIMD features that change which kernels a runtime picks (AVX2 vs AVX-512/VNNI)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "neon", "asimd")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def device_name() -> str:
    return f"{cpu_model()} x{os.cpu_count() or 1}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose kernels are timed (import errors are recorded, not raised)."""
    out = {"python": platform.python_version()}
    for name in ("onnxruntime", "torch", "onnx"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = "absent"
    return out


def device_info() -> dict[str, Any]:
    return {"device": device_name(), "cpu_model": cpu_model(), "cores": os.cpu_count() or 1,
            "cpu_flags": cpu_flags(), "machine": platform.machine(), "versions": library_versions()}


def device_fingerprint(info: dict[str, Any] | None = None) -> str:
    """A short, filesystem-safe id: cpu model + core count + SIMD flags + library versions."""
    info = info or device_info()
    key = repr((info["cpu_model"], info["cores"], info.get("cpu_flags"), sorted(info["versions"].items())))
    slug = "".join(c if c.isalnum() else "-" for c in info["cpu_model"].lower()).strip("-")[:32]
    return f"{slug}-x{info['cores']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
