"""Coupled channel groups and physical channel removal (Torch-Pruning's DependencyGraph).

Why a dependency graph: a residual add ties the output channels of every conv that feeds it, a
depthwise conv ties its input and output channels to its producer, a flatten maps one channel to
several classifier inputs. Removing channel 5 of one layer means removing it from all of them.

The coupled-channel rule (the ONE rule both the analytic shapes in `SearchSpace.compressed_layers`
and the physical pruning below use, via `resolve_kept`):

* A group's *out-members* are the prunable layers whose output channels are the group's channels,
  in execution order. The group's **leader** is the first out-member whose decision is `channel`;
  its `sparsity` and `align` alone set the group's kept count. Other members' channel decisions are
  ignored for that group; members with mask schemes keep their scheme on the shrunk layer.
* kept = min(width, max(align, align * round_half_up(width * (1 - sparsity) / align))), at least 1.
  (Torch-Pruning's `round_to`: channel counts that are multiples of 8 run much faster, GUIDE §2.)
* Attention groups (q/k/v outputs + proj inputs of a module with `heads`) are pruned in whole heads:
  kept heads = max(1, round_half_up(heads * (1 - sparsity))); align does not apply.
* Groups reaching the model output (the classifier's outputs) or touching ops the engine cannot
  follow exactly (concatenation, split, unwrapped parameters such as a transformer's positional
  embedding on the residual stream) are not channel-prunable: their layers get `channel_group=None`.

Which channels go: an `Importance` callable scores each channel (default L1 norm of the
out-members' filters, summed), the lowest-scored are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from automl.models.layers import LayerInfo
from automl.policy import LayerDecision
from search_spaces.schemes.base import round_half_up

Importance = Callable[[Sequence[nn.Module], int], torch.Tensor]
"""(out-member modules, width) -> score per channel (higher = keep)."""

_PLAIN_OPS = {OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.ELEMENTWISE, OPTYPE.RESHAPE}
_ATTENTION_OPS = _PLAIN_OPS | {OPTYPE.EXPAND}


def l1_importance(modules: Sequence[nn.Module], width: int) -> torch.Tensor:
    """Sum over the group's producers of each output filter's L1 norm (Li et al. 2017)."""
    score = torch.zeros(width)
    for m in modules:
        score += m.weight.detach().abs().reshape(m.weight.shape[0], -1).sum(1).float()
    return score


@dataclass(frozen=True)
class ChannelGroup:
    """Plain-data description of one set of coupled channels (serialised inside the SearchSpace)."""

    id: int
    width: int
    out_members: tuple[str, ...]
    in_members: tuple[tuple[str, int], ...]  # (layer, factor): the layer's inputs = factor * channels
    unit: int = 1  # channels removed together: 1, or head_dim for attention heads

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "width": self.width, "out_members": list(self.out_members),
                "in_members": [[n, f] for n, f in self.in_members], "unit": self.unit}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelGroup:
        return cls(int(d["id"]), int(d["width"]), tuple(d["out_members"]),
                   tuple((str(n), int(f)) for n, f in d["in_members"]), int(d.get("unit", 1)))


def kept_channels(width: int, sparsity: float, align: int = 1, unit: int = 1) -> int:
    """The kept count of a group of `width` channels (see the module docstring)."""
    if unit > 1:
        units = width // unit
        return max(1, round_half_up(units * (1.0 - sparsity))) * unit
    k = align * round_half_up(width * (1.0 - sparsity) / align)
    return max(1, min(width, max(align, k)))


def group_leader(group: ChannelGroup, decision_of: Callable[[str], LayerDecision]) -> str | None:
    for name in group.out_members:
        if decision_of(name).scheme == "channel":
            return name
    return None


def resolve_kept(groups: Sequence[ChannelGroup], decision_of: Callable[[str], LayerDecision]) -> dict[int, int]:
    """Kept channel count per group id under a policy (the shared rule; no weights needed)."""
    kept: dict[int, int] = {}
    for g in groups:
        leader = group_leader(g, decision_of)
        if leader is None:
            kept[g.id] = g.width
        else:
            d = decision_of(leader)
            kept[g.id] = kept_channels(g.width, d.sparsity, d.align, g.unit)
    return kept


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)


def _attention_parent(model: nn.Module, out_members: Sequence[str]) -> nn.Module | None:
    """The module with `heads` that owns all out-members (q/k/v of one attention), else None."""
    parents = {name.rsplit(".", 1)[0] if "." in name else "" for name in out_members}
    if len(parents) != 1:
        return None
    parent = model.get_submodule(parents.pop())
    return parent if isinstance(getattr(parent, "heads", None), int) else None


@torch.no_grad()
def output_layers(model: nn.Module, example_input: torch.Tensor, layers: Sequence[LayerInfo]) -> set[str]:
    """Layers whose output is the model's output (their output channels must never be pruned):
    those whose output tensor shares storage with the model output, plus the last layer executed."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(info.name).register_forward_hook(
        lambda mod, inp, out, name=info.name: outputs.setdefault(name, out)) for info in layers]
    was_training = model.training
    model.eval()
    try:
        y = model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    found = {n for n, o in outputs.items() if isinstance(y, torch.Tensor) and o.untyped_storage().data_ptr()
             == y.untyped_storage().data_ptr()}
    if layers:
        found.add(max(layers, key=lambda i: i.index).name)
    return found


def _groups_from_graph(model: nn.Module, graph: tp.DependencyGraph, layers: Sequence[LayerInfo],
                       example_input: torch.Tensor) -> list[tuple[ChannelGroup, Any]]:
    names = {m: n for n, m in model.named_modules()}
    by_name = {info.name: info for info in layers}
    protected = output_layers(model, example_input, layers)
    found: list[tuple[ChannelGroup, Any]] = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        outs: list[str] = []
        ins: list[tuple[str, int]] = []
        types = set()
        width = len(group[0].idxs)
        for dep, idxs in group:
            types.add(dep.target.type)
            name = names.get(dep.target.module)
            if name not in by_name:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                if name not in outs:
                    outs.append(name)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                factor, rest = divmod(len(idxs), width)
                if rest:
                    types.add(OPTYPE.CUSTOMIZED)  # a mapping we cannot express: refuse the group
                ins.append((name, factor))
        if not outs or protected.intersection(outs):
            continue
        outs.sort(key=lambda n: by_name[n].index)
        ins.sort(key=lambda t: by_name[t[0]].index)
        unit = 1
        if types <= _PLAIN_OPS:
            pass
        elif types <= _ATTENTION_OPS and all(by_name[n].kind == "attention" for n in outs):
            parent = _attention_parent(model, outs)
            if parent is None or width % parent.heads:
                continue
            unit = width // parent.heads
        else:
            continue  # output, concat, split, unwrapped parameters...: not channel-prunable
        found.append((ChannelGroup(0, width, tuple(outs), tuple(ins), unit), group))
    found.sort(key=lambda t: by_name[t[0].out_members[0]].index)
    return [(ChannelGroup(i, g.width, g.out_members, g.in_members, g.unit), raw) for i, (g, raw) in enumerate(found)]


def find_channel_groups(model: nn.Module, example_input: torch.Tensor,
                        layers: Sequence[LayerInfo]) -> list[ChannelGroup]:
    """The channel-prunable coupled groups of `model`, ordered by their first producer."""
    return [g for g, _ in _groups_from_graph(model, _build_graph(model, example_input), layers, example_input)]


@torch.no_grad()
def prune_channels(model: nn.Module, example_input: torch.Tensor, layers: Sequence[LayerInfo],
                   decision_of: Callable[[str], LayerDecision],
                   importance: Importance = l1_importance) -> dict[str, Any]:
    """Physically remove channels in place following the shared rule; returns what was kept per group."""
    graph = _build_graph(model, example_input)
    groups = _groups_from_graph(model, graph, layers, example_input)
    kept = resolve_kept([g for g, _ in groups], decision_of)
    report: dict[str, Any] = {}
    for g, _ in groups:
        k = kept[g.id]
        if k >= g.width:
            continue
        modules = [model.get_submodule(n) for n in g.out_members]
        scores = importance(modules, g.width)
        if scores.shape != (g.width,):
            raise ValueError(f"importance returned shape {tuple(scores.shape)}, expected ({g.width},)")
        if g.unit > 1:
            unit_scores = scores.view(-1, g.unit).sum(1)
            keep_units = torch.topk(unit_scores, k // g.unit).indices.sort().values
            keep = (keep_units[:, None] * g.unit + torch.arange(g.unit)).flatten()
        else:
            keep = torch.topk(scores, k).indices.sort().values
        drop = sorted(set(range(g.width)) - set(keep.tolist()))
        root = modules[0]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
        if g.unit > 1:
            parent = _attention_parent(model, g.out_members)
            parent.heads = k // g.unit
        report[g.out_members[0]] = {"group": g.id, "width": g.width, "kept": k,
                                    "leader": group_leader(g, decision_of)}
    return report
