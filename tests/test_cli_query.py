"""`automl best` and `automl compare` as real subprocesses against a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _query_store import DEVICE, make_store, policy_for
from PIL import Image

from automl.policy import CompressionPolicy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("mlflow"))


def automl(*args: str, uri: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    extra = ["--tracking-uri", uri] if uri else []
    return subprocess.run([sys.executable, "-m", "automl", *args, *extra], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=120)


def test_best_json_and_out(store, tmp_path):
    uri, ids = store
    out = tmp_path / "policy.json"
    r = automl("best", "--model", "resnet20", "--dataset", "fashion-mnist", "--device", DEVICE,
               "--max-latency-ms", "0.6", "--format", "json", "--out", str(out), uri=uri)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["run_id"] == ids["A0f"] and data["stage"] == "finetuned" and data["fine_tuned"] is True
    assert data["latency_ms"] <= 0.6 and data["constraints"] == {"max_latency_ms": 0.6}
    assert CompressionPolicy.load(out) == policy_for("resnet20", 0, "finetuned")
    assert CompressionPolicy.from_dict(data["policy"]) == CompressionPolicy.load(out)


def test_best_table_says_proxy(store):
    uri, ids = store
    r = automl("best", "--model", "resnet20", "--max-mac-ratio", "0.35", "--dataset", "fashion-mnist", uri=uri)
    assert r.returncode == 0, r.stderr
    assert ids["A2p"] in r.stdout and "proxy accuracy, not fine-tuned" in r.stdout


def test_best_nothing_fits_exit_1(store):
    uri, _ = store
    r = automl("best", "--model", "resnet20", "--max-latency-ms", "0.6", "--min-accuracy", "0.85",
               "--dataset", "fashion-mnist", "--device", DEVICE, uri=uri)
    assert r.returncode == 1
    assert "no policy for model 'resnet20'" in r.stderr and "accuracy >= 0.85" in r.stderr and r.stdout == ""
    r = automl("best", "--model", "nosuchmodel", uri=uri)
    assert r.returncode == 1 and "no tracked search" in r.stderr


def test_best_rejects_bad_flags(store):
    uri, _ = store
    r = automl("best", "--model", "resnet20", "--max-latency-ms", "-3", uri=uri)
    assert r.returncode == 2 and "--max-latency-ms" in r.stderr
    r = automl("best", "--model", "resnet20", "--min-accuracy", "87", uri=uri)
    assert r.returncode == 2 and "--min-accuracy" in r.stderr


def test_compare_writes_checked_png(store, tmp_path):
    uri, ids = store
    png = tmp_path / "plots" / "pareto.png"
    r = automl("compare", ids["A"], ids["C0p"], "--out", str(png), "--format", "json", uri=uri)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["plot"] == str(png)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] >= 300
        img.verify()
    with Image.open(png) as img:
        drawn = json.loads(img.text["Description"])  # what save_pareto_plot drew, carried in the file
        pixels = img.convert("RGB")
        reds = sum(1 for px in pixels.getdata() if px[0] > 180 and px[1] < 60 and px[2] < 90)
    assert drawn["xlabel"] == "latency (ms)" and drawn["ylabel"] == "accuracy"
    points = sorted((p["x"], p["y"]) for p in drawn["points"])
    assert points == [(0.1, 0.95), (0.3, 0.7), (0.52, 0.84), (0.6, 0.6), (0.72, 0.88)]
    # C0p (0.1 ms, 0.95) dominates every point of search A, so the front is that single point
    assert drawn["front"] == [[0.1, 0.95]]
    assert [p["run_id"] for p in drawn["points"] if p["on_front"]] == [ids["C0p"]]
    assert reds > 20, "the Pareto front is highlighted in crimson"
    assert {e["run_id"] for e in data["entries"]} == {ids[k] for k in ("A0f", "A1f", "A2p", "A4p", "C0p")}


def test_compare_two_policies_shows_layers(store):
    uri, ids = store
    r = automl("compare", ids["A1f"], ids["A2p"], uri=uri)
    assert r.returncode == 0, r.stderr
    assert "per layer" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("fc "))
    assert "nm 2:4" in line and "unstructured s=0.30" in line
    assert ids["A1f"] in r.stdout and ids["A2p"] in r.stdout


def test_compare_unknown_id(store):
    uri, _ = store
    r = automl("compare", "f" * 32, uri=uri)
    assert r.returncode == 2 and "no run with id" in r.stderr
