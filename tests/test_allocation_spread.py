"""experiments/benchmarks/allocation_spread.py: the allocation shapes, their scaling, and the statistics
(the timed bisection and the fine-tunes run in the benchmark itself, docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))

import allocation_spread as spread  # noqa: E402

from automl.models import build_model  # noqa: E402
from latency_models.estimate import device_name  # noqa: E402
from search_spaces import SearchSpace, cost_report  # noqa: E402

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return SearchSpace.from_model(build_model("resnet20", 1, 10, 28).eval(), "resnet20", SHAPE)


def test_shapes_tell_the_residual_stream_from_the_inside_of_blocks(space):
    shapes = spread.group_shapes(space)
    assert set(shapes) == {"uniform", "inside_blocks", "residual_stream", "early_stages", "late_stages", "random0"}
    stream = {g.id for g in space.groups if len(g.out_members) > 1}
    assert len(stream) == 3  # one residual stream per ResNet-20 stage
    inside = shapes["inside_blocks"]
    assert all(inside[g] < 1 for g in stream) and all(w > 1 for g, w in inside.items() if g not in stream)
    early = shapes["early_stages"]
    stem_group = next(g.id for g in space.groups if "conv1" in g.out_members)
    last_stage = next(g.id for g in space.groups if "layer3.0.conv1" in g.out_members)
    assert early[stem_group] == 1.5 and early[last_stage] == 0.5  # cut early more, late less
    assert spread.group_shapes(space)["random0"] == shapes["random0"]  # seeded
    near = spread.group_shapes(space, near_uniform=2)
    assert {"near_uniform0", "near_uniform1"} <= set(near) and near["near_uniform0"] != near["near_uniform1"]
    assert all(0.75 <= w <= 1.25 for w in near["near_uniform1"].values())


def test_scale_cuts_monotonically_and_follows_the_shape(space):
    shapes = spread.group_shapes(space)
    ratios = [cost_report(space, spread.shaped_policy(space, shapes["uniform"], s)).mac_ratio
              for s in (0.0, 0.3, 0.6, 0.9)]
    assert ratios[0] == pytest.approx(1.0) and ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.2
    policy = spread.shaped_policy(space, shapes["inside_blocks"], 0.5)
    kept = {name: d for name, d in policy.layers.items() if d.scheme == "channel"}
    assert kept["layer3.0.conv1"].sparsity > kept["layer3.0.conv2"].sparsity  # inside cut more than stream
    assert {d.align for d in kept.values()} == {8}


def test_bisection_finds_the_smallest_scale_that_is_fast_enough(space):
    shapes = spread.group_shapes(space)

    def speedup(policy):  # MACs stand in for the timing here; the benchmark times each step
        return 1.0 / cost_report(space, policy).mac_ratio

    scale, policy = spread.bisect_scale(space, shapes["uniform"], speedup, target=2.0, iters=8)
    assert speedup(policy) >= 2.0
    assert speedup(spread.shaped_policy(space, shapes["uniform"], scale / 2)) < 2.0  # the smallest, not any
    assert spread.bisect_scale(space, shapes["uniform"], speedup, target=1000.0) is None


def test_rank_correlation():
    assert spread.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spread.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spread.ranks([5.0, 1.0, 5.0]) == [1.5, 0.0, 1.5]  # ties share their mean rank
    assert spread.spearman([1, 2], [1, 2]) != spread.spearman([1, 2], [1, 2])  # nan: too few pairs


def test_a_results_file_of_another_host_or_setting_is_refused(tmp_path):
    other_host = tmp_path / "a.json"
    other_host.write_text(json.dumps({"device": "another CPU", "model": "resnet20", "speedup": 2.8, "rows": {}}))
    with pytest.raises(SystemExit, match="another CPU"):
        spread.main(["--out", str(other_host)])
    other_speed = tmp_path / "b.json"
    other_speed.write_text(json.dumps({"device": device_name(), "model": "resnet20", "speedup": 2.0, "rows": {}}))
    with pytest.raises(SystemExit, match="at 2.0x"):
        spread.main(["--out", str(other_speed)])
    with pytest.raises(SystemExit, match="must exceed 1"):
        spread.main(["--speedup", "0.9", "--out", str(tmp_path / "c.json")])
