"""Re-predict the measured rows of a `latency_predictor.py` results file with the current predictor.

    .venv/bin/python experiments/benchmarks/latency_repredict.py RESULTS.json [--profile-dir DIR]

No timing: each entry's cached profile (the one `latency_predictor.py` built under --profile-dir, refitted
on load with the current code; a missing one is an error, not rebuilt) predicts the same zoo models and random policies again (same seed and
policy count), against the medians measured then. Shows what a predictor change does on rows measured
before it; a fresh `latency_predictor.py` run is the measured figure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from latency_predictor import INPUT, random_policy  # noqa: E402

from automl.models import ZOO, build_model  # noqa: E402
from latency_models import DeviceProfile, predict_policy  # noqa: E402
from latency_models.profile import default_profile_path  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a latency_predictor.py --out file")
    ap.add_argument("--profile-dir", default=str(Path.home() / ".cache" / "compress-search" / "bench-profiles"))
    ap.add_argument("--seed", type=int, default=0, help="the seed the results were produced with")
    args = ap.parse_args()
    for entry in json.loads(Path(args.results).read_text()):
        profile = DeviceProfile.load(default_profile_path(entry["runtime"], entry["batch"], 1,
                                                          entry.get("precision", "fp32"), args.profile_dir))
        rows = {(r["model"], r["policy"]): r for r in entry["rows"]}
        n_policies = max(r["policy"] for r in entry["rows"])
        rng = random.Random(args.seed)
        errs, anchored = [], []
        for name in ZOO:
            space = SearchSpace.from_model(build_model(name, INPUT[0], 10, INPUT[1]), name, INPUT)
            policies = [space.dense_policy()] + [random_policy(space, rng) for _ in range(n_policies)]
            line = [predict_policy(profile, space, p).ms / rows[(name, i)]["measured_ms"] - 1
                    for i, p in enumerate(policies)]
            errs += line
            anchored += [(1 + e) / (1 + line[0]) - 1 for e in line[1:]]  # calibrated at the dense policy
            print(f"{name}: " + " ".join(f"{100 * e:+.1f}%" for e in line))
        e = np.array(errs)
        print(f"{entry['runtime']} {entry.get('precision', 'fp32')} batch {entry['batch']}: "
              f"{100 * np.mean(np.abs(e) <= 0.1):.0f}% within ±10%, {100 * np.mean(np.abs(e) <= 0.2):.0f}% within "
              f"±20%, rel. RMSE {100 * np.sqrt(np.mean(e**2)):.1f}%, n={len(e)}; calibrated at each model's dense "
              f"policy: {100 * np.mean(np.abs(anchored) <= 0.1):.0f}% of {len(anchored)} within ±10%", flush=True)


if __name__ == "__main__":
    main()
