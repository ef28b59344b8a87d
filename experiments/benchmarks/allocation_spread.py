"""At one measured speed, how much does *where* the channels are cut matter after the fine-tune?

    .venv/bin/python experiments/benchmarks/allocation_spread.py [--model resnet20] [--speedup 2.8] \
        [--recipe 0.25:0.01 --recipe 2:0.05] [--out allocation_spread.json]

The headline goal asks a searched policy to beat uniform channel pruning at the same measured latency by a
point after the fine-tune. A search can only do that if channel *allocations* that run equally fast end
more than a point apart after that fine-tune, and only finds the better one if its ranking (the proxy: BN
recalibration + 30 SGD steps on 1000 validation images, as in the headline's searches) orders them as the
fine-tune does. This check measures both, on this host, without a search in between:

* a handful of allocation *shapes* over the model's coupled channel groups (uniform; cut the inside of the
  residual blocks more than the residual stream, or the reverse; cut the early stages more, or the late
  ones; a random shape, seeded; with `--near-uniform N`, N shapes within ±25% of uniform), each scaled by one factor that is bisected until the policy runs
  `--speedup` times faster than the dense model (onnxruntime fp32, batch 1, 1 thread, timed beside the
  dense model; the median of `--processes` timing processes reported). Kept channels round to 8, the
  headline's uniform baseline's multiple.
* for each: the proxy accuracy (with and without the 30 SGD steps), then every `--recipe` EPOCHS:LR
  fine-tune (`finetune_and_test`, the headline's; validation and test accuracy); uniform also with a
  second fine-tune seed (the noise floor), and the dense model with the longest recipe (the room).

Results go to `--out` as each step finishes (a rerun resumes; the file is refused on another host). The
summary prints the spread after each recipe and the rank correlation of each cheap score with the longest
fine-tune. A hand check on one host, not a table cell (docs/benchmarks.md, "Where the channels go").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # finetune_length.py, for its timing helpers

from finetune_length import dense_artifact, parse_recipe, speedups_beside  # noqa: E402

from automl.data import load_dataset  # noqa: E402
from automl.evaluation import ProxyEvaluator, finetune_and_test  # noqa: E402
from automl.policy import CompressionPolicy  # noqa: E402
from automl.search.runner import deployable  # noqa: E402
from automl.search.trial import proxy_subset  # noqa: E402
from automl.training import evaluate, stderr_progress, train_or_load  # noqa: E402
from latency_models.estimate import device_name  # noqa: E402
from search_spaces import SearchSpace, cost_report  # noqa: E402

ALIGN = 8
MAX_SPARSITY = 0.9


def stage_of(layer: str) -> int | None:
    """1-based stage index of a `layerN.*` name (ResNet / MobileNet-style zoo names), else None."""
    head = layer.split(".")[0]
    return int(head[5:]) if head.startswith("layer") and head[5:].isdigit() else None


def group_shapes(space: SearchSpace, seeds: tuple[int, ...] = (0,), near_uniform: int = 0
                 ) -> dict[str, dict[int, float]]:
    """Per coupled channel group, a relative cut weight for each named allocation shape.

    A group is the residual *stream* when it has several output members (the block outputs and the stem or
    shortcut feeding one addition), *inside* a block otherwise. Stages come from the first member's name;
    a group outside any stage (the stem) counts as stage 1.
    """
    groups = {g.id: g for g in space.groups if any(
        lc.channel_group == g.id and "channel" in lc.schemes for lc in space.layers)}
    stream = {gid: len(g.out_members) > 1 for gid, g in groups.items()}
    stages = {gid: next((s for s in map(stage_of, g.out_members) if s is not None), 1) for gid, g in groups.items()}
    last = max(stages.values())
    shapes: dict[str, dict[int, float]] = {
        "uniform": {gid: 1.0 for gid in groups},
        "inside_blocks": {gid: 0.4 if stream[gid] else 1.4 for gid in groups},
        "residual_stream": {gid: 1.4 if stream[gid] else 0.4 for gid in groups},
        "early_stages": {gid: 1.5 - (stages[gid] - 1) / max(1, last - 1) for gid in groups},
        "late_stages": {gid: 0.5 + (stages[gid] - 1) / max(1, last - 1) for gid in groups},
    }
    for seed in seeds:
        rng = random.Random(seed)
        shapes[f"random{seed}"] = {gid: rng.uniform(0.3, 1.7) for gid in sorted(groups)}
    for i in range(near_uniform):  # small perturbations of uniform: what a search started from it would try
        rng = random.Random(1000 + i)
        shapes[f"near_uniform{i}"] = {gid: rng.uniform(0.75, 1.25) for gid in sorted(groups)}
    return shapes


def shaped_policy(space: SearchSpace, shape: dict[int, float], scale: float) -> CompressionPolicy:
    """Channel pruning of every group at sparsity min(0.9, scale x its weight), kept channels rounded to 8;
    layers outside the shape's groups stay dense."""
    choices = {}
    for lc in space.layers:
        if lc.channel_group in shape and "channel" in lc.schemes:
            sparsity = min(MAX_SPARSITY, max(min(lc.sparsities), scale * shape[lc.channel_group]))
            choices[lc.layer.name] = {"scheme": "channel", "sparsity": min(sparsity, max(lc.sparsities)),
                                      "align": ALIGN if ALIGN in lc.aligns else lc.aligns[0]}
    return space.decode(choices)


def bisect_scale(space: SearchSpace, shape: dict[int, float], speedup_of, target: float, iters: int = 5):
    """The smallest scale whose policy runs at least `target` x faster (one timing process per step).
    Returns (scale, policy) or None when even the largest cut is too slow."""
    lo, hi = 0.0, MAX_SPARSITY / min(shape.values())
    found = None
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        policy = shaped_policy(space, shape, mid)
        if speedup_of(policy) >= target:
            found, hi = (mid, policy), mid
        else:
            lo = mid
    return found


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (Pearson's on the ranks); nan for fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20", help="a zoo model with coupled channel groups")
    ap.add_argument("--speedup", type=float, default=2.8, help="measured speedup over dense every allocation "
                    "is bisected to (2.8x on the AMD host cuts ResNet-20 about as deep as 2x did on the Xeon)")
    ap.add_argument("--recipe", type=parse_recipe, action="append", default=None,
                    help="EPOCHS:LR of one fine-tune (repeatable; the longest one is the reference); "
                         "default 0.25:0.01 and 2:0.05")
    ap.add_argument("--shapes", nargs="+", default=None, help="only these allocation shapes (default: all)")
    ap.add_argument("--near-uniform", type=int, default=0, metavar="N",
                    help="add N shapes within ±25%% of uniform per group (seeded), as a search started from "
                         "uniform would try")
    ap.add_argument("--noise-seeds", type=int, nargs="*", default=[1],
                    help="further fine-tune seeds for uniform under the longest recipe (the noise floor; "
                         "none: no extra seed)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense model's fine-tune (the room)")
    ap.add_argument("--proxy-steps", type=int, default=30, help="SGD steps of the proxy (the headline's 30)")
    ap.add_argument("--processes", type=int, default=2, help="timing processes for the reported speedup")
    ap.add_argument("--bisect-steps", type=int, default=5, help="timed bisection steps per shape (one timing "
                    "process each, ~30 s on the AMD host)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the fine-tunes")
    ap.add_argument("--out", type=Path, default=Path("allocation_spread.json"), help="results file (resumable)")
    args = ap.parse_args(argv)
    if args.speedup <= 1.0:
        raise SystemExit(f"--speedup {args.speedup}: must exceed 1 (a speedup over the dense model)")
    recipes = sorted(args.recipe or [(0.25, 0.01), (2.0, 0.05)])
    longest = max(recipes)

    def key(epochs: float, lr: float, seed: int = 0) -> str:
        return f"{epochs:g}:{lr:g}" + (f":s{seed}" if seed else "")

    done = json.loads(args.out.read_text()) if args.out.is_file() else {
        "device": device_name(), "model": args.model, "speedup": args.speedup, "rows": {}}
    if done["device"] != device_name():
        raise SystemExit(f"{args.out} holds results from {done['device']}, this host is {device_name()}: "
                         "speedups differ between CPUs; pass another --out")
    if (done["model"], done["speedup"]) != (args.model, args.speedup):
        raise SystemExit(f"{args.out} holds {done['model']} at {done['speedup']}x, not {args.model} at "
                         f"{args.speedup}x; pass another --out")
    rows = done["rows"]

    def save() -> None:
        args.out.write_text(json.dumps(done, indent=1))

    torch.set_num_threads(args.threads)
    base = train_or_load(args.model, "fashion-mnist", epochs=3, seed=0, threads=args.threads).model.eval()
    splits = load_dataset("fashion-mnist", seed=0)
    shape = splits.input_shape
    space = SearchSpace.from_model(base, args.model, shape)
    shapes = group_shapes(space, near_uniform=args.near_uniform)
    if args.shapes:
        unknown = sorted(set(args.shapes) - set(shapes))
        if unknown:
            raise SystemExit(f"--shapes: unknown {unknown}; choose from {sorted(shapes)}")
        shapes = {name: shapes[name] for name in args.shapes}
    done.setdefault("dense_test_acc", float(evaluate(base, splits.x_test, splits.y_test)))

    dense_art = dense_artifact(base, shape)
    evaluator = ProxyEvaluator(base, splits, val_images=len(splits.x_val), calib_batches=4)

    def speedups(policy: CompressionPolicy, processes: int) -> list[float]:
        return speedups_beside(dense_art, deployable(evaluator.compress(policy).model), shape, processes)

    # 1. every shape bisected to the speed (timing first, nothing else running)
    for name, weights in shapes.items():
        row = rows.setdefault(name, {"weights": {str(k): v for k, v in weights.items()}})
        if "policy" in row:
            continue

        def one(policy: CompressionPolicy, name=name) -> float:
            (run,) = speedups(policy, 1)
            print(f"  {name}: MAC ratio {cost_report(space, policy).mac_ratio:.3f} -> {run:.2f}x "
                  f"(target {args.speedup:.2f}x)", flush=True)
            return run

        found = bisect_scale(space, weights, one, args.speedup, iters=args.bisect_steps)
        if found is None:
            print(f"{name}: cannot reach {args.speedup:.2f}x even at the largest cut; skipped", flush=True)
            row["unreachable"] = True
            save()
            continue
        scale, policy = found
        runs = speedups(policy, args.processes)
        row.update(scale=scale, policy=policy.to_dict(), speedups=runs, speedup=statistics.median(runs),
                   mac_ratio=float(cost_report(space, policy).mac_ratio))
        save()
        print(f"{name}: {row['speedup']:.2f}x (median of {len(runs)}), MAC ratio {row['mac_ratio']:.3f}", flush=True)

    live = {n: r for n, r in rows.items() if n in shapes and "policy" in r}

    # 2. the searches' proxy, with and without its SGD steps
    for name, row in live.items():
        if "proxy" in row:
            continue
        policy = CompressionPolicy.from_dict(row["policy"])
        row["proxy"] = {}
        for steps in sorted({0, args.proxy_steps}):
            sub = proxy_subset(splits, 1000, 4, finetune_steps=steps)
            proxy = ProxyEvaluator(base, sub, val_images=1000, calib_batches=4, finetune_steps=steps)
            row["proxy"][str(steps)] = float(proxy(policy)["accuracy"])
        save()
        print(f"{name}: proxy {row['proxy']}", flush=True)

    # 3. the fine-tunes: the longest recipe first (the reference), then the shorter ones, then the noise floor
    jobs = [(n, longest, 0) for n in live] + [(n, r, 0) for r in recipes if r != longest for n in live]
    if "uniform" in live:
        jobs += [("uniform", longest, seed) for seed in args.noise_seeds if seed != 0]
    if not args.no_dense:
        rows.setdefault("dense", {"policy": space.dense_policy().to_dict(), "speedup": 1.0, "mac_ratio": 1.0})
        jobs.append(("dense", longest, 0))
    for name, (epochs, lr), seed in jobs:
        row = rows[name]
        if key(epochs, lr, seed) in row.setdefault("finetunes", {}):
            continue
        t0 = time.perf_counter()
        ft = finetune_and_test(base, CompressionPolicy.from_dict(row["policy"]), splits, epochs=epochs,
                               calib_batches=4, lr=lr, seed=seed, progress=stderr_progress)
        ft["wall_s"] = time.perf_counter() - t0
        row["finetunes"][key(epochs, lr, seed)] = ft
        save()
        print(f"{name}: {epochs:g} epoch(s) at lr {lr:g}, seed {seed}: val {100 * ft['val_accuracy']:.2f}%, "
              f"test {100 * ft['test_accuracy']:.2f}% ({ft['wall_s']:.0f} s)", flush=True)

    print(summary(done, recipes, shapes))
    return 0


def summary(done: dict, recipes: list[tuple[float, float]], shapes) -> str:
    rows = {n: r for n, r in done["rows"].items() if n in shapes and "policy" in r}
    longest = max(recipes)
    ref = f"{longest[0]:g}:{longest[1]:g}"
    lines = [f"{done['model']}, every allocation bisected to >= {done['speedup']:.2f}x, on {done['device']} (dense, no fine-tune: "
             f"{100 * done['dense_test_acc']:.2f}%)",
             "| allocation | speedup | MAC ratio | proxy (BN only) | proxy (+SGD) | "
             + " | ".join(f"{e:g} ep @ {lr:g} val / test" for e, lr in recipes) + " |"]
    for name, row in list(rows.items()) + [(n, r) for n, r in done["rows"].items() if n == "dense"]:
        proxy = row.get("proxy", {})
        cells = []
        for e, lr in recipes:
            ft = row.get("finetunes", {}).get(f"{e:g}:{lr:g}")
            cells.append(f"{100 * ft['val_accuracy']:.2f}% / {100 * ft['test_accuracy']:.2f}%" if ft else "-")
        proxies = [f"{100 * proxy[s]:.2f}%" for s in sorted(proxy, key=int)] if proxy else ["-", "-"]
        lines.append(f"| {name} | {row['speedup']:.2f}x | {row['mac_ratio']:.3f} | " + " | ".join(proxies)
                     + " | " + " | ".join(cells) + " |")
    finished = {n: r for n, r in rows.items() if ref in r.get("finetunes", {})}
    if len(finished) >= 2:
        tests = {n: r["finetunes"][ref]["test_accuracy"] for n, r in finished.items()}
        lines.append(f"spread after {ref} (test, max - min over {len(tests)} allocations): "
                     f"{100 * (max(tests.values()) - min(tests.values())):.2f} points")
        noise = [k for k in done["rows"].get("uniform", {}).get("finetunes", {}) if k.startswith(ref + ":s")]
        if noise and "uniform" in tests:
            seeds = [tests["uniform"]] + [done["rows"]["uniform"]["finetunes"][k]["test_accuracy"] for k in noise]
            lines.append(f"uniform, {len(seeds)} fine-tune seeds: " + ", ".join(f"{100 * a:.2f}%" for a in seeds)
                         + f" (mean {100 * statistics.fmean(seeds):.2f}%)")
        names = sorted(finished)
        target = [tests[n] for n in names]
        scores = {f"proxy +{s} SGD steps" if s != "0" else "proxy, BN only": [finished[n]["proxy"][s] for n in names]
                  for s in finished[names[0]].get("proxy", {})}
        for e, lr in recipes:
            k = f"{e:g}:{lr:g}"
            if k != ref and all(k in finished[n]["finetunes"] for n in names):
                scores[f"{k} test"] = [finished[n]["finetunes"][k]["test_accuracy"] for n in names]
        scores[f"{ref} val"] = [finished[n]["finetunes"][ref]["val_accuracy"] for n in names]
        for label, values in scores.items():
            lines.append(f"Spearman({label}, {ref} test) = {spearman(values, target):+.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
