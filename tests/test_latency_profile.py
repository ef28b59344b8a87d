"""Device profiles: save/load round trip, machine and version checks, resumable building, policies, refit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latency_models import DeviceProfile, LatencyEstimate, PairStore, ProfileError, predict_policy
from latency_models.estimate import device_fingerprint, device_info
from latency_models.predictors import Sample
from latency_models.profile import build_profile, refit_from_pairs

FIXTURE = Path(__file__).parent / "fixtures" / "latency_onnxruntime_b1.json"


def fixture_samples() -> list[Sample]:
    return [Sample.from_list(r) for r in json.loads(FIXTURE.read_text())["samples"]]


def here_profile(samples=None) -> DeviceProfile:
    """A profile stamped as measured here (its samples are the stored fixture's)."""
    info = device_info()
    return DeviceProfile(device=info["device"], runtime="onnxruntime", batch=1, threads=1, precision="fp32",
                         versions=info["versions"], fingerprint=device_fingerprint(info),
                         samples=samples or fixture_samples(), overhead_ms=0.005).fit()


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return here_profile()


def test_save_load_round_trip_predicts_the_same(profile, tmp_path):
    from latency_models.sampling import channel_sweep

    path = profile.save(tmp_path / "p.json")
    again = DeviceProfile.load(path)
    ks = channel_sweep((15, 16, 63, 64))
    assert again.n_samples == profile.n_samples and again.fingerprint == profile.fingerprint
    assert again.predict_kernels(ks).ms == pytest.approx(profile.predict_kernels(ks).ms)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["versions"]["onnxruntime"]
    assert data["preferred_align"] in (1, 2, 4, 8, 16)


def test_refuses_another_machines_profile_unless_forced(profile, tmp_path):
    data = profile.to_dict()
    data.update(device="Some Other CPU x64", fingerprint="other-cpu-x64-0000000000")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="does not hold on this machine.*Some Other CPU"):
        DeviceProfile.load(path)
    assert DeviceProfile.load(path, force=True).device == "Some Other CPU x64"


def test_refuses_other_library_versions_and_schema(profile, tmp_path):
    data = profile.to_dict()
    data["versions"] = dict(data["versions"], onnxruntime="0.1.0")
    data["fingerprint"] = "amd-epyc-x2-ffffffffff"
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="library versions differ: onnxruntime 0.1.0"):
        DeviceProfile.load(tmp_path / "v.json")
    data = profile.to_dict() | {"schema_version": 99}
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="version 99"):
        DeviceProfile.load(tmp_path / "s.json")
    with pytest.raises(ProfileError, match="does not exist"):
        DeviceProfile.load(tmp_path / "missing.json")


def test_build_is_resumable_from_its_side_file(tmp_path):
    side = tmp_path / "samples.jsonl"
    first = build_profile("onnxruntime", minutes=0.001, samples_path=side, chunk=4, seed=3)
    assert first.n_samples >= 3 and side.is_file()
    second = build_profile("onnxruntime", minutes=0.001, samples_path=side, chunk=4, seed=3)
    assert second.n_samples > first.n_samples  # reused the first run's samples and added a chunk
    assert {tuple(s.kernel.params) for s in first.samples} <= {tuple(s.kernel.params) for s in second.samples}


def test_predict_policy_on_a_search_space(profile):
    import torch  # noqa: F401

    from automl.models import build_model
    from automl.policy import LayerDecision
    from search_spaces import SearchSpace

    model = build_model("resnet20", 1, 10, 28)
    space = SearchSpace.from_model(model, "resnet20", (1, 28, 28))
    dense = space.dense_policy()
    pruned = dense
    for name in space.layer_names()[1:-1]:
        pruned = pruned.with_layer(name, LayerDecision("channel", sparsity=0.5, align=8))
    try:
        pruned = space.decode({n: d.to_dict() for n, d in pruned.layers.items()})
    except Exception:
        pass
    extra = {"matmul", "norm", "softmax", "transpose", "dwconv", "linear", "pool", "eltwise"}
    if not extra <= set(profile.predictor.kernel_types()):  # the fixture holds conv samples only
        profile = here_profile(profile.samples + _synthetic_other_kernels())
    d, p = predict_policy(profile, space, dense), predict_policy(profile, space, pruned)
    assert isinstance(d, LatencyEstimate) and d.source == "predicted" and d.std_ms > 0
    assert p.ms < d.ms


def _synthetic_other_kernels() -> list[Sample]:
    """Non-conv kernels for the policy test only (the fixture is conv-only); never used for a figure."""
    from latency_models.kernels import Kernel

    out = []
    for i in range(1, 30):
        out.append(Sample(Kernel("eltwise", (1000.0 * i, 2.0, 1.0)), 0.002 * i))
        out.append(Sample(Kernel("pool", (1000.0 * i, 64.0)), 0.001 * i))
        out.append(Sample(Kernel("linear", (1.0, 8.0 * i, 10.0, 0.0, 1.0, 0.0, 32.0, 32.0)), 0.001 * i))
    return out


def test_pairs_refit_the_calibration(profile, tmp_path):
    store = PairStore(tmp_path / "pairs.jsonl")
    for raw in (0.5, 1.0, 2.0):
        pred = LatencyEstimate(raw, 0.05, "predicted", profile.device, "onnxruntime")
        meas = LatencyEstimate(1.2 * raw + 0.1, 0.01, "measured", profile.device, "onnxruntime")
        store.add(pred, meas, raw_predicted_ms=raw, model="resnet20")
    with pytest.raises(ValueError):
        store.add(meas, pred)
    report = refit_from_pairs(profile, store.read())
    assert report["pairs"] == 3 and report["within_10pct_after"] == 1.0
    assert profile.calibration == pytest.approx((1.2, 0.1))
    profile.calibration = (1.0, 0.0)


# ------------------------------------------------------------------ block-sparse runtimes (sparse-cpu)
@pytest.fixture(scope="module")
def sparse_profile() -> DeviceProfile:
    from _sparse_profile import synthetic_profile

    return synthetic_profile("sparse-cpu")


def _resnet20_space():
    from automl.models import build_model
    from search_spaces import SearchSpace

    return SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28))


def test_sparse_cpu_profile_learns_what_blocks_gain(sparse_profile):
    """Fitted on samples whose latencies follow the measured kernel speedups (tests/_sparse_profile.py)."""
    from automl.policy import LayerDecision

    assert sparse_profile.structured and sparse_profile.predictor.block_features
    space = _resnet20_space()
    dense = predict_policy(sparse_profile, space, space.dense_policy()).ms

    def ms(decision):
        return predict_policy(sparse_profile, space, space.dense_policy().with_layer("layer1.1.conv1", decision)).ms

    unstructured = ms(LayerDecision("unstructured", sparsity=0.5))
    one_by_four = ms(LayerDecision("block1xn", sparsity=0.5, n=4))
    one_by_two = ms(LayerDecision("block1xn", sparsity=0.5, n=2))
    saved = dense - one_by_four
    assert saved > 0.01  # the layer takes ~0.08 ms dense; 1x4 blocks at 50% about halve it
    assert dense - unstructured < 0.5 * saved and dense - one_by_two < 0.5 * saved  # N=1 / N=2 need more


def test_profile_versions_and_features_per_runtime(profile, sparse_profile, tmp_path):
    """onnxruntime profiles keep version 1 and their features; sparse-cpu ones are version 2 and both load."""
    from latency_models.profile import _key

    assert profile.to_dict()["schema_version"] == 1 and not profile.predictor.block_features
    path = sparse_profile.save(tmp_path / "sparse.json")
    assert json.loads(path.read_text())["schema_version"] == 2
    again = DeviceProfile.load(path)
    assert again.format_version == 2 and again.predictor.block_features
    space = _resnet20_space()
    assert predict_policy(again, space, space.dense_policy()).ms == pytest.approx(
        predict_policy(sparse_profile, space, space.dense_policy()).ms)
    # a sparse-cpu profile of the first format (random masks, no block parameter) still loads
    old = sparse_profile.to_dict() | {"schema_version": 1}
    old["samples"] = [[t, p[:12] if t == "conv" else p[:8] if t == "linear" else p, ms] for t, p, ms in old["samples"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert DeviceProfile.load(tmp_path / "old.json").format_version == 1
    # measured samples of the two samplings never mix in a side file
    assert "sampling" in _key("sparse-cpu", 1, 1, "fp32", "x") and "sampling" not in _key("onnxruntime", 1, 1,
                                                                                           "fp32", "x")
