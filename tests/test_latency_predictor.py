"""Kernel detection and the kernel predictor, fitted on a STORED set of real measurements.

tests/fixtures/latency_onnxruntime_b1.json was recorded on this machine kind by
experiments/benchmarks/latency_record_fixture.py; its channel sweep is held out of the samples, so
these tests check that the predictor learnt the runtime's steps rather than memorised them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from automl.models import build_model
from latency_models.kernels import Kernel, compressed_kernels, kernels_for_model, skeleton, trace_kernels
from latency_models.predictors import KernelPredictor, Sample, features
from latency_models.sampling import channel_sweep

FIXTURE = Path(__file__).parent / "fixtures" / "latency_onnxruntime_b1.json"


@pytest.fixture(scope="module")
def stored():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def fitted(stored) -> KernelPredictor:
    pred = KernelPredictor()
    pred.fit([Sample.from_list(r) for r in stored["samples"]])
    return pred


def test_fixture_holds_the_step_and_excludes_the_sweep(stored):
    sweep = {r["c"]: r["ms"] for r in stored["sweep"]}
    assert sweep[63] > sweep[64] and sweep[31] > sweep[32]  # the measured fact the predictor must learn
    held = {(float(c), float(c), 3.0, 1.0, 14.0, 14.0) for c in sweep}
    assert not [r for r in stored["samples"] if tuple(r[1][:6]) in held]


def test_predictor_reproduces_steps_across_multiples_of_8(fitted, stored):
    cs = [r["c"] for r in stored["sweep"]]
    ms, std = fitted.predict_kernels(channel_sweep(cs))
    pred = dict(zip(cs, ms, strict=True))
    for m in (32, 64):
        assert pred[m - 1] > pred[m], f"c={m - 1} should be predicted slower than c={m}"
        assert pred[m - 3] > pred[m]
    assert (std > 0).all()
    # not monotone in MACs: more channels (and MACs) yet faster
    assert pred[64] < pred[61]


def test_predictor_tracks_the_measured_sweep(fitted, stored):
    import numpy as np

    cs = [r["c"] for r in stored["sweep"]]
    measured = np.array([r["ms"] for r in stored["sweep"]])
    ms, _ = fitted.predict_kernels(channel_sweep(cs))
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    rho = np.corrcoef(rank(ms), rank(measured))[0, 1]
    assert rho > 0.8


def test_masked_dense_shaped_convs_are_not_predicted_faster(fitted, stored):
    """onnxruntime has no sparse conv kernel: the stored masked samples time like dense ones."""
    dense = Kernel("conv", (64.0, 64.0, 3.0, 1.0, 14.0, 14.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0))
    masked = Kernel("conv", (64.0, 64.0, 3.0, 1.0, 14.0, 14.0, 1.0, 1.0, 0.3, 1.0, 32.0, 32.0))
    (d, m), _ = fitted.predict_kernels([dense, masked])
    assert m > 0.8 * d  # a MAC-proportional model would say 0.3x


def test_features_expose_alignment():
    f63 = features(channel_sweep([63])[0])
    f64 = features(channel_sweep([64])[0])
    assert len(f63) == len(f64)
    assert f63 != f64 and 7.0 in f63 and 64.0 in f63  # 63 % 8 and ceil(63 / 8) * 8


def test_trace_finds_fused_kernels_of_zoo_models():
    r20 = Counter(k.type for k in trace_kernels(build_model("resnet20", 1, 10, 28), (1, 28, 28)))
    assert r20 == {"conv": 21, "eltwise": 9, "pool": 1, "linear": 1}  # bn+relu fused into convs
    mb = Counter(k.type for k in trace_kernels(build_model("mobilenetv2", 1, 10, 28), (1, 28, 28)))
    assert mb["dwconv"] == 17
    vit = Counter(k.type for k in trace_kernels(build_model("vit_tiny", 1, 10, 28), (1, 28, 28)))
    assert vit["matmul"] == 8 and vit["softmax"] == 4 and vit["linear"] == 25


def test_compressed_kernels_follow_the_policy_and_align():
    from automl.policy import LayerDecision
    from search_spaces import SearchSpace

    model = build_model("resnet20", 1, 10, 28)
    space = SearchSpace.from_model(model, "resnet20", (1, 28, 28))
    policy = space.dense_policy()
    for name in space.layer_names()[:-1]:
        policy = policy.with_layer(name, LayerDecision("channel", sparsity=0.4, align=8))
    layers = space.compressed_layers(policy)
    pruned = [cl for cl in layers if cl.scheme == "channel" and cl.out_channels < 64]
    assert pruned and all(cl.out_channels % 8 == 0 for cl in pruned)  # align keeps multiples of 8
    ks = compressed_kernels(skeleton(model, (1, 28, 28)), layers)
    convs = [k for k in ks if k.type == "conv"]
    assert all(k.params[1] % 8 == 0 for k in convs)
    adds = [k for k in ks if k.type == "eltwise"]
    dense_adds = [k for k in trace_kernels(model, (1, 28, 28)) if k.type == "eltwise"]
    assert sum(k.params[0] for k in adds) < sum(k.params[0] for k in dense_adds)  # adds shrink with channels


def test_kernels_for_model_reads_masked_density():
    import torch

    model = build_model("vgg8", 1, 10, 28)
    with torch.no_grad():
        model.features[0].weight[:, :, 0, :] = 0  # a third of the 3x3 taps
    k = kernels_for_model(model, (1, 28, 28))[0]
    assert k.type == "conv" and k.params[8] == pytest.approx(2 / 3, abs=0.01)
