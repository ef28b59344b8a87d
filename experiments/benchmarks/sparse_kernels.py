"""Benchmark: sparse_cpu kernels (issue 11) per layer and end to end.

    .venv/bin/python experiments/benchmarks/sparse_kernels.py layers --res 28 96 --threads 1 2 \
        [--out experiments/benchmarks/sparse_kernels_layers.json]
    .venv/bin/python experiments/benchmarks/sparse_kernels.py e2e --res 28 96 --batches 1 8 \
        [--out experiments/benchmarks/sparse_kernels_e2e.json]

layers: for ResNet-20 and MobileNetV2 (width 0.5) layer shapes at the given input resolutions, times
torch.conv2d (dense), onnxruntime (the dense layer as a one-node model; zeros do not make it faster) and the
sparse op at 50/75/90% sparsity for N = 1 (unstructured), 4 and 8 (1xN blocks), all in one process and
interleaved in rounds (each round times every variant once for `--reps` calls), so a slow spell on the shared
machine hits every variant alike; the figure is the median over all calls. ORT runs without spinning so it
does not fight torch's threads.

e2e: ResNet-20 and MobileNetV2 with every eligible conv (groups 1, more than 3 input channels) pruned to
75% in 1x4 blocks, on the sparse-cpu runtime (compiled and eager), against the dense model on
onnxruntime fp32 (the fastest dense runtime here, GUIDE §2) and int8; each timed in a fresh process by latency_models.compare, the
runtimes alternated for `--rounds` rounds, medians reported (random weights: only speed).

accuracy: the trained 28x28 Fashion-MNIST models pruned the same way by the compression engine (block1xn,
filter rearrangement), fine-tuned with the headline's recipe, then test accuracy and latency on sparse-cpu
vs dense onnxruntime fp32 / int8:

    .venv/bin/python experiments/benchmarks/sparse_kernels.py accuracy --models resnet20 mobilenetv2 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latency_models.sparse_kernels import load

SPARSITIES = (0.5, 0.75, 0.9)
BLOCKS = (1, 4, 8)

# (label, cin, cout, kernel, stride, spatial divisor of the input resolution)
LAYERS = [
    ("resnet20 l1 3x3 16-16", 16, 16, 3, 1, 1),
    ("resnet20 l2 3x3 32-32", 32, 32, 3, 1, 2),
    ("resnet20 l3 3x3 64-64", 64, 64, 3, 1, 4),
    ("resnet20 l2.0 3x3/2 16-32", 16, 32, 3, 2, 1),
    ("mbv2 expand 1x1 16-96", 16, 96, 1, 1, 2),
    ("mbv2 project 1x1 96-16", 96, 16, 1, 1, 2),
    ("mbv2 expand 1x1 32-192", 32, 192, 1, 1, 4),
    ("mbv2 project 1x1 192-32", 192, 32, 1, 1, 4),
]


def block_mask(shape: tuple[int, ...], sparsity: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """Exactly `sparsity` of the 1xn blocks (n=1: single weights) zeroed, at random positions."""
    cout, rest = shape[0], int(np.prod(shape[1:]))
    blocks = cout // n
    keep = torch.ones(blocks * rest)
    keep[torch.randperm(blocks * rest, generator=gen)[: int(round(sparsity * blocks * rest))]] = 0
    return keep.reshape(blocks, 1, rest).expand(blocks, n, rest).reshape(shape)


def _ort_session(conv: nn.Conv2d, x: torch.Tensor, threads: int):
    from latency_models.runtimes.ort import OnnxRuntime

    rt = OnnxRuntime(exporter="fast")
    return rt.load(rt.export(conv.eval(), x), threads)


def _dense_fn(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int):
    return lambda: F.conv2d(x, w, None, stride, padding)


def _sparse_fn(x: torch.Tensor, packed: tuple, cout: int, k: int, stride: int, n: int):
    idx, vals, ptr = packed
    return lambda: torch.ops.sparse_cpu.conv2d(x, idx, vals, ptr, None, cout, k, k, stride, k // 2, n, 0)


def bench_layers(resolutions: list[int], threads_list: list[int], reps: int, rounds: int) -> list[dict]:
    load()
    ops = torch.ops.sparse_cpu
    gen = torch.Generator().manual_seed(0)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for res in resolutions:
            for label, cin, cout, k, s, div in LAYERS:
                hw = res // div
                x = torch.randn(1, cin, hw, hw, generator=gen)
                conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
                w = conv.weight.detach()
                variants = {"torch.conv2d": _dense_fn(x, w, s, k // 2)}
                ort_run = _ort_session(conv, x, threads)
                xn = x.numpy()
                variants["onnxruntime"] = lambda xn=xn, f=ort_run: f(xn)
                for n in BLOCKS:
                    for sp in SPARSITIES:
                        ws = w * block_mask(tuple(w.shape), sp, n, gen)
                        idx, vals, ptr = ops.pack(ws, n)
                        variants[f"N={n} {int(sp * 100)}%"] = _sparse_fn(x, (idx, vals, ptr), cout, k, s, n)
                times: dict[str, list[float]] = {name: [] for name in variants}
                for fn in variants.values():  # warm-up
                    for _ in range(3):
                        fn()
                for _ in range(rounds):
                    for name, fn in variants.items():
                        for _ in range(reps):
                            t0 = time.perf_counter()
                            fn()
                            times[name].append(time.perf_counter() - t0)
                med = {name: statistics.median(ts) * 1e6 for name, ts in times.items()}
                row = {"layer": label, "res": res, "hw": hw, "threads": threads, "us": med,
                       "speedup_vs_torch": {k_: med["torch.conv2d"] / v for k_, v in med.items() if k_.startswith("N=")},
                       "speedup_vs_ort": {k_: med["onnxruntime"] / v for k_, v in med.items() if k_.startswith("N=")}}
                rows.append(row)
                print(f"t={threads} {res:3d}px {label:28s} dense {med['torch.conv2d']:7.1f}us "
                      f"ort {med['onnxruntime']:7.1f}us | "
                      + " ".join(f"{k_}:{v:.2f}" for k_, v in row["speedup_vs_torch"].items()), flush=True)
    return rows


def prune_blocks_(model: nn.Module, sparsity: float, n: int = 4) -> nn.Module:
    """Zero the weakest 1xn blocks (L1) of every eligible conv, in place."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 3 and m.out_channels % n == 0:
            w = m.weight.data
            score = w.abs().reshape(w.shape[0] // n, n, -1).sum(1)
            thr = score.flatten().kthvalue(max(1, int(score.numel() * sparsity))).values
            w.mul_((score > thr).float().unsqueeze(1).expand(-1, n, -1).reshape_as(w))
    return model


def bench_e2e(resolutions: list[int], batches: list[int], rounds: int, repeats: int,
              models: list[str]) -> list[dict]:
    from automl.models import build_model
    from latency_models import compare, register_runtime

    # the eager variant is not in the registry (the runtime compiles); the timing worker resolves it by path
    register_runtime("sparse-cpu-eager", "latency_models.sparse_kernels.runtime:SparseCpuEagerRuntime")
    rows = []
    for name in models:
        for res in resolutions:
            torch.manual_seed(0)
            dense = build_model(name, in_channels=1, num_classes=10, image_size=res).eval()
            sparse = prune_blocks_(copy.deepcopy(dense), 0.75)
            for batch in batches:
                variants = [("sparse-cpu", sparse, "fp32"),
                            ("sparse-cpu-eager", sparse, "fp32"),
                            ("onnxruntime", dense, "fp32"), ("onnxruntime", dense, "int8")]
                ms: dict[str, list[float]] = {}
                for _ in range(rounds):
                    for rt, model, prec in variants:
                        key = f"{rt} {prec}"
                        est = compare([model], (1, res, res), runtime=rt, batch=batch, threads=1, precision=prec,
                                      repeats=repeats)[0]
                        ms.setdefault(key, []).append(est.ms)
                med = {k: statistics.median(v) for k, v in ms.items()}
                row = {"model": name, "res": res, "batch": batch, "ms": med,
                       "sparse_vs_ort_fp32": med["onnxruntime fp32"] / med["sparse-cpu fp32"],
                       "sparse_vs_ort_int8": med["onnxruntime int8"] / med["sparse-cpu fp32"]}
                rows.append(row)
                print(f"{name} {res}px b{batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items())
                      + f" | sparse vs ORT fp32 {row['sparse_vs_ort_fp32']:.2f}x", flush=True)
    return rows


def bench_accuracy(models: list[str], sparsity: float, n: int, epochs: float, rounds: int, repeats: int,
                   threads: int, base_epochs: int = 3) -> list[dict]:
    """Trained zoo models (Fashion-MNIST checkpoints, by default the quickstart's 3-epoch ones): every
    eligible conv pruned to `sparsity` in 1xn blocks by the compression engine (`block1xn`, with filter rearrangement), the same
    fine-tune as the headline benchmark, then accuracy and latency on sparse-cpu vs dense onnxruntime."""
    from automl.data import load_dataset
    from automl.evaluation import finetune_and_test
    from automl.policy import CompressionPolicy, LayerDecision
    from automl.training import train_or_load
    from latency_models import compare
    from search_spaces import SearchSpace, apply_policy

    rows = []
    splits = load_dataset("fashion-mnist", seed=0)
    for name in models:
        ckpt = train_or_load(name, epochs=base_epochs, seed=0, threads=threads)
        torch.set_num_threads(threads)
        base = ckpt.model.eval()
        space = SearchSpace.from_model(base, name, splits.input_shape)
        layers = {}
        for lc in space.layers:
            info = lc.layer
            if (info.kind in ("conv3x3", "conv1x1") and info.groups == 1 and info.in_channels > 3
                    and info.out_channels % n == 0 and "block1xn" in lc.schemes):
                layers[info.name] = LayerDecision("block1xn", sparsity=sparsity, n=n)
        policy = CompressionPolicy(name, layers)
        ft = finetune_and_test(base, policy, splits, epochs=epochs, lr=0.01, seed=0)
        compressed = apply_policy(base, policy, splits.x_val[:1]).model.eval()
        ms: dict[str, list[float]] = {}
        for _ in range(rounds):
            for key, rt, model, prec in (("sparse-cpu", "sparse-cpu", compressed, "fp32"),
                                         ("onnxruntime fp32", "onnxruntime", base, "fp32"),
                                         ("onnxruntime int8", "onnxruntime", base, "int8")):
                est = compare([model], splits.input_shape, runtime=rt, batch=1, threads=1, precision=prec,
                              repeats=repeats)[0]
                ms.setdefault(key, []).append(est.ms)
        med = {k: statistics.median(v) for k, v in ms.items()}
        row = {"model": name, "layers_pruned": len(layers), "sparsity": sparsity, "n": n,
               "dense_test_acc": float(ckpt.meta["test_acc"]), "test_acc_before_ft": ft["test_accuracy_before"],
               "test_acc": ft["test_accuracy"], "base_epochs": base_epochs, "finetune_epochs": epochs, "ms": med,
               "sparse_vs_ort_fp32": med["onnxruntime fp32"] / med["sparse-cpu"],
               "sparse_vs_ort_int8": med["onnxruntime int8"] / med["sparse-cpu"]}
        rows.append(row)
        print(f"{name}: {len(layers)} convs at {sparsity:.0%} in 1x{n} blocks, test acc {100 * row['test_acc']:.2f}% "
              f"(dense {100 * row['dense_test_acc']:.2f}%, before FT {100 * row['test_acc_before_ft']:.2f}%); "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items())
              + f" | sparse vs ORT fp32 {row['sparse_vs_ort_fp32']:.2f}x", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["layers", "e2e", "accuracy"])
    p.add_argument("--res", type=int, nargs="+", default=[28, 96])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=20, help="layers: calls per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=100, help="e2e: timed calls per measurement")
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"], help="e2e: zoo models")
    p.add_argument("--sparsity", type=float, default=0.75, help="accuracy: block sparsity of every eligible conv")
    p.add_argument("--n", type=int, default=4, help="accuracy: block height")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="accuracy: the headline's fine-tune")
    p.add_argument("--base-epochs", type=int, default=3, help="accuracy: epochs of the trained base model")
    p.add_argument("--train-threads", type=int, default=2, help="accuracy: torch threads for fine-tuning")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.part == "layers":
        rows = bench_layers(args.res, args.threads, args.reps, args.rounds)
    elif args.part == "accuracy":
        rows = bench_accuracy(args.models, args.sparsity, args.n, args.finetune_epochs, max(1, args.rounds),
                              args.repeats, args.train_threads, args.base_epochs)
    else:
        rows = bench_e2e(args.res, args.batches, max(1, args.rounds), args.repeats, args.models)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
