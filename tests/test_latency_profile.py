"""Device profiles: save/load round trip, machine and version checks, resumable building, policies, refit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from latency_models import DeviceProfile, LatencyEstimate, PairStore, ProfileError, predict_policy
from latency_models.estimate import device_fingerprint, device_info
from latency_models.layouts import nchwc_block
from latency_models.predictors import Sample
from latency_models.profile import (
    CONTEXT_LAMBDAS,
    MEDIAN_PROFILE_VERSION,
    MIN_KERNEL_MS,
    PROFILE_VERSION,
    PROTOCOLS,
    REFERENCE_KERNELS,
    STRUCTURED_PROFILE_VERSION,
    build_profile,
    context_key,
    current_version,
    io_melems,
    refit_from_pairs,
)

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
    assert again.fit_error == profile.fit_error  # the saved cross-validated errors, not re-run on load
    assert again.predict_kernels(ks).std_ms == pytest.approx(profile.predict_kernels(ks).std_ms)
    fresh = DeviceProfile(**{**{k: getattr(again, k) for k in ("device", "runtime", "batch", "threads",
                                                                 "precision", "versions", "fingerprint",
                                                                 "samples", "overhead_ms")}}).fit()
    assert fresh.fit_error == profile.fit_error  # the same errors when cross-validated afresh
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
    # version 3: the median of each sample (what a measurement reports), its quartiles kept in the side file
    assert first.format_version == MEDIAN_PROFILE_VERSION and first.statistic == "median"
    assert first.predictor.relative
    row = json.loads(side.read_text().splitlines()[0])
    # onnxruntime fp32: the NCHWc layout's dataflow sampling (the kernel samples are timed as before)
    assert row["key"]["sampling"] == "median-3/networks-with-dataflow" and row["references"] == len(REFERENCE_KERNELS)
    info = device_info()
    assert first.layout_block == nchwc_block(info["cpu_flags"], info["machine"])
    skip = 1 + row["references"]
    assert len(row["stats"]) == len(row["samples"]) + skip  # the baseline's, then the reference kernels'
    ref = math.exp(sum(math.log(st[2]) for st in row["stats"][1:skip]) / row["references"])
    assert all(r[3] == pytest.approx(ref, rel=1e-4) for r in row["samples"])  # each sample's process speed
    assert all(s.ref for s in first.samples) and first.speed_reference() and first.speed_spread is not None
    for (p10, p25, med, p75), (_, _, ms, _) in zip(row["stats"][skip:], row["samples"], strict=True):
        assert p10 <= p25 <= med <= p75
        assert ms == pytest.approx(max(MIN_KERNEL_MS, med - row["baseline_ms"]), abs=2e-6)  # stats: 6 decimals
    assert row["baseline_ms"] == pytest.approx(row["stats"][0][2], abs=1e-6)


def test_the_statistic_a_profile_predicts_is_the_one_measurement_reports():
    """measure_latency's LatencyEstimate.ms is summarize's median; version 3 profiles fit that statistic
    (samples and whole networks), timed with the measurement's interleaved protocol."""
    from latency_models import measure
    from latency_models.estimate import summarize
    from latency_models.measure import to_estimate

    times = [1.0, 1.1, 1.2, 5.0, 1.3, 1.15, 0.9]
    est = to_estimate({"times_ms": times}, device="d", runtime="onnxruntime", batch=1, threads=1, precision="fp32")
    assert est.ms == summarize(times)["median"] and est.p10_ms == summarize(times)["p10"]
    protocol = PROTOCOLS[MEDIAN_PROFILE_VERSION]
    assert protocol.statistic == "median" and protocol.identity_baseline
    assert protocol.network_rounds == measure.DEFAULT_ROUNDS and protocol.network_target_ms >= 200
    assert PROTOCOLS[PROFILE_VERSION].statistic == PROTOCOLS[STRUCTURED_PROFILE_VERSION].statistic == "p10"
    assert current_version("onnxruntime") == current_version("torch-eager") == MEDIAN_PROFILE_VERSION
    assert current_version("sparse-cpu") == STRUCTURED_PROFILE_VERSION
    assert here_profile().statistic == "p10"  # a profile of the first format predicts the fastest decile


def test_samples_and_networks_are_divided_by_their_process_speed():
    """A timing process that ran 1.5x slow (its reference kernels say so) is fitted as if it had not."""
    from latency_models.kernels import Kernel

    fast = [Sample(s.kernel, s.ms, 0.02) for s in fixture_samples()[:40]]
    slow = [Sample(s.kernel, 1.5 * s.ms, 0.03) for s in fixture_samples()[40:60]]
    profile = here_profile(fast + slow)
    assert profile.speed_reference() == pytest.approx(0.02)  # the median process
    fitted = profile.fit_samples()
    assert [s.ms for s in fitted] == pytest.approx([s.ms for s in fixture_samples()[:60]])
    net = [Kernel("eltwise", (100.0, 2.0, 0.0))]
    profile.composites = [(net, 1.0, 0.02), (net, 3.0, 0.06), (net, 2.0)]  # the last: no reference recorded
    assert [ms for _, ms in profile.fit_composites()] == pytest.approx([1.0, 1.0, 2.0])
    again = DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.samples == profile.samples and again.composites == profile.composites
    assert Sample.from_list(fast[0].to_list()) == fast[0] and len(Sample(net[0], 1.0).to_list()) == 3


def test_get_or_build_rebuilds_a_cached_profile_of_an_older_version(tmp_path):
    from latency_models.profile import default_profile_path, get_or_build_profile

    old = here_profile()
    path = default_profile_path("onnxruntime", 1, 1, "fp32", cache_dir=tmp_path)
    old.save(path)
    assert DeviceProfile.load(path).format_version == PROFILE_VERSION  # still loads
    messages: list[str] = []
    again = get_or_build_profile("onnxruntime", minutes=0.001, cache_dir=tmp_path, progress=messages.append)
    assert again.format_version == MEDIAN_PROFILE_VERSION
    assert any("version 1" in m and "rebuilding" in m for m in messages)
    assert json.loads(path.read_text())["schema_version"] == MEDIAN_PROFILE_VERSION
    assert json.loads(path.read_text())["statistic"] == "median"


def test_get_or_build_rebuilds_an_int8_profile_whose_networks_were_not_timed_as_deployed(tmp_path):
    """int8 profiles saved before `DeviceProfile.sampling` (their whole networks exported with the fast
    quantizer, many convs left fp32) read as sampling "median-3" and are rebuilt; the rebuild records its
    sampling, and fp32 profiles keep theirs."""
    from latency_models.profile import (
        INT8_SAMPLING,
        MEDIAN_SAMPLING,
        default_profile_path,
        get_or_build_profile,
    )

    old = here_profile().to_dict() | {"schema_version": MEDIAN_PROFILE_VERSION, "precision": "int8"}
    del old["sampling"]
    path = default_profile_path("onnxruntime", 1, 1, "int8", cache_dir=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    assert DeviceProfile.load(path).sampling == MEDIAN_SAMPLING  # still loads, as what it was
    messages: list[str] = []
    again = get_or_build_profile("onnxruntime", minutes=0.001, precision="int8", cache_dir=tmp_path,
                                 progress=messages.append)
    assert any("'median-3'" in m and "rebuilding" in m for m in messages)
    assert again.sampling == INT8_SAMPLING and again.precision == "int8"
    assert json.loads(path.read_text())["sampling"] == INT8_SAMPLING
    assert DeviceProfile.load(path).sampling == INT8_SAMPLING
    messages.clear()  # a profile of the current sampling is reused as it is
    assert get_or_build_profile("onnxruntime", minutes=0.001, precision="int8", cache_dir=tmp_path,
                                progress=messages.append).created == again.created
    assert not any("rebuilding" in m for m in messages)


@pytest.fixture(scope="module")
def wide_profile() -> DeviceProfile:
    """The fixture's conv samples plus synthetic other kernels (fitted once)."""
    return here_profile(fixture_samples() + _synthetic_other_kernels())


def _context_profile(base: DeviceProfile, scales: dict[str, float], per_kernel_ms: float, n: int = 60,
                     seed: int = 0, cold: tuple[float, float] = (0.0, 1.0), cold_form: str = "beyond",
                     call_ms: dict[str, float] | None = None, io_ms: dict[str, float] | None = None
                     ) -> DeviceProfile:
    """`base` with whole networks that follow a known law: scale_t x isolated prediction + a per-kernel term
    (+ call_ms[t] per kernel of context type t, + io_ms[t] per M activation elements of its kernels) +
    cold[0] ms per MiB of cold weights (`cold_weight_mb` with cache cold[1] MiB, read as `cold_form`)."""
    import copy
    import random

    from latency_models.profile import _fit_context, cold_weight_mb, context_key, io_melems
    from latency_models.sampling import random_kernel, zoo_prior

    profile = copy.copy(base)
    rng, prior = random.Random(seed), zoo_prior()
    composites = []
    for _ in range(n):
        ks = [random_kernel(rng, prior, [rng.choice(("conv", "conv", "eltwise", "pool", "linear"))])
              for _ in range(rng.randint(3, 40))]
        pred, _ = profile.predictor.predict_kernels(ks)
        ms = sum(p * scales.get(context_key(k), 1.0) for p, k in zip(pred, ks, strict=True))
        ms += cold[0] * cold_weight_mb(ks, cold[1], cold_form)
        ms += sum((call_ms or {}).get(context_key(k), 0.0) for k in ks)
        ms += sum((io_ms or {}).get(context_key(k), 0.0) * io_melems(k) for k in ks)
        composites.append((ks, profile.overhead_ms + ms + per_kernel_ms * len(ks)))
    profile.composites = composites
    profile.type_scale, profile.context_fit = _fit_context(profile)  # what fit() does after the regressors
    return profile


def test_context_fit_recovers_type_scales_and_a_per_kernel_term(wide_profile):
    law = {"conv/a8": 0.8, "conv/u": 1.25, "eltwise": 1.5}
    profile = _context_profile(wide_profile, law, per_kernel_ms=0.004)
    assert profile.context_fit["networks"] == 60
    assert profile.context_fit["per_kernel_ms"] == pytest.approx(0.004, rel=0.25)
    for t, a in law.items():
        assert profile.type_scale[t] == pytest.approx(a, rel=0.1), t
    assert profile.context_fit["cv_within_10pct"] > 0.9 and profile.context_fit["ridge"] in CONTEXT_LAMBDAS
    ks, ms = profile.composites[0]
    assert profile.predict_kernels(ks).ms == pytest.approx(ms, rel=0.05)
    assert profile.context_fit["cold_ms_per_mb"] < 0.01
    # no context in the networks: scales stay near 1 and no per-kernel or cold-weights term
    plain = _context_profile(wide_profile, {}, per_kernel_ms=0.0, seed=1)
    assert all(abs(a - 1) < 0.05 for a in plain.type_scale.values())
    assert abs(plain.context_fit["per_kernel_ms"]) < 5e-4 and plain.context_fit["cold_ms_per_mb"] < 0.01


def test_context_fit_tells_the_call_costs_of_kernel_types_apart(wide_profile):
    """A fixed cost per pool call (torch eager's dispatch of a small op) and none per conv: the fit puts
    it on the pools, not spread over every kernel as one per-kernel term would."""
    profile = _context_profile(wide_profile, {}, per_kernel_ms=0.0, n=80, seed=3, call_ms={"pool": 0.02})
    calls = profile.context_fit["call_ms"]
    assert calls["pool"] == pytest.approx(0.02, rel=0.2)
    assert abs(calls["conv/a8"]) < 0.004 and abs(calls["conv/u"]) < 0.004
    assert profile.context_fit["cv_within_10pct"] > 0.9
    pools = max(profile.composites, key=lambda c: sum(k.type == "pool" for k in c[0]))
    assert profile.predict_kernels(pools[0]).ms == pytest.approx(pools[1], rel=0.05)


def test_context_fit_finds_a_cost_per_activation_element(wide_profile):
    """Aligned convs that save a reorder per activation element in a network (onnxruntime's blocked
    layout kept between them): the fit takes an io term for them and predicts the networks; networks
    without one (the test above) keep the fit without io terms."""
    law = {"conv/a8": 0.05}  # ms per million activation elements read + written
    profile = _context_profile(wide_profile, {}, per_kernel_ms=0.0, n=80, seed=5, io_ms=law)
    fit = profile.context_fit
    assert fit["io_set"] in ("convs", "all") and fit["cv_within_10pct"] > 0.9
    assert fit["io_ms_per_melem"]["conv/a8"] == pytest.approx(0.05, rel=0.3)
    ks, ms = max(profile.composites, key=lambda c: sum(io_melems(k) for k in c[0] if context_key(k) == "conv/a8"))
    assert profile.predict_kernels(ks).ms == pytest.approx(ms, rel=0.05)
    plain = _context_profile(wide_profile, {}, per_kernel_ms=0.0, seed=1)
    assert plain.context_fit["io_set"] == "none" and plain.context_fit["io_ms_per_melem"] == {}


def test_cold_weights_forms():
    """'beyond' counts the weights past the cache; 'spilled' what each kernel had cached alone and the
    network no longer has: many small kernels lose all of theirs, one big kernel only the cache's worth."""
    from latency_models.kernels import Kernel
    from latency_models.profile import cold_weight_mb

    small = Kernel("conv", (64.0, 64.0, 3.0, 1.0, 8.0, 8.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0))  # 0.14 MiB
    big = Kernel("linear", (1.0, 1024.0, 1024.0, 0.0, 1.0, 0.0, 32.0))  # 4 MiB
    mib = 64 * 64 * 9 * 4 / 2**20
    assert cold_weight_mb([small] * 4, 1.0) == 0.0 == cold_weight_mb([small] * 4, 1.0, "spilled")
    assert cold_weight_mb([small] * 20, 1.0) == pytest.approx(20 * mib - 1.0)
    assert cold_weight_mb([small] * 20, 1.0, "spilled") == pytest.approx(20 * mib)
    assert cold_weight_mb([big], 1.0) == pytest.approx(3.0)
    assert cold_weight_mb([big], 1.0, "spilled") == pytest.approx(1.0)


def test_context_fit_picks_the_cold_weights_form_the_networks_follow(wide_profile):
    profile = _context_profile(wide_profile, {}, per_kernel_ms=0.0, n=80, seed=2, cold=(0.2, 1.0),
                               cold_form="spilled")
    assert profile.context_fit["cold_form"] == "spilled" and profile.context_fit["cache_mb"] == 1.0
    assert profile.context_fit["cold_ms_per_mb"] == pytest.approx(0.2, rel=0.15)


def test_context_fit_finds_the_cost_of_weights_that_do_not_stay_cached(wide_profile):
    """Networks whose weights exceed the cache pay for reading them: found with the cache size."""
    from latency_models.kernels import Kernel, weight_bytes

    conv = Kernel("conv", (64.0, 64.0, 3.0, 1.0, 7.0, 7.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0))
    assert weight_bytes(conv) == 64 * 64 * 9 * 4
    assert weight_bytes(Kernel("conv", conv.params[:10] + (8.0, 32.0))) == 64 * 64 * 9  # int8 weights
    profile = _context_profile(wide_profile, {}, per_kernel_ms=0.0, n=80, seed=2, cold=(0.2, 1.0))
    mbs = [sum(weight_bytes(k) for k in ks) / 2**20 for ks, _ in profile.composites]
    assert sum(m > 1.0 for m in mbs) > 10  # the law matters for some networks
    assert profile.context_fit["cache_mb"] == 1.0 and profile.context_fit["cold_form"] == "beyond"
    assert profile.context_fit["cold_ms_per_mb"] == pytest.approx(0.2, rel=0.15)
    ks, ms = max(profile.composites, key=lambda c: sum(weight_bytes(k) for k in c[0]))
    assert profile.predict_kernels(ks).ms == pytest.approx(ms, rel=0.05)
    # a few big networks alone never set the term (CONTEXT_MIN_COLD)
    from latency_models.profile import CONTEXT_MIN_COLD, _fit_context

    small = [c for c, m in zip(profile.composites, mbs, strict=True) if m <= 0.5]
    big = [c for c, m in zip(profile.composites, mbs, strict=True) if m > 0.5][:CONTEXT_MIN_COLD - 1]
    profile.composites = small + big
    assert len(small) >= 8
    _, report = _fit_context(profile)
    assert report["cache_mb"] is None and report["cold_ms_per_mb"] == 0.0


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
    """A profile of the first format keeps version 1 and its features; sparse-cpu ones are version 2 and
    both load (builds of the other runtimes are version 3: see the tests above)."""
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
    # measured samples of different samplings never mix in a side file
    assert _key("sparse-cpu", 1, 1, "fp32", "x")["sampling"] == "structured-1"
    assert _key("onnxruntime", 1, 1, "fp32", "x")["sampling"] == "median-3/networks-with-dataflow"
    assert _key("torch-eager", 1, 1, "fp32", "x")["sampling"] == "median-3"
    assert _key("onnxruntime", 1, 1, "int8", "x")["sampling"] == "median-3/int8-networks-as-deployed"
    assert not again.predictor.relative and not profile.predictor.relative


def test_context_groups_split_depthwise_convs_by_16_and_8():
    """onnxruntime int8 runs a depthwise conv ~1.7x slower per MAC at 8 mod 16 channels: the context fit
    gives multiples of 16, other multiples of 8 and the rest their own group (convs split by 8 only)."""
    from latency_models.kernels import Kernel
    from latency_models.profile import context_key

    assert [context_key(Kernel("dwconv", (c, 3.0, 1.0, 14.0, 14.0, 1.0))) for c in (64.0, 56.0, 50.0)] == [
        "dwconv/a16", "dwconv/a8", "dwconv/u"]
    conv = (3.0, 1.0, 14.0, 14.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0)
    assert context_key(Kernel("conv", (56.0, 64.0, *conv))) == "conv/a8"
    assert context_key(Kernel("conv", (56.0, 60.0, *conv))) == "conv/u"


def test_a_blocked_layout_profile_prices_its_reorders_from_whole_networks(wide_profile):
    """Chains of convs with aligned and unaligned widths whose networks pay a known cost per element a
    reorder moves (onnxruntime's NCHWc layout, `latency_models.layouts`): a profile with the layout's
    block learns that cost from the networks and predicts a new chain; without the layout the same
    networks fit worse (the kernels alone cannot tell which neighbours reorder)."""
    import copy
    import random

    from latency_models.kernels import Kernel
    from latency_models.layouts import nchwc_kernels
    from latency_models.profile import _fit_context

    law = {1.0: 0.4, 0.0: 0.2}  # ms per million elements: out of the blocked layout, into it

    def chain(rng: random.Random) -> list[Kernel]:
        widths = [rng.choice((1, 3))] + [rng.choice((8, 13, 16, 21, 24, 30, 32, 37, 48)) for _ in range(rng.randint(3, 9))]
        hw = float(rng.choice((14, 28)))
        return [Kernel("conv", (float(a), float(b), 3.0, 1.0, hw, hw, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0), inputs=(i - 1,))
                for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))]

    def truth(profile: DeviceProfile, ks: list[Kernel]) -> float:
        pred, _ = profile.predictor.predict_kernels(ks)
        reorders = [k for k in nchwc_kernels(ks, 8) if k.type == "reorder"]
        return profile.overhead_ms + float(pred.sum()) + sum(law[k.params[1]] * k.params[0] / 1e6 for k in reorders)

    rng = random.Random(4)
    nets = [chain(rng) for _ in range(80)]
    fits = {}
    for block in (8, 0):
        profile = copy.copy(wide_profile)
        profile.layout_block = block
        profile.composites = [(ks, truth(profile, ks)) for ks in nets]
        profile.type_scale, profile.context_fit = _fit_context(profile)
        fits[block] = profile
    fit = fits[8].context_fit
    assert fit["io_ms_per_melem"]["reorder/out"] == pytest.approx(0.4, rel=0.3)
    assert fit["cv_within_10pct"] > 0.9
    assert fit["cv_rel_rmse"] < fits[0].context_fit["cv_rel_rmse"]
    new = chain(random.Random(99))
    assert fits[8].predict_kernels(new).ms == pytest.approx(truth(fits[8], new), rel=0.05)
