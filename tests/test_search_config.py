"""Experiment config validation: unknown keys and bad values are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.search.config import ConfigError, SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_config_is_valid():
    cfg = SearchConfig.from_yaml(ROOT / "experiments" / "quickstart.yaml")
    assert cfg.name == "quickstart"
    assert cfg.model.name == "resnet20"
    assert cfg.budget.max_latency_ratio == 0.5
    assert cfg.objectives[0] == "accuracy"


def test_every_experiment_yaml_validates():
    for path in (ROOT / "experiments").rglob("*.yaml"):
        if path.parent.name == "benchmarks":
            continue
        SearchConfig.from_yaml(path)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"candidatez": 3}, "candidatez"),
        ({"budget": {"max_mac_ratio": 1.5}}, "budget.max_mac_ratio"),
        ({"budget": {"max_latency_ms": 1.0, "max_latency_ratio": 0.5}}, "budget"),
        ({"ray": {"workers": 0}}, "ray.workers"),
        ({"objectives": ["latency_ms"]}, "objectives"),
        ({"model": {"nmae": "resnet20"}}, "model.nmae"),
        ({"name": "has space"}, "name"),
        ({"evaluation": {"proxy_finetune_steps": -1}}, "evaluation.proxy_finetune_steps"),
        ({"evaluation": {"finetune_lr": 0}}, "evaluation.finetune_lr"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict(data, "cfg.yaml")
    assert field in str(err.value)
    assert str(err.value).startswith("cfg.yaml: ")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SearchConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SearchConfig.from_yaml(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        SearchConfig.from_yaml(top)


def test_round_trip_and_flat_params():
    cfg = SearchConfig.from_dict({"agent": {"name": "optuna", "options": {"sampler": "tpe"}}, "candidates": 7})
    again = SearchConfig.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg
    flat = cfg.flat_params()
    assert flat["agent.name"] == "optuna"
    assert flat["agent.options.sampler"] == "tpe"
    assert flat["candidates"] == "7"
