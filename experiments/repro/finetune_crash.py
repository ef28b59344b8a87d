"""Reproduction (open bug, 2026-12-06, AMD EPYC 2-vCPU host): fine-tuning the quickstart's best candidate
(`finetune_crash_policy.json`: mixed channel / N:M / pattern / block schemes with 4-, 6- and 8-bit fake
quantization) hangs in autograd's backward with 2 torch threads (CPU busy, Ctrl-C ignored: `make run`
sat 20 min in the fine-tune) and aborts with `free(): invalid next size` with 1 thread: heap corruption
in a native op of the forward/backward, within the first few SGD steps. Not yet narrowed to the layer or
op; first suspects: the fake-quant ops at 4 / 6 bits, the pattern / block-punched masks.

    .venv/bin/python experiments/repro/finetune_crash.py [--threads 1]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from automl.data import load_dataset  # noqa: E402
from automl.evaluation import ProxyEvaluator  # noqa: E402
from automl.policy import CompressionPolicy  # noqa: E402
from automl.training import train_or_load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    faulthandler.enable()
    faulthandler.dump_traceback_later(60, exit=True)  # a hang prints where it is stuck
    torch.set_num_threads(args.threads)
    policy = CompressionPolicy.from_dict(json.loads((HERE / "finetune_crash_policy.json").read_text()))
    base = train_or_load("resnet20", "fashion-mnist", epochs=3, seed=0).model
    splits = load_dataset("fashion-mnist", seed=0, limit=2000)
    compressed = ProxyEvaluator(base, splits, val_images=100, calib_batches=1).compress(policy)
    model = compressed.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = splits.x_train[:128], splits.y_train[:128]
    for step in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        compressed.reapply_masks()
        print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.2f} s)", flush=True)
    print("no crash in", args.steps, "steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
