"""Benchmark: every search agent at an equal number of proxy evaluations and an equal budget.

    .venv/bin/python experiments/benchmarks/agents.py --evals 100 --latency-budget 0.5 --out /tmp/agents.json

For each agent: run `--evals` ask/tell rounds with the proxy evaluator (apply policy -> BN
recalibration -> validation subset), keep the best proxy accuracy, then give that best policy the
same short fine-tune and report its test accuracy. Prints a markdown table (for docs/benchmarks.md).
The base model is `automl.training.train_or_load(model, epochs=..., limit=...)` (cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# this file is named like the `agents` package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from agents import AGENTS, Budget, CostModel, Observation, make_agent  # noqa: E402
from automl.data import load_dataset  # noqa: E402
from automl.evaluation import ProxyEvaluator, finetune_and_test  # noqa: E402
from automl.training import train_or_load  # noqa: E402
from search_spaces import SearchSpace, SpaceConfig  # noqa: E402


def agent_options(name: str, evals: int) -> dict:
    """Warm-up / start-up episodes: a fifth of the evaluations (AMC used 100 of ~400 episodes)."""
    warm = max(5, evals // 5)
    return {"amc": {"warmup": warm}, "agmc": {"warmup": warm}, "optuna": {"n_startup_trials": warm}}.get(name, {})


def run_agent(name: str, space, budget: Budget, evaluator: ProxyEvaluator, evals: int, seed: int,
              latency=None) -> dict:
    cost_model = CostModel(space, latency)
    agent = make_agent(name, space, budget, cost_model, seed=seed, **agent_options(name, evals))
    t0 = time.perf_counter()
    curve, best, best_policy, failed = [], -1.0, None, 0
    eval_seconds = 0.0
    for i in range(evals):
        (policy,) = agent.propose(1)
        costs = cost_model.costs(policy)
        if not budget.check(costs):  # agents promise this; the benchmark verifies it
            raise AssertionError(f"{name} proposed a policy over budget: {budget.violations(costs)}")
        t1 = time.perf_counter()
        try:
            metrics = evaluator(policy)
            obs = Observation({**metrics, **costs})
        except Exception as exc:  # a policy the engine cannot apply is a failed trial, not a crash
            failed += 1
            obs = Observation.failed(f"{type(exc).__name__}: {exc}")
            metrics = {"accuracy": float("nan")}
        eval_seconds += time.perf_counter() - t1
        agent.observe(policy, obs)
        if obs.ok and metrics["accuracy"] > best:
            best, best_policy = metrics["accuracy"], policy
        curve.append(best)
        if (i + 1) % 10 == 0:
            print(f"  {name} {i + 1}/{evals}: best proxy {best:.4f}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    return {"agent": name, "best_proxy": best, "best_policy": best_policy.to_dict() if best_policy else None,
            "best_costs": cost_model.costs(best_policy) if best_policy else None, "curve": curve,
            "failed": failed, "seconds": total, "agent_seconds": total - eval_seconds,
            "best_at": curve.index(best) + 1 if best_policy else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-epochs", type=int, default=3, help="base model epochs (3: the quickstart's checkpoint)")
    p.add_argument("--train-limit", type=int, default=None, help="training images for the base model (default: all)")
    p.add_argument("--agents", nargs="+", default=["random", "rule_based", "amc", "agmc", "optuna"],
                   choices=sorted(AGENTS))
    p.add_argument("--evals", type=int, default=100)
    p.add_argument("--mac-budget", type=float, default=None, help="budget: effective-MAC ratio (e.g. 0.5)")
    p.add_argument("--latency-budget", type=float, default=None,
                   help="budget: fraction of the dense model's predicted latency on --runtime (e.g. 0.5); "
                        "builds or reuses this machine's cached device profile")
    p.add_argument("--runtime", default="onnxruntime", help="runtime of the latency budget (batch 1, 1 thread)")
    p.add_argument("--profile-minutes", type=float, default=3.0)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--calib-batches", type=int, default=2)
    p.add_argument("--weight-bits", nargs="+", default=["none", "8", "6", "4"],
                   help="weight bit-widths the space offers ('none' = float)")
    p.add_argument("--act-bits", nargs="+", default=["none", "8"])
    p.add_argument("--finetune-epochs", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0, help="base model / data seed")
    p.add_argument("--agent-seed", type=int, default=None, help="agents' seed (default: --seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    ckpt = train_or_load(args.model, args.dataset, epochs=args.train_epochs, seed=args.seed, limit=args.train_limit)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset, seed=args.seed, limit=args.train_limit)
    base = ckpt.model.eval()
    def bits(values: list[str]) -> tuple[int | None, ...]:
        return tuple(None if v.lower() == "none" else int(v) for v in values)

    config = SpaceConfig(weight_bits=bits(args.weight_bits), act_bits=bits(args.act_bits))
    space = SearchSpace.from_model(base, args.model, splits.input_shape, config)
    latency, budget_text = None, ""
    if args.latency_budget is not None:
        from agents import PredictedLatency
        from latency_models import get_or_build_profile, predict_policy

        profile = get_or_build_profile(args.runtime, minutes=args.profile_minutes,
                                       progress=lambda m: print(m, file=sys.stderr, flush=True))
        latency = PredictedLatency(profile, space)
        dense_ms = predict_policy(profile, space, space.dense_policy()).ms
        budget = Budget(max_latency_ms=args.latency_budget * dense_ms, max_mac_ratio=args.mac_budget)
        budget_text = (f"predicted latency <= {args.latency_budget} x dense ({dense_ms:.3f} ms -> "
                       f"{args.latency_budget * dense_ms:.3f} ms; {args.runtime}, batch 1, 1 thread)")
    elif args.mac_budget is not None:
        budget = Budget(max_mac_ratio=args.mac_budget)
    else:
        p.error("give --mac-budget and/or --latency-budget")
    if args.mac_budget is not None:
        budget_text = ", ".join(t for t in (budget_text, f"MAC ratio <= {args.mac_budget}") if t)
    evaluator = ProxyEvaluator(base, splits, val_images=args.val_images, calib_batches=args.calib_batches)
    dense_proxy = evaluator(space.dense_policy())["accuracy"]
    print(f"base {args.model}: test acc {ckpt.meta['test_acc']:.4f}, dense proxy {dense_proxy:.4f}", file=sys.stderr)

    results = []
    for name in args.agents:
        print(f"agent {name}", file=sys.stderr, flush=True)
        agent_seed = args.seed if args.agent_seed is None else args.agent_seed
        r = run_agent(name, space, budget, evaluator, args.evals, agent_seed, latency)
        if r["best_policy"] is not None:
            from automl.policy import CompressionPolicy

            ft = finetune_and_test(base, CompressionPolicy.from_dict(r["best_policy"]), splits,
                                   epochs=args.finetune_epochs, calib_batches=args.calib_batches, seed=args.seed)
            r.update(ft)
        results.append(r)
        if args.out:
            args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                            "dense_test": ckpt.meta["test_acc"], "dense_proxy": dense_proxy,
                                            "results": results}, indent=1))

    print(f"\nBase {args.model} ({args.train_epochs} epochs, {args.train_limit or 'all'} images): test "
          f"{100 * ckpt.meta['test_acc']:.2f}%, dense proxy {100 * dense_proxy:.2f}%. Budget: MAC ratio <= "
          f"{args.mac_budget}. {args.evals} proxy evaluations per agent ({args.val_images} val images, "
          f"{args.calib_batches} BN-calibration batches); weight bits {args.weight_bits}, act bits {args.act_bits}; "
          f"fine-tune {args.finetune_epochs} epoch.\n")
    print("| agent | best proxy acc | found at eval | MAC ratio of best | predicted ms of best | test acc before FT "
          "| test acc after FT | failed | agent overhead s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lat = r["best_costs"].get("latency_ms")
        print(f"| {r['agent']} | {100 * r['best_proxy']:.2f}% | {r['best_at']} | "
              f"{r['best_costs']['mac_ratio']:.3f} | {'-' if lat is None else f'{lat:.3f}'} | {100 * r.get('test_accuracy_before', float('nan')):.2f}% | "
              f"{100 * r.get('test_accuracy', float('nan')):.2f}% | {r['failed']} | {r['agent_seconds']:.0f} | "
              f"{r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
