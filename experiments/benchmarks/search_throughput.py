"""Search throughput (candidates per minute) with 1 and 2 Ray workers, and the scaling efficiency.

Runs the same search twice through the real stack (embedded Ray, sqlite MLflow in a temp dir, the
random agent, proxy evaluation on ResNet-20 / Fashion-MNIST, a MAC budget so no latency profile is
needed) and times the Ray trial phase only (base-model training and fine-tuning excluded).

    .venv/bin/python experiments/benchmarks/search_throughput.py [--candidates 24] [--val-images 1000]

Scaling efficiency = throughput(2 workers) / (2 x throughput(1 worker)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# This folder holds agents.py (a benchmark), which would shadow the agents package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def run(workers: int, candidates: int, val_images: int, store: str) -> float:
    from automl.search import SearchConfig, run_search

    cfg = SearchConfig.from_dict({
        "name": f"throughput-w{workers}",
        "model": {"name": "resnet20", "train_epochs": 1, "train_limit": 5000},
        "dataset": {"name": "fashion-mnist"},
        "agent": {"name": "random"},
        "budget": {"max_mac_ratio": 0.6},
        "objectives": ["accuracy", "mac_ratio"],
        "evaluation": {"proxy_val_images": val_images, "calib_batches": 4, "finetune_top_k": 0},
        "latency": {"measure_top_k": 0},
        "candidates": candidates,
        "ray": {"workers": workers, "cpus_per_trial": 1},
    })
    result = run_search(cfg, tracking_uri=store)
    return 60.0 * candidates / result.trial_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--val-images", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        one = run(1, args.candidates, args.val_images, store)
        two = run(2, args.candidates, args.val_images, store)
    print(json.dumps({"cpus": os.cpu_count(), "candidates": args.candidates, "val_images": args.val_images,
                      "candidates_per_min_1_worker": round(one, 2), "candidates_per_min_2_workers": round(two, 2),
                      "scaling_efficiency": round(two / (2 * one), 3)}, indent=2))


if __name__ == "__main__":
    main()
