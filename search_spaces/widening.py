"""Free channels: keep the channels a blocked runtime computes anyway.

A runtime that runs convolutions on channel blocks pads a layer's channels up to the next whole block:
onnxruntime's NCHWc layout on AVX-512 computes 16 channels at a time, so a 64-channel ResNet-20 layer
pruned to 24 channels runs as 32 (on the Xeon host, a 24 -> 24 3x3 conv at 7x7 measured 9.2 us in
isolation, a 32 -> 32 one 9.1 us). The 8 channels pruned there cost accuracy and buy no latency. A
search proposes such widths freely (its space offers alignments of 8 and 16 because 8 is a real saving
where a layer has only 16 channels), so `widen_free_channels` raises every channel group's kept count to
its next block multiple wherever the latency model says that costs nothing, after the search has chosen
where to prune. The cost is a callable, so the decision stays with whatever prices latency (a device
profile's prediction; a measurement).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from automl.policy import CompressionPolicy
from search_spaces.channel import group_leader, kept_channels
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class Widening:
    """One channel group raised: its leader layer, the group's width and the kept counts before and after."""

    layer: str
    width: int
    kept_before: int
    kept_after: int


def widen_free_channels(policy: CompressionPolicy, space: SearchSpace, cost: Callable[[CompressionPolicy], float],
                        block: int, tolerance: float = 0.0) -> tuple[CompressionPolicy, list[Widening]]:
    """`policy` with each channel-pruned group's kept count raised to the next multiple of `block` (at most
    the group's width) wherever `cost` (e.g. predicted ms) grows by no more than `tolerance` (a fraction of
    the cost before that step). Groups are tried one at a time in the space's order, each against the
    policy as widened so far. Returns the policy and what was widened (empty: `policy` itself)."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive number of channels, got {block!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    current = cost(policy)
    widened: list[Widening] = []
    for group in space.groups:
        if group.unit > 1:  # attention heads: whole heads, not channel blocks
            continue
        leader = group_leader(group, lambda name, p=policy: space.effective_decision(p, name))
        if leader is None:
            continue
        d = space.effective_decision(policy, leader)
        kept = kept_channels(group.width, d.sparsity, d.align, group.unit)
        step = max(block, d.align)
        if step % min(block, d.align):  # the decision's alignment and the block do not nest
            continue
        wider = min(group.width, math.ceil(kept / step) * step)
        if wider <= kept:
            continue
        trial_decision = replace(d, sparsity=1.0 - wider / group.width)
        if kept_channels(group.width, trial_decision.sparsity, d.align, group.unit) != wider:
            continue
        trial = CompressionPolicy(policy.model, {**policy.layers, leader: trial_decision}, policy.default,
                                  dict(policy.metadata))
        price = cost(trial)
        if price <= current * (1.0 + tolerance):
            policy, current = trial, price
            widened.append(Widening(leader, group.width, kept, wider))
    return policy, widened
