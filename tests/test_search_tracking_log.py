"""The search's MLflow records (automl.search.tracking_log) on a real sqlite store."""

from __future__ import annotations

from mlflow import MlflowClient

from automl.policy import CompressionPolicy
from automl.search.tracking_log import SearchTracker


def _tracker(tmp_path) -> SearchTracker:
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "compress-search")
    tracker.start_parent("resumable", tags={}, params={})
    return tracker


def test_resume_reads_back_what_was_logged(tmp_path):
    tracker = _tracker(tmp_path)
    policy = CompressionPolicy.from_dict({"schema_version": 1, "model": "resnet20", "default": {"scheme": "dense"},
                                         "layers": {"conv1": {"scheme": "channel", "sparsity": 0.5}}})
    tracker.log_candidate(index=0, policy=policy, metrics={"accuracy": 0.8}, stage="proxy", status="ok")
    tracker.log_candidate(index=1, policy=policy, metrics={}, stage="proxy", status="failed", error="boom")
    done = tracker.completed_candidates("proxy")
    assert [(r["index"], r["status"], r["error"]) for r in done] == [(0, "ok", None), (1, "failed", "boom")]
    assert done[0]["policy"] == policy and done[0]["metrics"] == {"accuracy": 0.8}
    assert tracker.completed_candidates("finetuned") == [] and tracker.discarded == []


def test_a_child_half_written_by_a_killed_driver_is_discarded_not_fatal(tmp_path):
    """The kill/resume e2e test once hit this window: SIGKILL after the child run existed, before its
    policy.json; the resumed driver then died on the missing artifact."""
    tracker = _tracker(tmp_path)
    policy = CompressionPolicy.from_dict({"schema_version": 1, "model": "resnet20", "default": {"scheme": "dense"},
                                         "layers": {}})
    kept = tracker.log_candidate(index=0, policy=policy, metrics={"accuracy": 0.5}, stage="proxy", status="ok")
    # what log_candidate had written when the driver was killed: the tagged run, no artifact, not terminated
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    half = client.create_run(tracker.experiment_id, tags={
        "automl.role": "candidate", "automl.search_id": tracker.parent_id, "mlflow.parentRunId": tracker.parent_id,
        "automl.candidate": "1", "automl.stage": "proxy", "automl.status": "ok"}).info.run_id

    resumed = SearchTracker(tracker.tracking_uri, "compress-search")
    resumed.attach_parent(tracker.parent_id)
    done = resumed.completed_candidates("proxy")
    assert [r["run_id"] for r in done] == [kept]
    assert resumed.discarded == [half]
    assert client.get_run(half).info.lifecycle_stage == "deleted"
    # and a second resume sees a clean history
    assert [r["run_id"] for r in resumed.completed_candidates("proxy")] == [kept]
