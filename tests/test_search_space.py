"""SearchSpace: JSON round trip, decode / decode_vector always valid, clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automl.models import build_model
from automl.policy import CompressionPolicy, LayerDecision, PolicyError
from search_spaces import SchemeError, SearchSpace, SpaceConfig, cost_report


@pytest.fixture(scope="module")
def resnet_space() -> SearchSpace:
    return SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28))


@pytest.fixture(scope="module")
def mbv2_space() -> SearchSpace:
    return SearchSpace.from_model(build_model("mobilenetv2", 1, 10, 28), "mobilenetv2", (1, 28, 28))


def test_json_round_trip(resnet_space: SearchSpace) -> None:
    text = resnet_space.to_json()
    back = SearchSpace.from_json(text)
    assert back.to_dict() == json.loads(text)
    policy = resnet_space.decode({"layer1.0.conv1": {"scheme": "channel", "sparsity": 0.5, "align": 8},
                                  "layer2.0.conv1": {"scheme": "nm", "nm": "2:4", "weight_bits": 8}})
    assert back.compressed_layers(policy) == resnet_space.compressed_layers(policy)
    assert back.dimensions() == resnet_space.dimensions()


def test_space_config_round_trip_and_errors() -> None:
    cfg = SpaceConfig(sparsities=(0.0, 0.5), nm=((2, 4),), weight_bits=(None,))
    assert SpaceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(SchemeError, match="unknown space config field"):
        SpaceConfig.from_dict({"sparsity": [0.5]})
    with pytest.raises(SchemeError, match="unknown scheme 'magic'"):
        SpaceConfig(schemes={"conv3x3": ("magic",)})


def test_layer_choices_follow_kinds(resnet_space: SearchSpace, mbv2_space: SearchSpace) -> None:
    by = {lc.layer.name: lc for lc in resnet_space.layers}
    assert "pattern" in by["layer1.0.conv1"].schemes
    assert "pattern" not in by["layer2.0.shortcut.0"].schemes  # 1x1
    assert by["fc"].channel_group is None and "channel" not in by["fc"].schemes  # classifier outputs kept
    dw = [lc for lc in mbv2_space.layers if lc.layer.kind == "depthwise"]
    assert dw and all(set(lc.schemes) == {"dense", "unstructured", "channel"} for lc in dw)
    assert all(lc.channel_group is not None for lc in dw)


def test_dense_policy_keeps_shapes(resnet_space: SearchSpace) -> None:
    layers = resnet_space.compressed_layers(resnet_space.dense_policy())
    for cl, lc in zip(layers, resnet_space.layers, strict=True):
        assert (cl.in_channels, cl.out_channels, cl.macs, cl.density) == (
            lc.layer.in_channels, lc.layer.out_channels, lc.layer.macs, 1.0)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_decode_vector_always_valid(resnet_space: SearchSpace, mbv2_space: SearchSpace, data) -> None:
    space = data.draw(st.sampled_from([resnet_space, mbv2_space]))
    n = len(space.dimensions())
    x = data.draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n))
    policy = space.decode_vector(x)
    space.validate(policy)
    CompressionPolicy.from_json(policy.to_json())  # serialisable
    report = cost_report(space, policy)
    assert 0.0 < report.mac_ratio <= 1.0


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_decode_random_choices_always_valid(resnet_space: SearchSpace, data) -> None:
    choices = {}
    for lc in resnet_space.layers:
        scheme = data.draw(st.sampled_from(lc.schemes))
        c = {"scheme": scheme, "sparsity": data.draw(st.sampled_from(lc.sparsities)),
             "weight_bits": data.draw(st.sampled_from(lc.weight_bits))}
        if scheme == "nm":
            c["nm"] = list(data.draw(st.sampled_from(lc.nm)))
        if scheme == "block1xn":
            c["block_n"] = data.draw(st.sampled_from(lc.block_n))
        if scheme == "block_punched":
            c["block"] = list(data.draw(st.sampled_from(lc.blocks)))
        if scheme == "channel":
            c["align"] = data.draw(st.sampled_from(lc.aligns))
        choices[lc.layer.name] = c
    policy = resnet_space.decode(choices)
    resnet_space.validate(policy)
    assert set(policy.layers) == set(choices)


def test_decode_vector_wrong_length(resnet_space: SearchSpace) -> None:
    with pytest.raises(SchemeError, match="dimensions"):
        resnet_space.decode_vector([0.5])


def test_unsupported_scheme_on_kind_is_a_clear_error(mbv2_space: SearchSpace, resnet_space: SearchSpace) -> None:
    dw = next(lc.layer.name for lc in mbv2_space.layers if lc.layer.kind == "depthwise")
    with pytest.raises(SchemeError, match="depthwise layer does not support it") as info:
        mbv2_space.decode({dw: {"scheme": "nm", "nm": "2:4"}})
    assert info.value.layer == dw and info.value.field_name == "scheme"
    bad = CompressionPolicy("resnet20", {"layer2.0.shortcut.0": LayerDecision("pattern", sparsity=0.5)})
    with pytest.raises(PolicyError, match="layer2.0.shortcut.0"):
        resnet_space.validate(bad)
    with pytest.raises(SchemeError, match="cannot be pruned"):
        resnet_space.validate(CompressionPolicy("resnet20", {"fc": LayerDecision("channel", sparsity=0.5)}))


def test_unknown_layer_and_bad_values(resnet_space: SearchSpace) -> None:
    with pytest.raises(SchemeError, match="unknown layer") as info:
        resnet_space.decode({"layer9.conv": {"scheme": "unstructured", "sparsity": 0.5}})
    assert info.value.layer == "layer9.conv"
    with pytest.raises(SchemeError, match="unknown layer"):
        resnet_space.validate(CompressionPolicy("resnet20", {"nope": LayerDecision("unstructured", sparsity=0.1)}))
    with pytest.raises(SchemeError, match="not an option"):
        resnet_space.decode({"layer1.0.conv1": {"scheme": "nm", "nm": "3:7"}})
    with pytest.raises(SchemeError, match="outside"):
        resnet_space.decode({"layer1.0.conv1": {"scheme": "unstructured", "sparsity": 0.99}})
    with pytest.raises(SchemeError, match="unknown choice key"):
        resnet_space.decode({"layer1.0.conv1": {"schem": "dense"}})


def test_coupled_shape_conflicts_are_repaired_and_recorded(resnet_space: SearchSpace) -> None:
    # Pruning conv1's residual group to 12 channels leaves layer1.0.conv1 with 12*9=108 GEMM columns:
    # N:M with m=8 no longer fits, the decoder picks the nearest fitting N:M option.
    policy = resnet_space.decode({"conv1": {"scheme": "channel", "sparsity": 0.25, "align": 4},
                                  "layer1.0.conv1": {"scheme": "nm", "nm": "4:8"}})
    d = policy.layers["layer1.0.conv1"]
    assert d.scheme == "nm" and 108 % d.m == 0 and d.n / d.m == 0.5
    assert any("layer1.0.conv1" in r for r in policy.metadata["repairs"])
    # The same policy without repair is rejected with the shrunk shape in the message.
    raw = CompressionPolicy("resnet20", {"conv1": LayerDecision("channel", sparsity=0.25, align=4),
                                         "layer1.0.conv1": LayerDecision("nm", n=4, m=8)})
    with pytest.raises(SchemeError, match="after channel pruning"):
        resnet_space.validate(raw)


def test_group_leader_rule(resnet_space: SearchSpace) -> None:
    # conv1, layer1.*.conv2 share one residual group; the first member choosing `channel` decides.
    policy = resnet_space.decode({"layer1.1.conv2": {"scheme": "channel", "sparsity": 0.5, "align": 8},
                                  "layer1.2.conv2": {"scheme": "channel", "sparsity": 0.2, "align": 1}})
    shapes = {cl.name: cl for cl in resnet_space.compressed_layers(policy)}
    assert {shapes[n].out_channels for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")} == {8}
    assert shapes["layer1.0.conv1"].in_channels == 8 and shapes["layer2.0.shortcut.0"].in_channels == 8
