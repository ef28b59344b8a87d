"""`automl latency measure | profile | predict | refit` through the real CLI (separate processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_latency_profile import _synthetic_other_kernels, fixture_samples, here_profile

from latency_models import DeviceProfile, LatencyEstimate, PairStore

pytestmark = pytest.mark.slow
TESTS_DIR = Path(__file__).parent


def automl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "automl", "latency", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("automl latency: error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    """A profile stamped as measured here, from the recorded fixture's samples (plus synthetic non-conv
    kernels, never used for a figure): the CLI's predict / refit paths without minutes of profiling."""
    path = tmp_path_factory.mktemp("profile") / "here.json"
    here_profile(fixture_samples() + _synthetic_other_kernels()).save(path)
    return path


def test_measure_prints_a_labelled_measured_figure():
    result = automl("measure", "--model", "resnet20", "--format", "json")
    assert result.returncode == 0, result.stderr
    est = json.loads(result.stdout)
    assert est["source"] == "measured" and est["runtime"] == "onnxruntime" and est["model"] == "resnet20"
    assert (est["batch"], est["threads"], est["precision"]) == (1, 1, "fp32")
    assert 0 < est["p25_ms"] <= est["ms"] <= est["p75_ms"]


def test_predict_and_calibrate_at_the_dense_model(profile_path, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"schema_version": 1, "model": "resnet20", "default": {"scheme": "dense"},
                                  "layers": {"layer3.0.conv1": {"scheme": "channel", "sparsity": 0.5, "align": 8}},
                                  "metadata": {}}))
    args = ("predict", "--profile", str(profile_path), "--model", "resnet20")
    plain = automl(*args, "--policy", str(policy), "--format", "json")
    assert plain.returncode == 0, plain.stderr
    est = json.loads(plain.stdout)
    assert est["source"] == "predicted" and est["ms"] > 0 and est["prediction_cost_ms"] > 0
    assert "calibration" not in est
    # --calibrate measures the dense model now and scales every prediction by measured / predicted of it
    cal = automl(*args, "--policy", str(policy), "--calibrate", "--format", "json")
    assert cal.returncode == 0, cal.stderr
    calibrated = json.loads(cal.stdout)
    c = calibrated["calibration"]
    assert c["dense_measured_ms"] > 0 and c["dense_predicted_ms"] > est["ms"]  # the pruned policy is faster
    assert c["factor"] == pytest.approx(c["dense_measured_ms"] / c["dense_predicted_ms"], rel=1e-4)
    assert calibrated["ms"] == pytest.approx(c["factor"] * est["ms"], rel=1e-4)
    assert calibrated["source"] == "predicted"
    text = automl(*args, "--calibrate")  # the dense model, as text
    assert text.returncode == 0 and "calibrated at the dense model" in text.stdout and "predicted" in text.stdout


def test_refit_from_pairs_writes_a_recalibrated_profile(profile_path, tmp_path):
    pairs = PairStore(tmp_path / "pairs.jsonl")
    for raw in (0.5, 1.0, 2.0):
        common = {"device": "d", "runtime": "onnxruntime", "batch": 1, "threads": 1, "precision": "fp32"}
        pairs.add(LatencyEstimate(ms=raw, std_ms=0.0, source="predicted", **common),
                  LatencyEstimate(ms=1.2 * raw, std_ms=0.0, source="measured", **common), raw_predicted_ms=raw)
    out = tmp_path / "refit.json"
    result = automl("refit", "--profile", str(profile_path), "--pairs", str(pairs.path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pairs"] == 3 and report["within_10pct_after"] == 1.0
    assert DeviceProfile.load(out).calibration[0] == pytest.approx(1.2, rel=1e-6)


def test_profile_writes_a_small_profile_and_predict_reads_it(tmp_path):
    out = tmp_path / "p.json"
    result = automl("profile", "--minutes", "0.05", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["profile"] == str(out) and summary["n_samples"] > 0 and summary["runtime"] == "onnxruntime"
    assert out.is_file() and Path(str(out) + ".samples.jsonl").is_file()
    assert "layout_block" in summary and "profile:" in result.stderr  # progress on stderr


def test_errors_are_one_line(profile_path, tmp_path):
    missing = one_line_error(automl("predict", "--profile", str(tmp_path / "none.json"), "--model", "resnet20"))
    assert "none.json" in missing and "automl latency profile" in missing
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "model": "resnet20", "default": {"scheme": "dense"},
                               "layers": {"no.such.layer": {"scheme": "channel", "sparsity": 0.5}}, "metadata": {}}))
    unknown = one_line_error(automl("predict", "--profile", str(profile_path), "--model", "resnet20",
                                    "--policy", str(bad)))
    assert "no.such.layer" in unknown and "does not fit resnet20" in unknown
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no pairs" in one_line_error(automl("refit", "--profile", str(profile_path), "--pairs", str(empty)))
