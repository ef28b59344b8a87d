"""Honest measurement: a separate process, fixed threads, warm-up, many repetitions, median and IQR.

`measure_latency` times one model; `compare` times several in the same process, interleaved, so they
see the same machine state (the machine is shared: a figure taken alone in a noisy minute would be
compared with one taken in a quiet minute otherwise). `device="http://host:port"` sends the model to
a device agent (`automl device-agent`) instead.

The protocol (`DEFAULT_*`): at least `repeats` calls, raised until each model is timed for about
`target_ms` in total, spread over `rounds` interleaved slices. On this shared machine the speed changes
in spells of a second or so (other jobs, the host): 60 calls of a 0.5 ms model span 30 ms, so one
spell moved whole batches of medians by up to 1.7x between runs, while ~1 s per model in 10-30 slices
kept them within ~2%. Device profiles time their whole random networks with the same protocol and fit
the same statistic, the median, so a predicted figure means what a measured one does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latency_models.estimate import LatencyEstimate, device_name, summarize
from latency_models.runtimes.base import RuntimeError_, get_runtime, runtime_target

DEFAULT_WARMUP = 20
DEFAULT_REPEATS = 100
#: interleaved slices the repeats are spread over (each item gets repeats / rounds calls per slice)
DEFAULT_ROUNDS = 10
#: time each item for about this long in total (repeats raised up to 50x): spans the machine's slow spells
DEFAULT_TARGET_MS = 1000.0
WORKER_TIMEOUT_S = 600


class MeasurementError(RuntimeError):
    """A model could not be timed; the message says where (export, the timing process, the agent)."""


def example_input(input_shape: Sequence[int], batch: int):
    """A random input of `batch` x `input_shape`, as every measurement feeds the model."""
    import torch

    return torch.randn(batch, *input_shape)


def run_worker(runtime: str, artifacts: list[bytes], shapes: list[Sequence[int]], *, threads: int = 1,
               warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS, rounds: int = 5,
               target_ms: float = 0.0, timeout_s: float = WORKER_TIMEOUT_S) -> list[dict[str, Any]]:
    """Time artifacts in one fresh process; returns per-item {"times_ms": [...]} or {"error": ...}.

    target_ms > 0 raises an item's repeats (up to 50x) until it is timed for about that long in total.
    """
    target = runtime_target(runtime)
    with tempfile.TemporaryDirectory(prefix="automl-latency-") as tmp:
        items = []
        for i, (art, shape) in enumerate(zip(artifacts, shapes, strict=True)):
            path = Path(tmp) / f"item{i}.bin"
            path.write_bytes(art)
            items.append({"artifact": str(path), "shape": list(shape)})
        job = {"runtime_target": target, "threads": threads, "warmup": warmup, "repeats": repeats,
               "rounds": rounds, "target_ms": target_ms, "items": items}
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.run([sys.executable, "-m", "latency_models._worker", str(job_path)],
                                  capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise MeasurementError(f"the timing process ran past {timeout_s:.0f} s; use fewer repeats") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise MeasurementError(f"the timing process failed (exit {proc.returncode}): {' | '.join(tail)}")
        return json.loads(proc.stdout)["results"]


def run_inprocess(runtime: str, artifacts: list[bytes], shapes: list[Sequence[int]], *, threads: int = 1,
                  warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                  rounds: int = 5, target_ms: float = 0.0) -> list[dict[str, Any]]:
    """The same timing loop without a subprocess (isolate=False; the device agent uses it)."""
    from latency_models import _worker

    with tempfile.TemporaryDirectory(prefix="automl-latency-") as tmp:
        items = []
        for i, (art, shape) in enumerate(zip(artifacts, shapes, strict=True)):
            path = Path(tmp) / f"item{i}.bin"
            path.write_bytes(art)
            items.append({"artifact": str(path), "shape": list(shape)})
        return _worker.run_job({"runtime_target": runtime_target(runtime), "threads": threads, "warmup": warmup,
                                "repeats": repeats, "rounds": rounds, "target_ms": target_ms, "items": items})


def to_estimate(result: dict[str, Any], *, device: str, runtime: str, batch: int, threads: int,
                precision: str) -> LatencyEstimate:
    if "error" in result:
        raise MeasurementError(f"{runtime} could not run the model: {result['error']}")
    s = summarize(result["times_ms"])
    return LatencyEstimate(ms=s["median"], std_ms=s["std"], source="measured", device=device, runtime=runtime,
                           batch=batch, threads=threads, precision=precision, p25_ms=s["p25"], p75_ms=s["p75"],
                           repeats=int(s["n"]), p10_ms=s["p10"])


def compare(models: Sequence[Any], input_shape: Sequence[int], *, runtime: str = "onnxruntime", batch: int = 1,
            threads: int = 1, precision: str | Sequence[str] = "fp32", warmup: int = DEFAULT_WARMUP,
            repeats: int = DEFAULT_REPEATS, isolate: bool = True, device: str | None = None,
            timeout_s: float = 60.0, rounds: int = DEFAULT_ROUNDS,
            target_ms: float = DEFAULT_TARGET_MS) -> list[LatencyEstimate]:
    """Time several models interleaved (round-robin in one process): fair comparisons on a busy machine.

    Each model gets at least `repeats` calls, more until it was timed for about `target_ms` (0: exactly
    `repeats`), in `rounds` interleaved slices (the module docstring's protocol). A device agent times
    `repeats` calls per model. `precision` is one for all models or one per model (e.g. an fp32 reference
    timed in the same process as int8 candidates). A model given as `bytes` is an artifact this runtime
    exported before (`get_runtime(runtime).export(...)`, same precision): a reference timed in many calls
    is exported once (onnxruntime's deployment export takes seconds).
    """
    rt = get_runtime(runtime)
    precisions = [precision] * len(models) if isinstance(precision, str) else list(precision)
    if len(precisions) != len(models):
        raise ValueError(f"compare: {len(precisions)} precisions for {len(models)} models")
    for prec in set(precisions):
        rt.check_precision(prec)
    example = example_input(input_shape, batch)
    try:
        artifacts = [m if isinstance(m, bytes) else rt.export(m, example, prec)
                     for m, prec in zip(models, precisions, strict=True)]
    except RuntimeError_:
        raise
    except Exception as exc:
        raise MeasurementError(f"exporting the model for {rt.name} failed: {exc}") from exc
    shapes = [tuple(example.shape)] * len(artifacts)
    if device:
        from latency_models.agent import AgentClient

        client = AgentClient(device, timeout_s=timeout_s)
        return [client.measure(a, shapes[0], runtime=rt.name, batch=batch, threads=threads, precision=prec,
                               warmup=warmup, repeats=repeats) for a, prec in zip(artifacts, precisions, strict=True)]
    runner = run_worker if isolate else run_inprocess
    results = runner(rt.name, artifacts, shapes, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds,
                     target_ms=target_ms)
    return [to_estimate(r, device=device_name(), runtime=rt.name, batch=batch, threads=threads,
                        precision=prec) for r, prec in zip(results, precisions, strict=True)]


def measure_latency(model: Any, input_shape: Sequence[int], *, runtime: str = "onnxruntime", batch: int = 1,
                    threads: int = 1, precision: str = "fp32", warmup: int = DEFAULT_WARMUP,
                    repeats: int = DEFAULT_REPEATS, isolate: bool = True, device: str | None = None,
                    timeout_s: float = 60.0, rounds: int = DEFAULT_ROUNDS,
                    target_ms: float = DEFAULT_TARGET_MS) -> LatencyEstimate:
    """Median latency of `model` on one input of `batch` x `input_shape` (per-sample shape, e.g. (1, 28, 28)).

    isolate=True times in a fresh process with `threads` pinned; device="http://host:port" times on a
    device agent (timeout_s bounds every HTTP call, so an unreachable agent fails fast).
    """
    return compare([model], input_shape, runtime=runtime, batch=batch, threads=threads, precision=precision,
                   warmup=warmup, repeats=repeats, isolate=isolate, device=device, timeout_s=timeout_s,
                   rounds=rounds, target_ms=target_ms)[0]
