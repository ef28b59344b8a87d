"""Speed of the search-space operations agents call in their inner loop (search_spaces, issue 3 part A).

Run: .venv/bin/python experiments/benchmarks/search_space_speed.py
Prints a markdown table row per model: SearchSpace.from_model, decode_vector, cost_report (analytic,
no weights touched) and apply_policy (physical channel pruning + masks + fake-quant), medians.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

from automl.models import build_model
from search_spaces import SearchSpace, apply_policy, cost_report


def _median_ms(fn, args_list) -> float:
    times = []
    for args in args_list:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    print("| model | from_model | decode_vector | cost_report | apply_policy |")
    print("|---|---|---|---|---|")
    for name in ("resnet20", "mobilenetv2"):
        model = build_model(name, 1, 10, 28)
        t = time.perf_counter()
        space = SearchSpace.from_model(model, name, (1, 28, 28))
        t_space = time.perf_counter() - t
        rng = random.Random(0)
        vectors = [[rng.random() for _ in space.dimensions()] for _ in range(50)]
        policies = [space.decode_vector(v) for v in vectors]
        decode = _median_ms(space.decode_vector, [(v,) for v in vectors])
        cost = _median_ms(cost_report, [(space, p) for p in policies])
        x, calib = torch.randn(1, 1, 28, 28), torch.randn(64, 1, 28, 28)
        apply = _median_ms(lambda p, m=model, x=x, c=calib: apply_policy(m, p, x, calib=c), [(p,) for p in policies[:3]])
        print(f"| {name} | {t_space:.2f} s | {decode:.1f} ms | {cost:.2f} ms | {apply / 1e3:.2f} s |")


if __name__ == "__main__":
    main()
