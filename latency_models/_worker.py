"""The timing process: loads artifacts with one runtime, pins threads, warms up, times, prints JSON.

Run as ``python -m latency_models._worker JOB.json``. It imports only the runtime it needs (the package
`__init__` is lazy), so nothing else in the parent (Ray, MLflow, a training loop) shares its cores or
its thread pools. Items are timed in interleaved rounds, so a slow spell on the shared machine hits
every item alike instead of one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def time_calls(fn, x, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn(x)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Time every item of `job`; returns per-item {"times_ms": [...]} or {"error": "..."}."""
    import importlib

    import numpy as np

    threads = int(job.get("threads", 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    module_name, _, cls_name = job["runtime_target"].partition(":")
    runtime = getattr(importlib.import_module(module_name), cls_name)()
    rng = np.random.default_rng(0)
    sessions: list[Any] = []
    results: list[dict[str, Any]] = []
    for item in job["items"]:
        try:
            with open(item["artifact"], "rb") as f:
                fn = runtime.load(f.read(), threads)
            x = rng.standard_normal(item["shape"]).astype(np.float32)
            fn(x)  # first call: allocations, compilation
            sessions.append((fn, x))
            results.append({"times_ms": []})
        except Exception as exc:  # one broken item must not lose the others' timings
            sessions.append(None)
            results.append({"error": f"{type(exc).__name__}: {exc}"[:500]})
    warmup, repeats = int(job.get("warmup", 10)), int(job.get("repeats", 50))
    rounds = max(1, min(int(job.get("rounds", 5)), repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    # target_ms: time each item for about this long in total (many more repeats for tiny kernels, so
    # their medians are not noise); repeats is then the minimum.
    target_ms = float(job.get("target_ms", 0.0))
    scale = [1] * len(sessions)
    for i, s in enumerate(sessions):
        if s is not None:
            warm = time_calls(s[0], s[1], max(1, warmup))
            if target_ms > 0:
                t = max(sorted(warm)[len(warm) // 2], 1e-4)
                scale[i] = max(1, min(50, int(target_ms / (t * repeats))))
    for n in per_round:
        for i, s in enumerate(sessions):
            if s is not None:
                try:
                    results[i]["times_ms"].extend(time_calls(s[0], s[1], n * scale[i]))
                except Exception as exc:
                    sessions[i] = None
                    results[i] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return results


def main() -> int:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    json.dump({"results": run_job(job)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
