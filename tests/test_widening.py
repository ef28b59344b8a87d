"""widen_free_channels: kept counts raised to the block only where the cost says it is free."""

from __future__ import annotations

import math

import pytest

from automl.models import build_model
from automl.policy import CompressionPolicy
from search_spaces import SearchSpace
from search_spaces.widening import widen_free_channels


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28))


def macs(space: SearchSpace, policy: CompressionPolicy, block: int = 1) -> float:
    """Conv / linear MACs with channels counted in whole `block`s (block 1: the plain count): the cost of a
    runtime that computes `block` channels at a time, as onnxruntime's NCHWc layout does."""
    pad = lambda c: math.ceil(c / block) * block  # noqa: E731
    total = 0.0
    for cl in space.compressed_layers(policy):
        kh, kw = cl.kernel_size
        oh, ow = cl.output_hw
        total += pad(cl.out_channels) * pad(cl.in_channels) // cl.groups * kh * kw * oh * ow
    return total


def widths(space: SearchSpace, policy: CompressionPolicy) -> dict[str, int]:
    """Output channels of the layers whose outputs can be pruned (not the classifier)."""
    grouped = {name for g in space.groups for name in g.out_members}
    return {cl.name: cl.out_channels for cl in space.compressed_layers(policy) if cl.name in grouped}


def pruned_at(space: SearchSpace, sparsity: float) -> CompressionPolicy:
    return space.decode({name: {"scheme": "channel", "sparsity": sparsity, "align": 8}
                         for name in space.layer_names() if name != "fc"})


def test_a_blocked_cost_widens_every_group_to_the_block(space: SearchSpace) -> None:
    policy = pruned_at(space, 0.6)  # 16 -> 8, 32 -> 16, 64 -> 24 (align 8)
    before = widths(space, policy)
    assert any(w % 16 for w in before.values())
    wide, steps = widen_free_channels(policy, space, lambda p: macs(space, p, 16), block=16)
    after = widths(space, wide)
    assert all(w % 16 == 0 for w in after.values())
    assert all(after[n] >= before[n] for n in before) and after != before
    assert macs(space, wide, 16) == macs(space, policy, 16)  # free under that cost, by construction
    assert {(s.kept_before, s.kept_after) for s in steps} >= {(8, 16), (24, 32)}
    space.validate(wide)
    assert CompressionPolicy.from_json(wide.to_json()).layers == wide.layers


def test_a_cost_that_charges_every_channel_widens_nothing(space: SearchSpace) -> None:
    policy = pruned_at(space, 0.6)
    wide, steps = widen_free_channels(policy, space, lambda p: macs(space, p), block=16)
    assert steps == [] and wide is policy


def test_tolerance_lets_cheap_widenings_through(space: SearchSpace) -> None:
    policy = pruned_at(space, 0.6)
    _, strict = widen_free_channels(policy, space, lambda p: macs(space, p), block=16)
    _, loose = widen_free_channels(policy, space, lambda p: macs(space, p), block=16, tolerance=0.5)
    assert strict == [] and loose


def test_aligned_and_dense_groups_are_left_alone(space: SearchSpace) -> None:
    policy = pruned_at(space, 0.5)  # 8, 16, 32: the stage-1 groups are the only ones off the block
    wide, steps = widen_free_channels(policy, space, lambda p: macs(space, p, 16), block=16)
    assert {s.width for s in steps} == {16}
    dense, none = widen_free_channels(space.dense_policy(), space, lambda p: macs(space, p, 16), block=16)
    assert none == [] and dense == space.dense_policy()


def test_bad_arguments_are_named(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="block"):
        widen_free_channels(space.dense_policy(), space, lambda p: 1.0, block=0)
    with pytest.raises(ValueError, match="tolerance"):
        widen_free_channels(space.dense_policy(), space, lambda p: 1.0, block=16, tolerance=-0.1)
