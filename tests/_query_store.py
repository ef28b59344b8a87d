"""A small real MLflow store (sqlite in a temp dir) written in the documented layout
(docs/architecture.md, "MLflow layout"), shared by test_query, test_cli_query and test_service.

Written with MlflowClient directly, not with automl.search, so the reader is tested against the
documented contract rather than against whatever the writer happens to do today.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from automl.policy import CompressionPolicy, LayerDecision
from automl.tracking import ensure_experiment

DEVICE = "epyc-avx2"

# search key -> (model, dataset, device, candidates total)
SEARCHES = {
    "A": ("resnet20", "fashion-mnist", DEVICE, 5),
    "B": ("resnet20", "fashion-mnist", "other-device", 1),
    "C": ("resnet20", "cifar10", DEVICE, 1),
    "D": ("vgg11", "fashion-mnist", DEVICE, 1),
}

# (search, index, stage, status, accuracy, latency_ms, mac_ratio, size_bytes)
CANDIDATES = [
    ("A", 0, "proxy", "ok", 0.80, 0.50, 0.50, 200_000),
    ("A", 1, "proxy", "ok", 0.85, 0.70, 0.70, 250_000),
    ("A", 2, "proxy", "ok", 0.70, 0.30, 0.30, 100_000),
    ("A", 3, "proxy", "failed", 0.99, 0.10, 0.10, 50_000),
    ("A", 4, "proxy", "ok", 0.60, 0.60, 0.55, 210_000),
    ("A", 0, "finetuned", "ok", 0.84, 0.52, 0.50, 200_000),
    ("A", 1, "finetuned", "ok", 0.88, 0.72, 0.70, 250_000),
    ("B", 0, "proxy", "ok", 0.90, 2.00, 0.90, 300_000),
    ("C", 0, "proxy", "ok", 0.95, 0.10, 0.20, 100_000),
    ("D", 0, "proxy", "ok", 0.50, 1.00, 0.40, 900_000),
]

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def policy_for(model: str, index: int, stage: str) -> CompressionPolicy:
    """A distinct, valid policy per candidate index (the fine-tuned run carries the same policy)."""
    sparsity = round(0.1 * (index + 1), 2)
    layers = {
        "conv1": LayerDecision(),
        "layer1.0.conv1": LayerDecision(scheme="channel", sparsity=sparsity, align=8),
        "layer1.0.conv2": LayerDecision(scheme="pattern", sparsity=sparsity / 2, weight_bits=8, act_bits=8),
        "fc": LayerDecision(scheme="nm", n=2, m=4) if index % 2 else LayerDecision(scheme="unstructured",
                                                                                      sparsity=sparsity),
    }
    return CompressionPolicy(model=model, layers=layers, metadata={"candidate": index})


def make_store(root: Path) -> tuple[str, dict[str, str]]:
    """Create the store; returns (tracking uri, ids) with ids like 'A' (search) and 'A1f' / 'A1p' (candidates)."""
    uri = f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = ensure_experiment(client, "compress-search")  # artifacts beside the db, not in ./mlruns
    ids: dict[str, str] = {}
    for key, (model, dataset, device, total) in SEARCHES.items():
        run = client.create_run(exp, run_name=f"search-{key}", tags={
            "automl.role": "search", "automl.model": model, "automl.dataset": dataset, "automl.device": device,
            "automl.runtime": "onnxruntime", "automl.agent": "random", "automl.status": "finished",
            "automl.search_name": f"search-{key}"})
        sid = run.info.run_id
        client.set_tag(sid, "automl.search_id", sid)
        client.log_batch(sid, params=[Param("model.name", model), Param("candidates", str(total))])
        ids[key] = sid
    for key, index, stage, status, acc, lat, mac, size in CANDIDATES:
        sid = ids[key]
        model, dataset, device, _ = SEARCHES[key]
        tags = {"automl.role": "candidate", "mlflow.parentRunId": sid, "automl.search_id": sid,
                "automl.model": model, "automl.dataset": dataset, "automl.candidate": str(index),
                "automl.stage": stage, "automl.status": status,
                "automl.latency_source": "measured" if stage == "finetuned" else "predicted"}
        if status == "failed":
            tags["automl.error"] = "RuntimeError: simulated failure"
        run = client.create_run(exp, run_name=f"{stage}-{index:04d}", tags=tags)
        rid = run.info.run_id
        policy = policy_for(model, index, stage)
        metrics = {"accuracy": acc, "latency_ms": lat, "mac_ratio": mac, "size_bytes": size,
                   "proxy_accuracy": acc if stage == "proxy" else acc - 0.05}
        if stage == "finetuned":
            metrics["finetuned_accuracy"] = acc
        client.log_batch(rid, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                         params=[Param("policy.schemes", ",".join(sorted({d.scheme for _, d in policy})))],
                         tags=[RunTag("automl.note", "fixture")])
        client.log_text(rid, policy.to_json(), "policy.json")
        client.set_terminated(rid, status="FINISHED" if status == "ok" else "FAILED")
        ids[f"{key}{index}{stage[0]}"] = rid
    for key in SEARCHES:
        client.set_terminated(ids[key], status="FINISHED")
    return uri, ids
