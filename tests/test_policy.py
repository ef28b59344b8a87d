"""The policy contract: JSON round trip, and every validation error names the layer and the field."""

from __future__ import annotations

import json

import pytest

from automl.policy import SCHEMA_VERSION, SCHEMES, CompressionPolicy, LayerDecision, LayerShape, PolicyError

SHAPES = [
    LayerShape("conv1", "conv3x3", 3, 16, (3, 3)),
    LayerShape("layer1.0.conv1", "conv3x3", 16, 16, (3, 3)),
    LayerShape("layer2.0.shortcut.0", "conv1x1", 16, 32, (1, 1)),
    LayerShape("dw", "depthwise", 32, 32, (3, 3), groups=32),
    LayerShape("fc", "linear", 64, 10),
]


def full_policy() -> CompressionPolicy:
    return CompressionPolicy(
        model="resnet20",
        layers={
            "conv1": LayerDecision("dense", weight_bits=8, act_bits=8),
            "layer1.0.conv1": LayerDecision("pattern", sparsity=0.25, pattern_size=4),
            "layer2.0.shortcut.0": LayerDecision("block_punched", sparsity=0.5, block=(8, 4), weight_bits=4),
            "dw": LayerDecision("unstructured", sparsity=0.3),
            "fc": LayerDecision("nm", n=2, m=4),
        },
        default=LayerDecision("channel", sparsity=0.5, align=8),
        metadata={"agent": "random", "note": "test"},
    )


def test_json_round_trip_is_lossless(tmp_path):
    policy = full_policy()
    policy.validate(SHAPES)
    again = CompressionPolicy.from_json(policy.to_json())
    assert again == policy
    assert again.layers["layer2.0.shortcut.0"].block == (8, 4)
    saved = policy.save(tmp_path / "sub" / "p.json")
    assert CompressionPolicy.load(saved) == policy
    data = json.loads(saved.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    # Only non-default fields are written, so a dense layer stays one short line.
    assert data["layers"]["dw"] == {"scheme": "unstructured", "sparsity": 0.3}


def test_every_scheme_round_trips():
    for scheme in SCHEMES:
        kwargs = {"dense": {}, "unstructured": {"sparsity": 0.5}, "channel": {"sparsity": 0.5, "align": 8},
                  "nm": {"n": 1, "m": 4}, "block1xn": {"n": 4, "sparsity": 0.5},
                  "pattern": {"sparsity": 0.1}, "block_punched": {"block": (4, 4), "sparsity": 0.5}}[scheme]
        d = LayerDecision(scheme, **kwargs)
        assert LayerDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_decision_lookup_falls_back_to_default():
    policy = full_policy()
    assert policy.decision("fc").scheme == "nm"
    assert policy.decision("not.named") == policy.default
    updated = policy.with_layer("fc", LayerDecision())
    assert updated.decision("fc").scheme == "dense" and policy.decision("fc").scheme == "nm"


def test_weight_density():
    assert LayerDecision().weight_density == 1.0
    assert LayerDecision("nm", n=2, m=4).weight_density == 0.5
    assert LayerDecision("unstructured", sparsity=0.75).weight_density == 0.25
    assert LayerDecision("pattern", sparsity=0.5, pattern_size=4).weight_density == pytest.approx(0.5 * 4 / 9)


def assert_names(exc: pytest.ExceptionInfo, layer: str, field: str) -> None:
    message = str(exc.value)
    assert f"layer '{layer}'" in message, message
    assert f"field '{field}'" in message, message
    assert exc.value.layer == layer and exc.value.field_name == field


@pytest.mark.parametrize("decision, field", [
    ({"scheme": "unstructured", "sparsity": 1.0}, "sparsity"),
    ({"scheme": "unstructured", "sparsity": -0.1}, "sparsity"),
    ({"scheme": "unstructured", "sparsity": float("nan")}, "sparsity"),
    ({"scheme": "unstructured", "sparsity": "0.5"}, "sparsity"),
    ({"scheme": "dense", "sparsity": 0.5}, "sparsity"),
    ({"scheme": "nm", "n": 4, "m": 4}, "n"),
    ({"scheme": "nm", "n": 5, "m": 4}, "n"),
    ({"scheme": "nm", "n": 2}, "m"),
    ({"scheme": "nm", "n": 0, "m": 4}, "n"),
    ({"scheme": "block1xn", "n": 1}, "n"),
    ({"scheme": "block_punched", "sparsity": 0.5}, "block"),
    ({"scheme": "block_punched", "block": [4, 0]}, "block"),
    ({"scheme": "block_punched", "block": [4, 4, 4]}, "block"),
    ({"scheme": "channel", "sparsity": 0.5, "align": 3}, "align"),
    ({"scheme": "pattern", "pattern_size": 9}, "pattern_size"),
    ({"scheme": "bogus"}, "scheme"),
    ({"scheme": "dense", "weight_bits": 1}, "weight_bits"),
    ({"scheme": "dense", "weight_bits": 9}, "weight_bits"),
    ({"scheme": "dense", "act_bits": 16}, "act_bits"),
    ({"scheme": "dense", "act_bits": 4.0}, "act_bits"),
    ({"scheme": "dense", "sparsityy": 0.5}, "sparsityy"),
])
def test_structural_errors_name_layer_and_field(decision, field):
    data = {"schema_version": SCHEMA_VERSION, "model": "resnet20", "layers": {"layer1.0.conv1": decision}}
    with pytest.raises(PolicyError) as exc:
        CompressionPolicy.from_dict(data)
    assert_names(exc, "layer1.0.conv1", field)


def test_errors_also_raised_when_built_in_python():
    with pytest.raises(PolicyError) as exc:
        CompressionPolicy("resnet20", {"fc": LayerDecision("nm", n=4, m=2)})
    assert_names(exc, "fc", "n")
    with pytest.raises(PolicyError) as exc:
        CompressionPolicy("resnet20", default=LayerDecision("unstructured", sparsity=1.5))
    assert_names(exc, "<default>", "sparsity")


@pytest.mark.parametrize("layer, decision, field", [
    ("fc", LayerDecision("nm", n=2, m=3), "m"),  # 64 input features: 3 does not divide
    ("layer1.0.conv1", LayerDecision("block1xn", n=3, sparsity=0.5), "n"),  # 16 out channels
    ("layer1.0.conv1", LayerDecision("block_punched", block=(3, 4), sparsity=0.5), "block"),  # rows vs 16 out
    ("layer1.0.conv1", LayerDecision("block_punched", block=(4, 5), sparsity=0.5), "block"),  # cols vs 144
    ("layer2.0.shortcut.0", LayerDecision("pattern", sparsity=0.1), "scheme"),  # 1x1: no 3x3 pattern
    ("dw", LayerDecision("nm", n=2, m=4), "m"),  # depthwise: gemm cols = 1*3*3 = 9
])
def test_shape_errors_name_layer_and_field(layer, decision, field):
    policy = CompressionPolicy("resnet20", {layer: decision})
    with pytest.raises(PolicyError) as exc:
        policy.validate(SHAPES)
    assert_names(exc, layer, field)


def test_divisible_blocks_pass_shape_checks():
    CompressionPolicy("resnet20", {
        "layer1.0.conv1": LayerDecision("block_punched", block=(4, 9), sparsity=0.5),  # 16 x 144
        "dw": LayerDecision("nm", n=1, m=3),  # 9 cols
        "fc": LayerDecision("block1xn", n=2, sparsity=0.5),
    }).validate(SHAPES)


def test_unknown_layer_is_named_with_a_suggestion():
    policy = CompressionPolicy("resnet20", {"layer1.0.conv9": LayerDecision("unstructured", sparsity=0.5)})
    with pytest.raises(PolicyError) as exc:
        policy.validate(SHAPES)
    assert exc.value.layer == "layer1.0.conv9"
    assert "unknown layer" in str(exc.value) and "layer1.0.conv9" in str(exc.value)
    with pytest.raises(PolicyError, match="Did you mean"):
        CompressionPolicy("resnet20", {"0.conv1": LayerDecision()}).validate(SHAPES)


def test_default_is_checked_against_every_unnamed_layer():
    policy = CompressionPolicy("resnet20", {"fc": LayerDecision()}, default=LayerDecision("nm", n=1, m=3))
    with pytest.raises(PolicyError) as exc:
        policy.validate(SHAPES)  # 27 and 144 columns divide by 3; the 1x1 shortcut's 16 does not
    assert exc.value.layer == "layer2.0.shortcut.0 (from default)" and exc.value.field_name == "m"


@pytest.mark.parametrize("data, field", [
    ({"schema_version": 99, "model": "m"}, "schema_version"),
    ({"model": "m"}, "schema_version"),
    ({"schema_version": SCHEMA_VERSION}, "model"),
    ({"schema_version": SCHEMA_VERSION, "model": ""}, "model"),
    ({"schema_version": SCHEMA_VERSION, "model": "m", "extra": 1}, "extra"),
    ({"schema_version": SCHEMA_VERSION, "model": "m", "layers": []}, "layers"),
    ({"schema_version": SCHEMA_VERSION, "model": "m", "metadata": [1]}, "metadata"),
])
def test_top_level_errors_name_the_field(data, field):
    with pytest.raises(PolicyError) as exc:
        CompressionPolicy.from_dict(data)
    assert exc.value.field_name == field
    assert f"field '{field}'" in str(exc.value)


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="not valid JSON"):
        CompressionPolicy.from_json("{not json")
    with pytest.raises(PolicyError, match="does not exist"):
        CompressionPolicy.load(tmp_path / "nope.json")
    with pytest.raises(PolicyError, match="must be a JSON object"):
        CompressionPolicy.from_json("[1, 2]")


def test_summary_counts_schemes():
    summary = full_policy().summary()
    assert summary["model"] == "resnet20" and summary["n_layers"] == 5
    assert summary["n_nm"] == 1 and summary["n_dense"] == 1
