"""What one Ray Tune trial does: apply a candidate policy, evaluate it, cost it, report plain numbers.

A trial touches no MLflow and no agent; it gets everything through a picklable `TrialContext` that
Ray ships once through the object store (`tune.with_parameters`). Ordinary failures of a candidate
(an impossible policy, a NaN loss) are *reported* as failed results so the search goes on and the
error is recorded; only a dead worker process makes Tune retry the trial.
"""

from __future__ import annotations

import math
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from automl.policy import CompressionPolicy


@dataclass
class TrialContext:
    """Everything a worker needs, built once in the driver."""

    model_name: str
    model_kwargs: dict[str, int]
    base_state: dict[str, torch.Tensor]
    splits: Any  # automl.data.DatasetSplits cut down to the calibration and proxy-validation images
    space: Any  # search_spaces.SearchSpace
    profile: Any | None  # latency_models.DeviceProfile
    dense_macs: int
    calib_batches: int = 4
    proxy_finetune_steps: int = 0
    proxy_finetune_lr: float = 0.01
    threads: int = 1
    fault: dict[str, str] = field(default_factory=dict)  # test-only fault injection, read from env in the driver

    def build_base(self) -> torch.nn.Module:
        from automl.models import build_model

        model = build_model(self.model_name, **self.model_kwargs)
        model.load_state_dict(self.base_state)
        return model.eval()


def fault_settings_from_env() -> dict[str, str]:
    """AUTOML_TEST_KILL_PROPOSAL=k and AUTOML_TEST_FAULT_DIR=dir make the worker evaluating proposal k
    kill itself once (SIGKILL): a real worker death, used by the fault-tolerance tests."""
    keys = ("AUTOML_TEST_KILL_PROPOSAL", "AUTOML_TEST_FAULT_DIR", "AUTOML_TEST_SLEEP_S")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _maybe_inject_fault(ctx: TrialContext, proposal: int) -> None:
    if ctx.fault.get("AUTOML_TEST_SLEEP_S"):
        time.sleep(float(ctx.fault["AUTOML_TEST_SLEEP_S"]))
    target, fault_dir = ctx.fault.get("AUTOML_TEST_KILL_PROPOSAL"), ctx.fault.get("AUTOML_TEST_FAULT_DIR")
    if target is None or fault_dir is None or int(target) != proposal:
        return
    marker = Path(fault_dir) / f"killed-{proposal}"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def evaluate_policy(ctx: TrialContext, policy: CompressionPolicy) -> dict[str, Any]:
    """Proxy accuracy (BN recalibrated, optionally a few SGD steps) + analytic costs + predicted latency."""
    from automl.evaluation import ProxyEvaluator
    from search_spaces import cost_report

    torch.set_num_threads(ctx.threads)
    t0 = time.perf_counter()
    ctx.space.validate(policy)
    evaluator = ProxyEvaluator(ctx.build_base(), ctx.splits, val_images=len(ctx.splits.x_val),
                               calib_batches=ctx.calib_batches, finetune_steps=ctx.proxy_finetune_steps,
                               finetune_lr=ctx.proxy_finetune_lr)
    accuracy = evaluator(policy)["accuracy"]
    if not math.isfinite(accuracy):
        raise FloatingPointError(f"proxy accuracy is {accuracy}")
    costs = cost_report(ctx.space, policy)
    metrics: dict[str, Any] = {
        "accuracy": accuracy, "proxy_accuracy": accuracy, "macs": costs.effective_macs,
        "mac_ratio": costs.mac_ratio, "params": costs.params, "size_bytes": costs.size_bytes,
    }
    if ctx.profile is not None:
        from latency_models import predict_policy

        estimate = predict_policy(ctx.profile, ctx.space, policy)
        metrics.update(latency_ms=estimate.ms, latency_ms_predicted=estimate.ms, latency_std_ms=estimate.std_ms)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune trainable (function API)."""
    from ray import tune

    _maybe_inject_fault(ctx, int(config.get("proposal", -1)))
    try:
        policy = CompressionPolicy.from_dict(config["policy"])
        result = {**evaluate_policy(ctx, policy), "status": "ok", "error": ""}
    except Exception as exc:  # a bad candidate is a recorded result, not a crashed search
        tb = traceback.format_exc(limit=4)
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tb}", "accuracy": 0.0}
    tune.report(result)


def proxy_subset(splits: Any, val_images: int, calib_batches: int, batch_size: int = 128,
                 finetune_steps: int = 0) -> Any:
    """The few images a trial needs (calibration, proxy fine-tune steps, proxy validation), so Ray ships
    megabytes, not the dataset."""
    from dataclasses import replace

    n_calib = min(len(splits.x_train), batch_size * max(1, calib_batches, finetune_steps))
    empty = splits.x_test[:0]
    return replace(splits, x_train=splits.x_train[:n_calib].clone(), y_train=splits.y_train[:n_calib].clone(),
                   x_val=splits.x_val[:val_images].clone(), y_val=splits.y_val[:val_images].clone(),
                   x_test=empty.clone(), y_test=splits.y_test[:0].clone())
