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


CHECK_SPARSE_ARTIFACT = """
import sys, torch
torch.set_num_threads(1)
sparse = torch.load(sys.argv[1], weights_only=False).eval()
masked = torch.load(sys.argv[2], weights_only=False)["model"].eval()
kinds = sorted({type(m).__name__ for m in sparse.modules() if 'Sparse' in type(m).__name__})
x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    ref, got = masked(x), sparse(x)
print(kinds, float((got - ref).norm() / ref.norm()))
"""


def test_apply_writes_the_sparse_cpu_model_and_its_kernel_map(checkpoint, tmp_path):
    policy = CompressionPolicy("resnet20", layers={
        "layer1.0.conv1": LayerDecision("block1xn", sparsity=0.75, n=4),   # 1x4 blocks -> N=4
        "layer2.1.conv2": LayerDecision("block1xn", sparsity=0.6, n=8),    # 1x8 blocks run as 1x4
        "layer3.0.conv1": LayerDecision("unstructured", sparsity=0.8),     # no blocks -> N=1
        "layer3.1.conv1": LayerDecision("unstructured", sparsity=0.3),     # too dense to pay: stays dense
        "layer2.0.shortcut.0": LayerDecision("block_punched", sparsity=0.75, block=(4, 4)),  # rows of 4
    })
    path = policy.save(tmp_path / "p.json")
    out = tmp_path / "o"
    proc = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(out), "--runtime", "sparse-cpu",
                 "--test-limit", "50", "--limit", "100", "--format", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    layers = report["runtime"]["layers"]
    assert layers["layer1.0.conv1"]["kernel"] == "sparse N=4"
    assert layers["layer2.1.conv2"]["kernel"] == "sparse N=4"
    assert layers["layer2.0.shortcut.0"]["kernel"] == "sparse N=4"
    assert layers["layer3.0.conv1"]["kernel"] == "sparse N=1"
    assert layers["layer3.1.conv1"]["kernel"] == "dense" and "< 0.75 needed for N=1" in layers["layer3.1.conv1"]["why"]
    assert layers["layer1.1.conv1"]["kernel"] == "dense" and layers["fc"]["kernel"] == "dense"
    assert report["runtime"]["max_rel_err"] <= 1e-4
    sparse_file = out / "model.sparse-cpu.pt"
    assert report["files"]["runtime:sparse-cpu"] == str(sparse_file) and sparse_file.is_file()
    # a fresh process: the pickled model loads (registering the kernels itself) and matches the masked one
    check = subprocess.run([sys.executable, "-c", CHECK_SPARSE_ARTIFACT, str(sparse_file), str(out / "model.pt")],
                           cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    kinds, rel = check.stdout.strip().rsplit(" ", 1)
    assert "SparseConv2d" in kinds and float(rel) <= 1e-4

    text = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t"), "--runtime",
                 "sparse-cpu", "--test-limit", "50", "--limit", "100"], tmp_path)
    assert text.returncode == 0, text.stderr[-2000:]
    assert "sparse N=4" in text.stdout and "model.sparse-cpu.pt" in text.stdout


@pytest.mark.parametrize("runtime, policy_layers, message", [
    ("no-such-runtime", {}, "unknown runtime 'no-such-runtime'"),
    ("sparse-cpu", {"layer1.0.conv1": {"scheme": "unstructured", "sparsity": 0.8, "weight_bits": 8}},
     "runs float32 kernels"),
])
def test_apply_runtime_errors_are_one_line(checkpoint, tmp_path, runtime, policy_layers, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema_version": 1, "model": "resnet20", "layers": policy_layers}))
    proc = _run(["apply", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--runtime", runtime], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
