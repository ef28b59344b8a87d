"""How much of a headline row's gap to dense is the short fine-tune? Re-fine-tune the table's kept policies longer.

    .venv/bin/python experiments/benchmarks/finetune_length.py --model mobilenetv2 [--setting fp32] \
        [--methods optuna amc uniform_channel dense_finetuned] [--uniform-match optuna] \
        [--recipe 0.25:0.01 --recipe 2:0.05]

The headline table (docs/benchmarks.md) fine-tunes MobileNetV2's rows for a quarter epoch, which leaves the
best searched policy 2.4 points under dense. This check takes the policies the table kept
(`experiments/benchmarks/headline_results.json`, the `--setting` fp32 or int8), applies each to this host's
base model (`train_or_load` with the headline's base recipe: 3 epochs, seed 0), times it beside the dense
fp32 model on onnxruntime (batch 1, 1 thread; the policy in fp32, or as onnxruntime static int8 in the int8
setting; median speedup over `--processes` timing processes) and gives it every `--recipe EPOCHS:LR` (BN
recalibrated, SGD with the cosine schedule, masks kept, 8-bit fake quantization in the int8 setting;
`finetune_and_test`, the headline's own fine-tune). The table's policies were timed on its host;
`--uniform-match METHOD` adds uniform channel pruning bisected to METHOD's speed on this one (kept channels
rounded to 8 in fp32 and 16 in int8, the table's `uniform_align`). Results go to `--out` as each row
finishes (a rerun skips finished rows; one file per setting). A hand check on one host, not a table cell
(docs/benchmarks.md, "Does MobileNetV2's lead survive a longer fine-tune?" and "And MobileNetV2's int8
lead?").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # headline.py, for its uniform bisection

from automl.data import load_dataset  # noqa: E402
from automl.evaluation import ProxyEvaluator, finetune_and_test  # noqa: E402
from automl.policy import CompressionPolicy  # noqa: E402
from automl.search.runner import deployable  # noqa: E402
from automl.training import evaluate, stderr_progress, train_or_load  # noqa: E402
from latency_models import compare, get_runtime  # noqa: E402
from latency_models.estimate import device_name  # noqa: E402
from latency_models.measure import example_input  # noqa: E402

RESULTS = ROOT / "experiments" / "benchmarks" / "headline_results.json"
CONFIG = ROOT / "experiments" / "benchmarks" / "headline.yaml"


def parse_recipe(text: str) -> tuple[float, float]:
    try:
        epochs, lr = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--recipe {text!r}: expected EPOCHS:LR, e.g. 2:0.05") from None
    if epochs <= 0 or lr <= 0:
        raise argparse.ArgumentTypeError(f"--recipe {text!r}: epochs and lr must be positive")
    return epochs, lr


def speedups_beside(dense_artifact: bytes, model, shape, processes: int, precision: str = "fp32") -> list[float]:
    """Speedup of `model` (run at `precision`) over the dense model (exported once, as onnxruntime fp32
    bytes), timed interleaved with it (onnxruntime, batch 1, 1 thread), in each of `processes` timing
    processes. The model is exported once too (an int8 export takes seconds)."""
    artifact = get_runtime("onnxruntime").export(model, example_input(shape, 1), precision)
    runs = []
    for _ in range(processes):
        dense, pruned = compare([dense_artifact, artifact], shape, runtime="onnxruntime", batch=1, threads=1,
                                precision=["fp32", precision])
        runs.append(float(dense.ms) / float(pruned.ms))
    return runs


def dense_artifact(base, shape) -> bytes:
    """The dense model exported for onnxruntime fp32 once, to be timed beside every policy."""
    return get_runtime("onnxruntime").export(deployable(base), example_input(shape, 1), "fp32")


def kept_policy(cells: dict, model: str, setting: str, method: str, seed: int) -> tuple[CompressionPolicy, dict]:
    key = f"{model}/{setting}/{method}/s{seed}"
    if key not in cells:
        have = sorted(k.split("/")[2] for k in cells if k.startswith(f"{model}/{setting}/") and k.count("/") == 3)
        raise SystemExit(f"{RESULTS.name} has no cell {key!r}; methods there for {model} {setting}: "
                         f"{', '.join(have) or 'none'}")
    cell = cells[key]
    return CompressionPolicy.from_dict(cell["policy"]), cell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenetv2", help="a model of the headline table")
    ap.add_argument("--setting", choices=["fp32", "int8"], default="fp32",
                    help="the table's setting whose kept policies are used (int8: timed as onnxruntime static "
                         "int8, fine-tuned with 8-bit fake quantization, as in the table)")
    ap.add_argument("--methods", nargs="+", default=["optuna", "amc", "uniform_channel", "dense_finetuned"],
                    help="table rows (method names) whose kept policy is re-fine-tuned")
    ap.add_argument("--recipe", type=parse_recipe, action="append", default=None,
                    help="EPOCHS:LR of one fine-tune (repeatable); default 0.25:0.01 and 2:0.05")
    ap.add_argument("--uniform-match", metavar="METHOD", default=None,
                    help="add a row 'uniform_matched': uniform channel pruning (kept channels rounded as the "
                         "table's uniform row: headline.yaml's uniform_align, 8; int8: 16) bisected on its MAC "
                         "target until it runs at least as fast here as METHOD's policy (the table's uniform "
                         "row was matched on the table's host, and speedups differ between CPUs)")
    ap.add_argument("--seed", type=int, default=0, help="the table's seed (whose kept policies are used)")
    ap.add_argument("--finetune-seed", type=int, default=None, help="the fine-tune's seed (default: --seed); "
                    "results of a seed other than 0 are keyed EPOCHS:LR:sSEED")
    ap.add_argument("--processes", type=int, default=3, help="timing processes (median speedup)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fine-tuning")
    ap.add_argument("--out", type=Path, default=Path("finetune_length.json"), help="results file (resumable)")
    args = ap.parse_args(argv)
    recipes = args.recipe or [(0.25, 0.01), (2.0, 0.05)]
    ft_seed = args.seed if args.finetune_seed is None else args.finetune_seed

    def recipe_key(epochs: float, lr: float) -> str:
        return f"{epochs:g}:{lr:g}" + (f":s{ft_seed}" if ft_seed else "")

    cells = json.loads(RESULTS.read_text())["cells"]
    policies = {m: kept_policy(cells, args.model, args.setting, m, args.seed) for m in args.methods}
    precision = args.setting  # onnxruntime's precision names are the table's setting names

    done = json.loads(args.out.read_text()) if args.out.is_file() else {"device": device_name(), "rows": {},
                                                                        "setting": args.setting}
    if done["device"] != device_name():
        raise SystemExit(f"{args.out} holds results from {done['device']}, this host is {device_name()}: "
                         "speedups differ between CPUs; pass another --out")
    if done.get("setting", "fp32") != args.setting:
        raise SystemExit(f"{args.out} holds results of the {done.get('setting', 'fp32')} setting, not "
                         f"{args.setting}; pass another --out")
    rows = done["rows"]

    torch.set_num_threads(args.threads)
    base = train_or_load(args.model, "fashion-mnist", epochs=3, seed=0, threads=args.threads).model.eval()
    splits = load_dataset("fashion-mnist", seed=0)
    shape = splits.input_shape
    if "dense_test_acc" not in done:
        done["dense_test_acc"] = float(evaluate(base, splits.x_test, splits.y_test))

    evaluator = ProxyEvaluator(base, splits, val_images=len(splits.x_val), calib_batches=4)
    dense_art = dense_artifact(base, shape)

    def speedups(policy: CompressionPolicy, processes: int) -> list[float]:
        return speedups_beside(dense_art, deployable(evaluator.compress(policy).model), shape, processes,
                               precision)

    for method, (policy, cell) in policies.items():
        row = rows.setdefault(method, {"table_test_acc": cell["test_acc"],
                                       "table_speedup": cell.get("verified_speedup", cell["speedup"])})
        if "speedup" not in row:
            dense_fp32 = method == "dense_finetuned" and args.setting == "fp32"  # the reference itself
            runs = [1.0] if dense_fp32 else speedups(policy, args.processes)
            row["speedup"], row["speedups"] = statistics.median(runs), runs
            print(f"{method}: {row['speedup']:.2f}x beside dense on this host "
                  f"(table: {row['table_speedup']:.2f}x)", flush=True)
            args.out.write_text(json.dumps(done, indent=1))

    if args.uniform_match:
        if args.uniform_match not in policies:
            raise SystemExit(f"--uniform-match {args.uniform_match}: not among --methods ({' '.join(args.methods)})")
        target = rows[args.uniform_match]["speedup"]
        row = rows.get("uniform_matched")
        if row is None or row.get("matched_to") != [args.uniform_match, target]:
            from headline import HeadlineConfig, bisect_uniform_channel, uniform_align_for, with_bits

            from search_spaces import SearchSpace
            from search_spaces.baselines import uniform

            cfg = HeadlineConfig.from_yaml(CONFIG)
            align = uniform_align_for(cfg, args.setting, next((m for m in cfg.models if m.name == args.model), None))
            bits = None if args.setting == "fp32" else 8
            space = SearchSpace.from_model(base, args.model, shape)

            def one_process(policy, ratio):
                (run,) = speedups(policy, 1)
                print(f"  uniform channel at MAC target {ratio:.3f}: {run:.2f}x (to match: {target:.2f}x)",
                      flush=True)
                return 1.0 / run

            found, _ = bisect_uniform_channel(
                lambda ratio: with_bits(uniform(base, "channel", ratio, shape, model_name=args.model, align=align),
                                        space, bits),
                one_process, 1.0 / target, iters=7)
            if found is None:
                raise SystemExit(f"no uniform channel pruning reached {target:.2f}x here")
            runs = speedups(found[0], args.processes)
            row = rows["uniform_matched"] = {"matched_to": [args.uniform_match, target],
                                             "policy": found[0].to_dict(), "speedup": statistics.median(runs),
                                             "speedups": runs}
            args.out.write_text(json.dumps(done, indent=1))
        print(f"uniform_matched: {row['speedup']:.2f}x beside dense on this host ({args.uniform_match}: "
              f"{target:.2f}x)", flush=True)
        policies["uniform_matched"] = (CompressionPolicy.from_dict(row["policy"]), None)

    for method, (policy, _cell) in policies.items():
        row = rows[method]
        for epochs, lr in recipes:
            name = recipe_key(epochs, lr)
            if name in row.setdefault("finetunes", {}):
                continue
            t0 = time.perf_counter()
            ft = finetune_and_test(base, policy, splits, epochs=epochs, calib_batches=4, lr=lr, seed=ft_seed,
                                   progress=stderr_progress)
            ft["wall_s"] = time.perf_counter() - t0
            row["finetunes"][name] = ft
            args.out.write_text(json.dumps(done, indent=1))
            print(f"{method}: fine-tune {epochs:g} epoch(s) at lr {lr:g}, seed {ft_seed}: test accuracy "
                  f"{100 * ft['test_accuracy']:.2f}% (before {100 * ft['test_accuracy_before']:.2f}%, "
                  f"{ft['wall_s']:.0f} s)", flush=True)

    table_dense = float(cells[f"{args.model}/fp32/dense/s0"]["test_acc"])
    print(f"\n{args.model}, {args.setting} policies, on {done['device']}: dense (no fine-tune) "
          f"{100 * done['dense_test_acc']:.2f}% here, {100 * table_dense:.2f}% in the table")
    header = " | ".join(f"{r[0]:g} ep @ {r[1]:g}, seed {ft_seed}" for r in recipes)
    print(f"| method | speedup here | {header} |")
    for method in policies:
        row = rows[method]
        accs = " | ".join(f"{100 * row['finetunes'][recipe_key(e, lr)]['test_accuracy']:.2f}%" for e, lr in recipes)
        print(f"| {method} | {row['speedup']:.2f}x | {accs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
