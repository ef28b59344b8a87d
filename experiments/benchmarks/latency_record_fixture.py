"""Record the stored set of real kernel measurements the predictor tests fit on.

    .venv/bin/python experiments/benchmarks/latency_record_fixture.py [--minutes 2]

Writes tests/fixtures/latency_onnxruntime_b1.json: conv kernel samples drawn like a profile draws them
(around the zoo's kernels, channel counts on and off the multiples of 8) and, separately, a c->c 3x3
channel sweep across multiples of 8 on 14x14 that is *excluded* from the samples. The test fits on the
samples and checks that the predictor reproduces the sweep's steps. Measured on this machine (shared
with other jobs: medians of interleaved repeats); re-record it on a new machine kind.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from latency_models.estimate import device_fingerprint, device_info
from latency_models.profile import measure_kernels
from latency_models.sampling import channel_sweep, random_kernel, zoo_prior

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "latency_onnxruntime_b1.json"
SWEEP = tuple(range(20, 41)) + tuple(range(56, 73))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    sweep_keys = {(float(c), float(c), 3.0, 1.0, 14.0, 14.0) for c in SWEEP}
    rng = random.Random(1)
    prior = zoo_prior()
    samples, baselines = [], []
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        ks = []
        while len(ks) < 24:
            k = random_kernel(rng, prior, ["conv"])
            if tuple(k.params[:6]) not in sweep_keys:
                ks.append(k)
        got, base = measure_kernels(ks, runtime="onnxruntime", batch=1, threads=1, precision="fp32",
                                    seed=rng.randrange(1 << 30))
        samples += got
        baselines.append(base)
        print(f"{len(samples)} samples", flush=True)
    # the sweep: three interleaved passes, median per config
    sweep_runs = []
    for rep in range(3):
        got, _ = measure_kernels(channel_sweep(SWEEP, 14, 3), runtime="onnxruntime", batch=1, threads=1,
                                 precision="fp32", seed=rep, repeats=60)
        sweep_runs.append([s.ms for s in got])
    sweep = [{"c": c, "ms": sorted(run[i] for run in sweep_runs)[1]} for i, c in enumerate(SWEEP)]
    info = device_info()
    data = {"what": "onnxruntime fp32, batch 1, 1 thread: conv kernel samples + held-out c->c 3x3 14x14 sweep",
            "device": info["device"], "fingerprint": device_fingerprint(info), "versions": info["versions"],
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"), "overhead_ms": sorted(baselines)[len(baselines) // 2],
            "note": "measured while other jobs shared the 2 cores: medians of interleaved repeats",
            "samples": [s.to_list() for s in samples], "sweep": sweep}
    Path(args.out).write_text(json.dumps(data))
    print(f"wrote {args.out}: {len(samples)} samples; sweep " +
          " ".join(f"{r['c']}:{r['ms'] * 1000:.0f}us" for r in sweep))


if __name__ == "__main__":
    main()
