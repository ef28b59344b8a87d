"""Depth vs width on onnxruntime fp32: how much latency ResNet-20's MACs buy when whole residual blocks are
dropped, against uniform channel pruning (issue 8's open question: the searches do not beat uniform channel
pruning on ResNet-20 fp32, and every channel-pruned pick keeps about half the channels).

    .venv/bin/python experiments/benchmarks/depth_vs_width.py [--processes 3]

Latency only (weights do not change what onnxruntime executes): a seeded, untrained ResNet-20 at 28x28,
batch 1, 1 thread; every variant timed interleaved with the dense model in each timing process, the
speedup the median over processes of dense / variant. A dropped block is an identity (its input passes
through; ResNet-20's blocks 1 and 2 of each stage have identity shortcuts, so the shapes hold). Prints a
markdown table.
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

from automl.models import build_model  # noqa: E402
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


def conv_linear_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of the convs and linears of one forward pass at batch 1."""
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(1, *SHAPE))
    for h in handles:
        h.remove()
    return total


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=3, help="timing processes (median speedup)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    base = build_model("resnet20", 1, 10, 28).eval()
    models = variants(base)
    names = list(models)
    dense_macs = conv_linear_macs(base)
    runs = [compare([models[n] for n in names], SHAPE, runtime="onnxruntime", batch=1, threads=1)
            for _ in range(args.processes)]
    dense_ms = statistics.median(r[0].ms for r in runs)
    print(f"dense ResNet-20: {dense_ms:.3f} ms (onnxruntime fp32, batch 1, 1 thread; {runs[0][0].device})\n")
    print("| variant | MAC ratio | speedup (median) | speedups per process | speedup x MAC ratio |")
    print("|---|---|---|---|---|")
    for i, name in enumerate(names):
        speedups = [r[0].ms / r[i].ms for r in runs]
        mac = conv_linear_macs(models[name]) / dense_macs
        sp = statistics.median(speedups)
        print(f"| {name} | {mac:.3f} | {sp:.2f}x | {', '.join(f'{s:.2f}' for s in speedups)} | {sp * mac:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
