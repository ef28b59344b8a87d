"""Every pruning scheme applied uniformly to ResNet-20 / Fashion-MNIST at 50% MACs: accuracy right after
pruning, after layer-wise least-squares reconstruction (no training), and after a 1-epoch fine-tune;
plus the global-magnitude baseline. Writes the table into docs/benchmarks.md.

    .venv/bin/python experiments/benchmarks/schemes_resnet20.py            # ~25 min on 2 quiet cores

The base model is the quickstart's `automl train --model resnet20 --epochs 3` (all training images; reused
from the checkpoint cache, trained here if missing). Every accuracy is measured after BatchNorm
recalibration on the calibration images (what the search's proxy does: stale BN statistics alone cost
tens of points after pruning and would hide the scheme's own effect).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from automl.data import load_dataset  # noqa: E402
from automl.evaluation import recalibrate_bn  # noqa: E402
from automl.training import TrainConfig, evaluate, train_epochs, train_or_load  # noqa: E402
from search_spaces import SearchSpace, apply_policy, cost_report  # noqa: E402
from search_spaces.baselines import global_magnitude, reconstruct, uniform  # noqa: E402

SECTION = "## Compression schemes at 50% MACs (issue 3)"
SCHEMES = ("unstructured", "channel", "nm", "block1xn", "pattern", "block_punched")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3, help="base model epochs (checkpoint key)")
    ap.add_argument("--train-limit", type=int, default=0,
                    help="base model training images (checkpoint key; 0 = all)")
    ap.add_argument("--finetune-limit", type=int, default=20000,
                    help="training+validation images loaded; the fine-tune uses the training part")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=512, help="calibration images for reconstruction")
    ap.add_argument("--threads", type=int, default=1, help="1: OpenMP barriers crawl on shared cores")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    ckpt = train_or_load("resnet20", epochs=args.epochs, limit=args.train_limit or None)
    dense = ckpt.model.eval()
    data = load_dataset("fashion-mnist", limit=args.finetune_limit, test_limit=args.test_limit, seed=0)
    shape = data.input_shape
    calib = data.x_train[:args.calib]
    space = SearchSpace.from_model(dense, "resnet20", shape)
    base_acc = evaluate(dense, data.x_test, data.y_test)
    print(f"base: {ckpt.path} test acc {base_acc:.4f} (on {len(data.x_test)} images)", flush=True)

    policies = [(f"uniform {s}", uniform(dense, s, args.target, shape, model_name="resnet20", align=8
                                         if s == "channel" else None)) for s in SCHEMES]
    policies.append(("global magnitude (unstructured)", global_magnitude(dense, args.target, shape,
                                                                         model_name="resnet20")))
    rows = []
    for label, policy in policies:
        t0 = time.perf_counter()
        ratio = cost_report(space, policy).mac_ratio
        compressed = apply_policy(dense, policy, data.x_test[:1])
        recalibrate_bn(compressed.model, calib)
        acc_pruned = evaluate(compressed.model, data.x_test, data.y_test)
        recon_model = copy.deepcopy(compressed.model)
        rec = reconstruct(recon_model, dense, calib, masks=compressed.masks)
        recalibrate_bn(recon_model, calib)
        acc_recon = evaluate(recon_model, data.x_test, data.y_test)
        config = TrainConfig(epochs=args.finetune_epochs, lr=0.01, seed=0)
        train_epochs(compressed.model, data.x_train, data.y_train, config, after_step=compressed.reapply_masks)
        acc_ft = evaluate(compressed.model, data.x_test, data.y_test)
        recon_masks = copy.deepcopy(compressed)
        recon_masks.model, recon_masks._modules = recon_model, {}
        train_epochs(recon_model, data.x_train, data.y_train, config, after_step=recon_masks.reapply_masks)
        acc_recon_ft = evaluate(recon_model, data.x_test, data.y_test)
        params = sum(p.numel() for p in compressed.model.parameters())
        detail = _detail(policy)
        row = {"policy": label, "detail": detail, "mac_ratio": ratio, "params": params, "pruned": acc_pruned,
               "recon": acc_recon, "n_recon": len(rec.reconstructed), "finetuned": acc_ft,
               "recon_ft": acc_recon_ft,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{label:34s} {detail:28s} MACs {ratio:.3f} pruned {acc_pruned:.4f} recon {acc_recon:.4f} "
              f"({len(rec.reconstructed)} layers) ft {acc_ft:.4f} recon+ft {acc_recon_ft:.4f} [{row['seconds']:.0f}s]", flush=True)
    wall = time.perf_counter() - t_start
    if not args.no_docs:
        write_docs(rows, base_acc, ckpt, args, wall, len(data.x_train), len(data.x_test))
    print(f"wall time {wall:.0f}s")


def _detail(policy) -> str:
    decisions = [d for _, d in policy]
    if not decisions:
        return "dense"
    d = max(decisions, key=lambda d: sum(1 for e in decisions if e == d))
    if d.scheme == "nm":
        return f"{d.n}:{d.m}"
    parts = [f"s={d.sparsity:.2f}"] if d.scheme != "unstructured" or policy.metadata.get("baseline", "").startswith(
        "uniform") else ["per-layer s"]
    if d.scheme == "block1xn":
        parts.append(f"n={d.n}")
    if d.scheme == "block_punched":
        parts.append(f"block={d.block[0]}x{d.block[1]}")
    if d.scheme == "channel":
        parts.append(f"align={d.align}")
    if d.scheme == "pattern":
        parts.append(f"{d.pattern_size}-entry patterns")
    return ", ".join(parts)


def write_docs(rows, base_acc, ckpt, args, wall, n_train, n_test) -> None:
    lines = [SECTION, "",
             f"Command: `.venv/bin/python experiments/benchmarks/schemes_resnet20.py` (wall time {wall / 60:.1f} min "
             f"on {platform.machine()}, {os.cpu_count()} vCPU, {args.threads} torch thread(s)).",
             "",
             f"Base: ResNet-20 from `automl train --model resnet20 --epochs {args.epochs}"
             + (f" --limit {args.train_limit}" if args.train_limit else "") + "` "
             f"({Path(ckpt.path).name}), test accuracy {100 * base_acc:.2f}% on the first {n_test} test images. "
             f"Each scheme is applied uniformly (same scheme and sparsity on every layer that offers it, others "
             f"dense) at the sparsity that brings effective MACs (`search_spaces.costs`) to {args.target:.0%} of "
             f"dense. Every column is measured after BatchNorm recalibration on the {args.calib} calibration "
             f"images. *pruned*: no training. *recon*: layer-wise least-squares reconstruction of the kept "
             f"weights on {args.calib} unlabeled training images (`search_spaces.baselines.reconstruct`, "
             f"OBS/OBC-style, masks kept; layers whose own output channels were removed are skipped). "
             f"*fine-tuned*: {args.finetune_epochs} epoch on {n_train} training images, SGD lr 0.01 cosine, masks "
             f"re-applied after every step, starting from *pruned*; *recon + fine-tuned*: the same fine-tune "
             f"starting from *recon*.",
             "",
             "| policy | parameters | MAC ratio | params | pruned | recon (layers) | fine-tuned | recon + fine-tuned |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['detail']} | {r['mac_ratio']:.3f} | {r['params']:,} | "
                     f"{100 * r['pruned']:.2f}% | {100 * r['recon']:.2f}% ({r['n_recon']}) | "
                     f"{100 * r['finetuned']:.2f}% | {100 * r['recon_ft']:.2f}% |")
    lines += ["", "Notes: N:M and pattern densities are fixed by their parameters, so those rows sit at the "
              "nearest reachable ratio. MAC ratio is *effective* MACs (a kernel that skips every pruned "
              "weight); only `channel` shrinks the dense model (params column), the mask schemes keep dense "
              "shapes and need a sparse kernel for any speedup (see GUIDE §2).", ""]
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = "\n".join(lines)
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
