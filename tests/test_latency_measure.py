"""Measurement harness: statistics, isolation, runtimes, interleaved comparison (no timed assertions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latency_models import LatencyEstimate, RuntimeError_, compare, get_runtime, measure_latency, summarize


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def test_summarize_median_quartiles_and_robust_std():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["p25"] == 2.0 and s["p75"] == 4.0
    assert s["std"] == pytest.approx(2.0 / 1.349)  # the 100 ms spike does not inflate it
    with pytest.raises(ValueError):
        summarize([])


def test_measure_in_separate_process_names_everything():
    est = measure_latency(tiny(), (1, 8, 8), runtime="onnxruntime", batch=2, threads=1, warmup=3, repeats=30,
                          target_ms=0)
    assert isinstance(est, LatencyEstimate)
    assert est.source == "measured" and est.runtime == "onnxruntime" and est.precision == "fp32"
    assert est.batch == 2 and est.threads == 1 and est.device and est.repeats == 30
    assert 0 < est.p25_ms <= est.ms <= est.p75_ms
    assert est.std_ms >= 0
    assert "measured" in str(est) and "batch 2" in str(est)
    assert LatencyEstimate.from_dict(est.to_dict()) == est


def _executed_ops(artifact: bytes, tmp_path) -> dict[str, int]:
    """Op counts of the graph onnxruntime runs (after its optimisations) for an ONNX artifact."""
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(artifact, opts, providers=["CPUExecutionProvider"])
    return dict(collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))


def test_onnxruntime_times_profile_networks_in_int8_as_the_shipped_model_runs(tmp_path):
    """A whole network of the profile's context calibration runs the deployed int8 graph (every conv a
    QLinearConv, the residual adds int8, no quantize / dequantize pairs between layers): the fast quantizer
    left most of a resnet's convs in fp32."""
    from automl.models.resnet import CifarResNet

    torch.manual_seed(0)
    net, x = CifarResNet(8, 1, 10, width=8).eval(), torch.randn(1, 1, 16, 16)
    rt = get_runtime("onnxruntime")
    network = _executed_ops(rt.export_network(net, x, "int8"), tmp_path)
    shipped = _executed_ops(rt.export(net, x, "int8"), tmp_path)
    assert network.get("Conv", 0) == shipped.get("Conv", 0) == 0
    assert network["QLinearConv"] == shipped["QLinearConv"] == 9 and network["QLinearAdd"] == shipped["QLinearAdd"]
    # the head differs a little: dynamo exports the global pool as a float ReduceMean (one more Q/DQ pair)
    assert network["QuantizeLinear"] <= shipped["QuantizeLinear"] <= 2
    fast = _executed_ops(rt.export_kernel(net, x, "int8"), tmp_path)  # what the profile timed before
    assert fast.get("Conv", 0) > 0


def test_the_default_protocol_times_each_model_for_a_while():
    """Without target_ms=0 a fast model gets far more than `repeats` calls (about DEFAULT_TARGET_MS of
    timing, up to 50x), spread over DEFAULT_ROUNDS interleaved slices: a slow spell of the shared machine
    then moves every median alike, and little."""
    from latency_models import measure

    assert measure.DEFAULT_TARGET_MS >= 500 and measure.DEFAULT_ROUNDS >= 10
    est = measure_latency(tiny(), (1, 8, 8), runtime="onnxruntime", warmup=3, repeats=20, target_ms=50.0)
    assert est.repeats > 20  # a ~10 us model: 20 calls are 0.2 ms, far under 50 ms


def test_torch_eager_in_process_and_int8_onnx():
    eager = measure_latency(tiny(), (1, 8, 8), runtime="torch-eager", isolate=False, warmup=2, repeats=10)
    assert eager.runtime == "torch-eager" and eager.ms > 0
    q = measure_latency(tiny(), (1, 8, 8), runtime="onnxruntime", precision="int8", warmup=2, repeats=10)
    assert q.precision == "int8" and q.ms > 0


def test_compare_interleaves_and_keeps_order():
    small, big = tiny(), nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)).eval()
    a, b = compare([small, big], (1, 16, 16), warmup=3, repeats=30)
    assert a.source == b.source == "measured"
    assert b.ms > a.ms  # 64x64 3x3 convs on 16x16 vs one 1->8 conv: orders of magnitude apart


def test_compare_mixes_precisions_in_one_process():
    """An fp32 reference timed beside an int8 candidate (the headline benchmark's ratio measurement)."""
    ref, q = compare([tiny(), tiny()], (1, 8, 8), precision=["fp32", "int8"], warmup=2, repeats=10, target_ms=0)
    assert (ref.precision, q.precision) == ("fp32", "int8") and ref.ms > 0 and q.ms > 0
    with pytest.raises(ValueError, match="2 precisions for 1 models"):
        compare([tiny()], (1, 8, 8), precision=["fp32", "int8"])


def test_runtime_registry_errors_are_clear():
    with pytest.raises(RuntimeError_, match="unknown runtime 'tflite'.*registered"):
        get_runtime("tflite")
    with pytest.raises(RuntimeError_, match="no int8 path"):
        measure_latency(tiny(), (1, 8, 8), runtime="torch-compile", precision="int8")
    assert {"onnxruntime", "torch-eager", "torch-compile"} <= set(__import__("latency_models").RUNTIMES)
