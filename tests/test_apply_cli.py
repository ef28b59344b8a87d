"""`automl apply` end to end, in a real subprocess, on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automl.policy import CompressionPolicy, LayerDecision

AUTOML = [sys.executable, "-m", "automl"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from automl.training import train_or_load

    cache = tmp_path_factory.mktemp("ckpt")
    ckpt = train_or_load("resnet20", epochs=1, limit=1000, cache_dir=cache, progress=None)
    return ckpt.path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(AUTOML + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_apply_prunes_quantizes_finetunes_and_exports(checkpoint, tmp_path):
    policy = CompressionPolicy("resnet20", layers={
        "layer1.0.conv1": LayerDecision("channel", sparsity=0.5, align=4),
        "layer2.1.conv1": LayerDecision("unstructured", sparsity=0.7, weight_bits=8, act_bits=8),
        "layer3.0.conv2": LayerDecision("nm", n=2, m=4, weight_bits=8, act_bits=8),
    })
    policy_path = policy.save(tmp_path / "policy.json")
    out = tmp_path / "out"
    proc = _run(["apply", str(policy_path), "--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                 "--finetune-epochs", "1", "--limit", "400", "--test-limit", "200", "--calib-size", "64",
                 "--format", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["macs_after"] < report["macs_before"]
    assert report["params_after"] < report["params_before"]
    assert report["effective_mac_ratio"] < report["mac_ratio_physical"] < 1.0
    assert report["size_bytes_after"] < report["size_bytes_before"]
    for key in ("acc_before", "acc_applied", "acc_finetuned", "acc_int8_onnx"):
        assert 0.0 <= report[key] <= 1.0, key
    for f in ("model.pt", "policy.json", "report.json", "model.onnx", "model.int8.onnx"):
        assert (out / f).is_file(), f
    saved = torch.load(out / "model.pt", weights_only=False)
    model = saved["model"].eval()
    assert model.layer1[0].conv1.out_channels == 8  # half of 16, a multiple of align=4
    w = model.layer2[1].conv1.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01)  # mask survived fine-tuning
    assert (saved["masks"]["layer3.0.conv2"].reshape(64, -1, 4).sum(-1) <= 2).all()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert CompressionPolicy.load(out / "policy.json") == policy


def test_apply_text_output(checkpoint, tmp_path):
    policy = CompressionPolicy("resnet20", default=LayerDecision("unstructured", sparsity=0.5))
    path = policy.save(tmp_path / "p.json")
    proc = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--test-limit", "100", "--limit", "200"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MACs" in proc.stdout and "accuracy" in proc.stdout and "model.pt" in proc.stdout


@pytest.mark.parametrize("layers, message", [
    ({"layer9.conv": {"scheme": "unstructured", "sparsity": 0.5}}, "layer9.conv"),
    ({"layer2.0.shortcut.0": {"scheme": "pattern", "sparsity": 0.2}}, "pattern"),
    ({"layer1.0.conv1": {"scheme": "nm", "n": 2, "m": 5}}, "m=5"),
])
def test_apply_clear_errors(checkpoint, tmp_path, layers, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema_version": 1, "model": "resnet20", "layers": layers}))
    proc = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--test-limit", "50", "--limit", "100"], tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_apply_wrong_model_and_missing_checkpoint(checkpoint, tmp_path):
    path = CompressionPolicy("vgg8").save(tmp_path / "p.json")
    proc = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")], tmp_path)
    assert proc.returncode == 2 and "vgg8" in proc.stderr and "resnet20" in proc.stderr
    proc = _run(["apply", str(path), "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")],
                tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
