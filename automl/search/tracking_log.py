"""MLflow bookkeeping of a search: one parent run per search, one child run per evaluated candidate.

Only the driver writes to MLflow (workers return plain dicts), so a cluster's workers never need to
reach the tracking store and two trials never race to create the schema. The layout (tags, params,
metrics, artifacts) is documented in docs/architecture.md and read back by automl.query.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from automl import __version__
from automl.policy import CompressionPolicy
from automl.tracking import ensure_experiment

ROLE, SEARCH_ID, STATUS = "automl.role", "automl.search_id", "automl.status"


def code_version() -> str:
    """git sha of the working tree when available (dirty marked), else the package version."""
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return f"{sha}{'-dirty' if dirty else ''} ({__version__})"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def _now_ms() -> int:
    return int(time.time() * 1000)


class SearchTracker:
    """Writes one search's runs. Created in the driver; holds an MlflowClient, no global mlflow state."""

    def __init__(self, tracking_uri: str, experiment: str):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = ensure_experiment(self.client, experiment)  # artifacts beside the store, not ./mlruns
        self.parent_id: str | None = None
        self.discarded: list[str] = []  # half-written child runs deleted on resume (completed_candidates)

    # ------------------------------------------------------------------ parent
    def start_parent(self, name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={ROLE: "search", STATUS: "running", "automl.search_name": name,
                                           "automl.code_version": code_version(), **tags})
        self.parent_id = run.info.run_id
        self.client.set_tag(self.parent_id, SEARCH_ID, self.parent_id)
        self._log_params(self.parent_id, params)
        return self.parent_id

    def attach_parent(self, run_id: str) -> None:
        """Continue an existing parent (resume, or a run pre-created by the HTTP service)."""
        run = self.client.get_run(run_id)
        self.parent_id = run.info.run_id
        self.client.set_tag(run_id, STATUS, "running")
        self.client.set_tag(run_id, SEARCH_ID, run_id)
        self.client.update_run(run_id, status="RUNNING")

    def update_parent_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_parent_params(self, params: dict[str, str]) -> None:
        existing = self.client.get_run(self.parent_id).data.params
        self._log_params(self.parent_id, {k: v for k, v in params.items() if k not in existing})

    def log_parent_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        ts = _now_ms()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                                                       if v is not None])

    def log_parent_text(self, text: str, name: str) -> None:
        self.client.log_text(self.parent_id, text, name)

    def log_parent_file(self, path: Path) -> None:
        self.client.log_artifact(self.parent_id, str(path))

    def finish_parent(self, status: str) -> None:
        mlflow_status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[status]
        self.client.set_tag(self.parent_id, STATUS, status)
        self.client.set_terminated(self.parent_id, status=mlflow_status)

    # ------------------------------------------------------------------ children
    def log_candidate(self, *, index: int, policy: CompressionPolicy, metrics: dict[str, float], stage: str,
                      status: str, error: str | None = None, tags: dict[str, str] | None = None,
                      artifacts: list[Path] | None = None) -> str:
        """One child run per evaluation; `stage` is proxy or finetuned."""
        base_tags = {ROLE: "candidate", SEARCH_ID: self.parent_id, "mlflow.parentRunId": self.parent_id,
                     "automl.candidate": str(index), "automl.stage": stage, STATUS: status,
                     "automl.model": policy.model}
        if error:
            base_tags["automl.error"] = error[:4000]
        run = self.client.create_run(self.experiment_id, run_name=f"{stage}-{index:04d}",
                                     tags={**base_tags, **(tags or {})})
        run_id = run.info.run_id
        ts = _now_ms()
        params = {f"policy.{k}": v for k, v in policy_params(policy).items()}
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items() if _is_number(v)],
            params=[Param(k, str(v)[:500]) for k, v in params.items()])
        self.client.log_text(run_id, policy.to_json(), "policy.json")
        for path in artifacts or []:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED" if status == "ok" else "FAILED")
        return run_id

    def completed_candidates(self, stage: str = "proxy") -> list[dict[str, Any]]:
        """Children already logged for this parent (used by --resume): index, policy, metrics, status.
        Half-written children (the driver was killed while logging one) are deleted and listed in
        `discarded`; only the driver that owns the search may call this."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SEARCH_ID}` = '{self.parent_id}' and tags.`{ROLE}` = 'candidate' "
                          f"and tags.`automl.stage` = '{stage}'",
            max_results=50_000)
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for run in runs:
                if run.info.status not in ("FINISHED", "FAILED"):
                    # `log_candidate` terminates a child last: one still RUNNING is a record a killed driver
                    # left half-written (no policy.json, say). It is deleted (MLflow keeps deleted runs
                    # restorable) and its candidate evaluated again, so the search never counts it twice.
                    self.client.delete_run(run.info.run_id)
                    self.discarded.append(run.info.run_id)
                    continue
                path = self.client.download_artifacts(run.info.run_id, "policy.json", tmp)
                out.append({"run_id": run.info.run_id, "index": int(run.data.tags["automl.candidate"]),
                            "policy": CompressionPolicy.load(path), "metrics": dict(run.data.metrics),
                            "status": run.data.tags.get(STATUS, "ok"), "error": run.data.tags.get("automl.error")})
        return sorted(out, key=lambda r: r["index"])

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k[:250], str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])


def policy_params(policy: CompressionPolicy) -> dict[str, Any]:
    """A readable flat summary of a policy for MLflow's params columns."""
    decisions = [d for _, d in policy]
    out: dict[str, Any] = dict(policy.summary())
    if decisions:
        out["mean_sparsity"] = round(sum(d.sparsity for d in decisions) / len(decisions), 4)
        bits = sorted({d.weight_bits for d in decisions if d.weight_bits is not None})
        out["weight_bits"] = ",".join(map(str, bits)) if bits else "float"
        out["schemes"] = ",".join(sorted({d.scheme for d in decisions}))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # drops NaN


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
