"""ONNX export (BN folded) and real int8 through onnxruntime, checked against the 8-bit fake-quant model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from automl.policy import CompressionPolicy, LayerDecision
from search_spaces.export import (
    ExportError,
    export_onnx,
    layers_at_8_bits,
    onnx_layer_nodes,
    onnx_op_counts,
    quantize_onnx_int8,
    run_onnx,
)
from search_spaces.quantization import attach_fake_quant


@pytest.fixture(scope="module")
def exported(trained_resnet20, fmnist_small, tmp_path_factory):
    return export_onnx(trained_resnet20, fmnist_small.x_test[:1], tmp_path_factory.mktemp("onnx") / "r20.onnx")


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_export_folds_bn_and_matches_torch(trained_resnet20, exported, fmnist_small):
    assert exported.bn_nodes_left == 0
    ops = onnx_op_counts(exported.path)
    assert ops["Conv"] == 21 and "BatchNormalization" not in ops
    x = fmnist_small.x_test[:64]  # dynamic batch: exported with batch 1, run with 64
    with torch.no_grad():
        ref = trained_resnet20(x)
    assert torch.allclose(run_onnx(exported.path, x), ref, atol=1e-4)
    nodes = onnx_layer_nodes(exported.path, _layer_names(trained_resnet20))
    assert len(set(nodes.values())) == 22


def test_int8_matches_8bit_fake_quant(trained_resnet20, exported, fmnist_small, tmp_path):
    s = fmnist_small
    calib = s.x_train[:256]
    int8 = quantize_onnx_int8(exported.path, calib, tmp_path / "r20_int8.onnx")
    ops = onnx_op_counts(int8)
    assert ops["QuantizeLinear"] >= 21 and ops["DequantizeLinear"] >= 22
    x = s.x_test[:200]
    q_logits = run_onnx(int8, x)
    fq = attach_fake_quant(copy.deepcopy(trained_resnet20), CompressionPolicy(
        "resnet20", default=LayerDecision(weight_bits=8, act_bits=8)), calib)
    with torch.no_grad():
        fq_logits = fq(x)
    agreement = (q_logits.argmax(1) == fq_logits.argmax(1)).float().mean().item()
    rel_err = ((q_logits - fq_logits).norm() / fq_logits.norm()).item()
    assert agreement >= 0.97, agreement
    assert rel_err < 0.08, rel_err


def test_int8_restricted_to_policy_layers(trained_resnet20, exported, fmnist_small, tmp_path):
    names = _layer_names(trained_resnet20)
    policy = CompressionPolicy("resnet20", layers={n: LayerDecision(weight_bits=8, act_bits=8) for n in names[:4]})
    eight = layers_at_8_bits(policy, names)
    assert eight == names[:4]
    out = quantize_onnx_int8(exported.path, fmnist_small.x_train[:128], tmp_path / "part.onnx", layers=eight)
    ops = onnx_op_counts(out)
    # 4 convs quantized: one weight DQ each plus their activation Q/DQ pairs, far fewer than the full graph
    assert 4 <= ops["QuantizeLinear"] <= 10
    x = fmnist_small.x_test[:100]
    with torch.no_grad():
        ref = trained_resnet20(x)
    assert (run_onnx(out, x).argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_errors_name_the_problem(exported, fmnist_small, tmp_path):
    with pytest.raises(ExportError, match="no ONNX node found for layer"):
        onnx_layer_nodes(exported.path, ["layer9.conv"])
    with pytest.raises(ExportError, match="calibration"):
        quantize_onnx_int8(exported.path, fmnist_small.x_train[:0], tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="layers=\\[\\]"):
        quantize_onnx_int8(exported.path, fmnist_small.x_train[:8], tmp_path / "x.onnx", layers=[])


def test_export_prints_none_of_the_exporters_routine_noise(tmp_path, capfd, caplog):
    """A search exports every fine-tuned candidate: the dynamo exporter's per-export torchvision warnings
    (four lines a model) used to bury the progress output."""
    import logging
    import warnings

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        export_onnx(model, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", dynamic_batch=False)
    err = capfd.readouterr().err + caplog.text  # torch's own handler (a terminal) or pytest's capture
    assert "torchvision is not installed" not in err, err[-2000:]
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert logger.level == level  # the exporter's logger is restored afterwards
