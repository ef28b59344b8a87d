"""Tune callback that turns every finished trial into an MLflow child run at once (driver side)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from automl.policy import CompressionPolicy
from automl.search.progress import SearchProgress
from automl.search.tracking_log import SearchTracker


class CandidateLogger(Callback):
    """Logs candidates in completion order; indices continue after those already logged (resume)."""

    def __init__(self, tracker: SearchTracker, offset: int, progress: SearchProgress):
        self.tracker = tracker
        self.next_index = offset
        self.progress = progress
        self.records: list[dict[str, Any]] = []

    def _log(self, trial, result: dict[str, Any] | None, error: str | None) -> None:
        policy = CompressionPolicy.from_dict(trial.config["policy"])
        result = dict(result or {})
        status = "failed" if error or result.get("status") != "ok" else "ok"
        error = error or result.get("error") or None
        metrics = {k: v for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _TUNE_KEYS}
        tags = {"automl.trial_id": trial.trial_id, "automl.origin": str(trial.config.get("origin", "agent"))}
        if "latency_ms" in metrics:
            tags["automl.latency_source"] = "predicted"
        index = self.next_index
        self.next_index += 1
        run_id = self.tracker.log_candidate(index=index, policy=policy, metrics=metrics, stage="proxy",
                                            status=status, error=error, tags=tags)
        record = {"index": index, "run_id": run_id, "policy": policy, "metrics": metrics, "status": status,
                  "error": error, "stage": "proxy"}
        self.records.append(record)
        self.progress.update(record)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._log(trial, trial.last_result, None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._log(trial, trial.last_result, f"trial failed after {trial.num_failures} attempt(s): "
                                            f"{(trial.error_file or 'worker died')}")


_TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
              "iterations_since_restore", "done", "date", "node_ip", "hostname", "trial_id", "experiment_tag",
              "checkpoint_dir_name"}
