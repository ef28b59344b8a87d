"""Depth vs width on onnxruntime fp32: how much latency ResNet-20's MACs buy when whole residual blocks are
dropped, against uniform channel pruning (issue 8's open question: the searches do not beat uniform channel
pruning on ResNet-20 fp32, and every channel-pruned pick keeps about half the channels).

    .venv/bin/python experiments/benchmarks/depth_vs_width.py [--processes 3]
    .venv/bin/python experiments/benchmarks/depth_vs_width.py --accuracy     # + fine-tuned test accuracy

Latency: a seeded, untrained ResNet-20 at 28x28 (weights do not change what onnxruntime executes), batch 1,
1 thread; every variant timed interleaved with the dense model in each timing process, the speedup the
median over processes of dense / variant. A dropped block is an identity (its input passes through;
ResNet-20's blocks 1 and 2 of each stage have identity shortcuts, so the shapes hold). Prints a markdown
table. `--accuracy` instead starts from the headline's base model (`train_or_load` resnet20, 3 epochs,
seed 0: the quickstart's checkpoint, trained if missing), times the variants near 2x, and gives each the
headline's ResNet-20 fine-tune (BN recalibrated, then 2 epochs at lr 0.05, seed 0): one seed, a hand
check of the depth lever, not a table row.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from automl.models import build_model, count_macs  # noqa: E402
from latency_models import compare  # noqa: E402
from search_spaces import apply_policy  # noqa: E402
from search_spaces.baselines import uniform  # noqa: E402

SHAPE = (1, 28, 28)


def drop_blocks(model: torch.nn.Module, blocks: list[str]) -> torch.nn.Module:
    """A copy of `model` with each named block ("layer2.1") replaced by an identity."""
    out = copy.deepcopy(model)
    for name in blocks:
        stage, index = name.split(".")
        getattr(out, stage)[int(index)] = torch.nn.Identity()
    return out


def mac_ratio(model: torch.nn.Module, dense: torch.nn.Module) -> float:
    return count_macs(model, SHAPE).total / count_macs(dense, SHAPE).total


def timed_speedups(models: list[torch.nn.Module], processes: int) -> tuple[float, str, list[list[float]]]:
    """Time `models` (the first is the dense reference) interleaved in each of `processes` timing processes:
    (the dense model's median ms, the device, per model the speedups vs dense in each process)."""
    runs = [compare(models, SHAPE, runtime="onnxruntime", batch=1, threads=1) for _ in range(processes)]
    speedups = [[r[0].ms / r[i].ms for r in runs] for i in range(len(models))]
    return statistics.median(r[0].ms for r in runs), runs[0][0].device, speedups


def variants(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    calib = torch.randn(16, *SHAPE)

    def channel(ratio: float) -> torch.nn.Module:
        policy = uniform(base, "channel", ratio, SHAPE, model_name="resnet20", align=8)
        return apply_policy(base, policy, calib[:1], calib=calib).model.eval()

    last = ["layer1.2", "layer2.2", "layer3.2"]
    out = {"dense": base,
           "drop 3 blocks (the last of each stage)": drop_blocks(base, last),
           "drop 6 blocks (all but the first of each stage)": drop_blocks(
               base, ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"])}
    for ratio in (0.5, 0.4, 0.3, 0.25):
        out[f"uniform channel, MAC target {ratio:g} (aligned to 8)"] = channel(ratio)
    out["uniform channel 0.5 + drop 3 blocks"] = drop_blocks(channel(0.5), last)
    return out


DROP4 = ["layer1.1", "layer1.2", "layer2.2", "layer3.2"]
DROP5 = DROP4 + ["layer2.1"]


def accuracy_variants(base: torch.nn.Module, splits) -> dict[str, object]:
    """Near-2x variants of the trained `base` as CompressedModels, BN recalibrated (what a fine-tune gets)."""
    from automl.evaluation import ProxyEvaluator, recalibrate_bn
    from automl.policy import CompressionPolicy
    from search_spaces.apply import CompressedModel

    ev = ProxyEvaluator(base, splits, val_images=len(splits.x_val), calib_batches=4)
    out: dict[str, object] = {}
    for ratio in (0.5, 0.4):
        policy = uniform(base, "channel", ratio, SHAPE, model_name="resnet20", align=8)
        out[f"uniform channel, MAC target {ratio:g} (aligned to 8)"] = ev.compress(policy)
    for label, blocks in (("drop 4 blocks (" + ", ".join(DROP4) + ")", DROP4), ("drop 5 blocks (+ layer2.1)", DROP5)):
        model = drop_blocks(base, blocks)
        recalibrate_bn(model, ev.calib)
        out[label] = CompressedModel(model.eval(), CompressionPolicy("resnet20"))
    return out


def accuracy(processes: int) -> int:
    from automl.data import load_dataset
    from automl.evaluation import finetune
    from automl.training import evaluate, train_or_load

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(2)
    base = train_or_load("resnet20", "fashion-mnist", epochs=3, seed=0, progress=log, threads=2).model.eval()
    splits = load_dataset("fashion-mnist", seed=0)
    dense_acc = evaluate(base, splits.x_test, splits.y_test)
    comp = accuracy_variants(base, splits)
    names = list(comp)
    dense_ms, device, speedups = timed_speedups([base] + [comp[n].model for n in names], processes)
    print(f"dense ResNet-20 (trained 3 epochs): test acc {100 * dense_acc:.2f}%, {dense_ms:.3f} ms ({device})\n")
    print("| variant | MAC ratio | speedup (median) | test acc before FT | after FT (2 epochs, lr 0.05) |")
    print("|---|---|---|---|---|")
    for name, sp in zip(names, speedups[1:], strict=True):
        c = comp[name]
        before = evaluate(c.model, splits.x_test, splits.y_test)
        log(f"fine-tuning {name}")
        finetune(c, splits, 2.0, lr=0.05, seed=0, progress=log)
        after = evaluate(c.model, splits.x_test, splits.y_test)
        print(f"| {name} | {mac_ratio(c.model, base):.3f} | {statistics.median(sp):.2f}x | {100 * before:.2f}% | "
              f"{100 * after:.2f}% |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=3, help="timing processes (median speedup)")
    ap.add_argument("--accuracy", action="store_true", help="trained base model, near-2x variants fine-tuned")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.accuracy:
        return accuracy(args.processes)
    torch.set_num_threads(1)
    base = build_model("resnet20", 1, 10, 28).eval()
    models = variants(base)
    dense_ms, device, speedups = timed_speedups(list(models.values()), args.processes)
    print(f"dense ResNet-20: {dense_ms:.3f} ms (onnxruntime fp32, batch 1, 1 thread; {device})\n")
    print("| variant | MAC ratio | speedup (median) | speedups per process | speedup x MAC ratio |")
    print("|---|---|---|---|---|")
    for (name, model), sp in zip(models.items(), speedups, strict=True):
        mac, med = mac_ratio(model, base), statistics.median(sp)
        print(f"| {name} | {mac:.3f} | {med:.2f}x | {', '.join(f'{s:.2f}' for s in sp)} | {med * mac:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
