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
from torch import nn

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
    assert r20 == {"conv": 21, "eltwise": 9, "pool": 1, "linear": 1, "glue": 1}  # bn+relu fused; the flatten
    mb = Counter(k.type for k in trace_kernels(build_model("mobilenetv2", 1, 10, 28), (1, 28, 28)))
    assert mb["dwconv"] == 17
    vit = Counter(k.type for k in trace_kernels(build_model("vit_tiny", 1, 10, 28), (1, 28, 28)))
    assert vit["matmul"] == 8 and vit["softmax"] == 4 and vit["linear"] == 25


def test_glue_ops_are_counted_for_a_vit():
    """torch eager pays a call for every reshape / view / transpose / expand / cat / getitem: glue kernels."""
    ks = trace_kernels(build_model("vit_tiny", 1, 10, 28), (1, 28, 28))
    glue = [k for k in ks if k.type == "glue"]
    # flatten, expand (cls token), cat, the pos-embed slice, x[:, 0]; per block 3 head splits (reshape +
    # transpose each) and the merge (transpose + reshape)
    assert len(glue) == 5 + 4 * 8
    copies = [k for k in glue if k.params[1] == 1.0]
    assert len(copies) == 1 + 4  # the cat, and each block's reshape of the transposed heads
    assert all(k.params[0] == 50 * 64 for k in copies)  # 50 tokens x 64 dims
    assert Counter(k.type for k in ks)["transpose"] == 5  # the transposes that copy stay kernels
    # convs: metadata calls (dim, size) and the input tensor are no glue
    assert [k.type for k in trace_kernels(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), (1, 8, 8))] == ["conv"]


def test_glue_kernels_follow_pruned_channels():
    from automl.policy import LayerDecision
    from search_spaces import SearchSpace

    model = build_model("vit_tiny", 1, 10, 28)
    space = SearchSpace.from_model(model, "vit_tiny", (1, 28, 28))
    policy = space.dense_policy()
    for name in ("blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"):
        policy = policy.with_layer(name, LayerDecision("channel", sparsity=0.5, align=4))
    policy = space.decode({n: d.to_dict() for n, d in policy.layers.items()})
    skel = skeleton(model, (1, 28, 28))
    dense = [k for k in skel.kernels if k.type == "glue"]
    pruned = [k for k in compressed_kernels(skel, space.compressed_layers(policy)) if k.type == "glue"]
    assert len(pruned) == len(dense)
    assert sum(k.params[0] for k in pruned) < sum(k.params[0] for k in dense)  # the q/k/v head splits shrink


def test_pruned_heads_shrink_the_attention_kernels_as_in_the_pruned_model():
    """q/k/v are pruned in whole heads: the derived score matmuls and softmax run on fewer heads of the
    same size, exactly as tracing the physically pruned model shows (they were derived as 4 narrower
    heads with an unpruned softmax, and vit_tiny policies were predicted up to 20% slow)."""
    import torch

    from automl.policy import LayerDecision
    from search_spaces import SearchSpace, apply_policy

    model = build_model("vit_tiny", 1, 10, 28).eval()
    space = SearchSpace.from_model(model, "vit_tiny", (1, 28, 28))
    policy = space.dense_policy().with_layer("blocks.0.attn.q", LayerDecision("channel", sparsity=0.5))
    policy = policy.with_layer("blocks.2.attn.k", LayerDecision("channel", sparsity=0.25))
    derived = compressed_kernels(skeleton(model, (1, 28, 28)), space.compressed_layers(policy))
    traced = kernels_for_model(apply_policy(model, policy, torch.zeros(1, 1, 28, 28)).model, (1, 28, 28))
    attention = ("matmul", "softmax", "eltwise", "transpose", "glue")
    assert [(k.type, k.params) for k in derived if k.type in attention] == \
        [(k.type, k.params) for k in traced if k.type in attention]
    matmuls = [k.params for k in derived if k.type == "matmul"]
    assert matmuls[0] == (2.0, 50.0, 16.0, 50.0) and matmuls[4] == (3.0, 50.0, 16.0, 50.0)  # heads 4 -> 2, 3
    assert [k.params[0] for k in derived if k.type == "softmax"] == [5000.0, 10000.0, 7500.0, 10000.0]


def test_relative_predictor_extrapolates_past_the_samples(stored):
    """Trees are flat outside the sampled range; relative to a linear cost the prediction keeps growing."""
    samples = [Sample.from_list(r) for r in stored["samples"]]
    plain, relative = KernelPredictor(), KernelPredictor(relative=True)
    plain.fit(samples, cv=False)
    relative.fit(samples, cv=False)
    biggest = max(s.kernel.params[0] * s.kernel.params[1] * s.kernel.params[2] ** 2 * s.kernel.params[4] ** 2
                  for s in samples)
    wide = [Kernel("conv", (float(c), float(c), 3.0, 1.0, 28.0, 28.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0))
            for c in (128, 256, 512)]
    assert 512 * 512 * 9 * 28 * 28 > 4 * biggest
    p, _ = plain.predict_kernels(wide)
    r, _ = relative.predict_kernels(wide)
    assert r[2] > 4 * r[0] and r[2] > 2 * p[2]  # 16x the MACs of the 128-channel conv
    # and the relative fit keeps the measured steps at multiples of 8
    ms, _ = relative.predict_kernels(channel_sweep([31, 32, 63, 64]))
    assert ms[0] > ms[1] and ms[2] > ms[3]


def test_glue_is_free_for_profiles_without_glue_samples(fitted):
    glue = Kernel("glue", (3200.0, 1.0))
    conv = channel_sweep([64])[0]
    ms, std = fitted.predict_kernels([conv, glue])
    assert ms[0] > 0 and ms[1] == 0.0 and std[1] == 0.0
    with pytest.raises(KeyError, match="no samples of 'softmax'"):
        fitted.predict_kernels([Kernel("softmax", (1000.0,))])


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


# ------------------------------------------------------------------ block-sparse runtimes (sparse-cpu)
def test_sparse_cpu_samples_carry_the_structure_of_their_scheme():
    """Structured samples: every 1xN block all-zero or all-kept, the density they claim, N=4 on the kernels."""
    import random

    from latency_models.kernels import kernel_block
    from latency_models.sampling import random_kernel, sample_module, zoo_prior
    from latency_models.sparse_kernels import convert_model
    from latency_models.sparse_kernels.modules import SparseConv2d, SparseLinear, choose_block

    rng, prior = random.Random(0), zoo_prior()
    seen, densities, converted = Counter(), [], Counter()
    for _ in range(160):
        k = random_kernel(rng, prior, [rng.choice(("conv", "linear"))], structured=True)
        i = 8 if k.type == "conv" else 4
        density, code, block = k.params[i], int(k.params[i + 1]), int(kernel_block(k))
        module, _ = sample_module(k, 1, rng, structured=True)
        w = (module.conv if k.type == "conv" else module.fc).weight.detach()
        assert float((w != 0).float().mean()) == pytest.approx(density, abs=1e-6)
        densities.append(density)
        seen[(code, block)] += 1
        if code in (3, 5):  # block1xn / block_punched: 1xN blocks along output channels
            assert block in ((2, 4, 8) if code == 3 else (4,))
            kept = (w != 0).reshape(w.shape[0] // block, block, -1)
            assert (kept.all(dim=1) | ~kept.any(dim=1)).all(), k
            if block in (4, 8):
                assert choose_block(w) == 4
                if 1 - density >= 0.5 and converted[(code, block)] < 2:  # on the real kernels: N=4
                    layers = [m for m in convert_model(module).modules() if isinstance(m, SparseConv2d | SparseLinear)]
                    assert [m.n for m in layers] == [4]
                    converted[(code, block)] += 1
        else:
            assert block == 1
    assert {(0, 1), (1, 1), (3, 4), (3, 8), (3, 2), (5, 4)} <= set(seen)
    assert min(densities) < 0.1 and max(densities) == 1.0 and sum(d < 1 for d in densities) > 0.6 * len(densities)
    assert set(converted) == {(3, 4), (3, 8), (5, 4)}


def test_other_runtimes_sample_as_before():
    """onnxruntime / torch profiles: random masks on 15% of conv/linear samples, codes 1-2, no block parameter."""
    import random

    from latency_models.sampling import random_kernel, zoo_prior

    rng, prior = random.Random(0), zoo_prior()
    ks = [random_kernel(rng, prior, [rng.choice(("conv", "linear"))]) for _ in range(300)]
    assert all(len(k.params) == (12 if k.type == "conv" else 8) for k in ks)
    codes = Counter(int(k.params[9 if k.type == "conv" else 5]) for k in ks)
    assert set(codes) <= {0, 1, 2} and 0.05 < (codes[1] + codes[2]) / len(ks) < 0.3


def _layer_kernel(space, skel, name, decision):
    layers = space.compressed_layers(space.dense_policy().with_layer(name, decision))
    return next(k for k in compressed_kernels(skel, layers) if k.layer == name)


def test_block_height_is_a_feature_of_block_sparse_profiles_only():
    from automl.policy import LayerDecision
    from latency_models.kernels import kernel_block
    from search_spaces import SearchSpace

    model = build_model("resnet20", 1, 10, 28)
    space = SearchSpace.from_model(model, "resnet20", (1, 28, 28))
    skel = skeleton(model, (1, 28, 28))
    name = "layer2.1.conv1"
    ks = {label: _layer_kernel(space, skel, name, d) for label, d in {
        "unstructured": LayerDecision("unstructured", sparsity=0.5),
        "1x4": LayerDecision("block1xn", sparsity=0.5, n=4),
        "1x2": LayerDecision("block1xn", sparsity=0.5, n=2),
        "punched": LayerDecision("block_punched", sparsity=0.5, block=(4, 4))}.items()}
    assert {label: k.params[8] for label, k in ks.items()} == dict.fromkeys(ks, 0.5)  # equal density
    assert {label: kernel_block(k) for label, k in ks.items()} == {"unstructured": 1, "1x4": 4, "1x2": 2,
                                                                  "punched": 4}
    with_blocks = {label: features(k, block=True) for label, k in ks.items()}
    assert with_blocks["1x4"] != with_blocks["unstructured"]
    differ = [i for i, (a, b) in enumerate(zip(with_blocks["1x4"], with_blocks["1x2"], strict=True)) if a != b]
    assert differ == [len(features(ks["1x4"]))]  # same scheme code: only the block height tells them apart
    # the other runtimes' features are what they were before the block parameter existed
    plain = Kernel("conv", ks["1x4"].params[:12])
    assert features(ks["1x4"]) == features(plain) and len(features(plain)) == len(features(channel_sweep([64])[0]))


def test_block_height_read_off_weights_matches_the_policy():
    import torch

    from automl.policy import LayerDecision
    from latency_models.kernels import kernel_block
    from search_spaces import SearchSpace, apply_policy

    model = build_model("resnet20", 1, 10, 28)
    space = SearchSpace.from_model(model, "resnet20", (1, 28, 28))
    decisions = {"layer2.1.conv1": LayerDecision("block1xn", sparsity=0.5, n=4),
                 "layer3.0.conv2": LayerDecision("block_punched", sparsity=0.75, block=(4, 4)),
                 "layer1.0.conv1": LayerDecision("unstructured", sparsity=0.7),
                 "fc": LayerDecision("block1xn", sparsity=0.6, n=2)}
    policy = space.dense_policy()
    for name, d in decisions.items():
        policy = policy.with_layer(name, d)
    traced = {k.layer: k for k in kernels_for_model(apply_policy(model, policy, torch.zeros(1, 1, 28, 28)).model,
                                                     (1, 28, 28)) if k.layer}
    predicted = {k.layer: k for k in compressed_kernels(skeleton(model, (1, 28, 28)), space.compressed_layers(policy))
                 if k.layer}
    expected = {"layer2.1.conv1": 4, "layer3.0.conv2": 4, "layer1.0.conv1": 1, "fc": 2, "layer1.0.conv2": 1}
    assert {n: kernel_block(traced[n]) for n in expected} == expected
    assert {n: kernel_block(predicted[n]) for n in expected} == expected


def test_random_networks_are_never_the_zoo_models(monkeypatch):
    """The context networks are random: the zoo architectures the latency benchmark predicts never occur."""
    import random

    from automl.models.resnet import CifarResNet
    from automl.models.vgg import VGG
    from latency_models import sampling

    monkeypatch.setattr(sampling, "_randomly_pruned", lambda model, shape, rng: model)
    rng = random.Random(0)
    seen = Counter()
    for _ in range(400):
        model, _ = sampling.random_network(rng)
        seen[type(model).__name__] += 1
        if isinstance(model, CifarResNet):
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            assert (len(convs) + 1, convs[0].out_channels) not in {(20, 16), (56, 16)}  # depth: 3x3 convs + fc
        if isinstance(model, VGG):
            widths = tuple(m.out_channels for m in model.features if isinstance(m, nn.Conv2d))[::2]
            assert widths != (32, 64, 128)
    assert set(seen) == {"CifarResNet", "VGG", "MobileNetV2", "VisionTransformer"}
