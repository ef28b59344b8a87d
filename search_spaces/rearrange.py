"""Filter rearrangement for 1xN block pruning (Lin et al., "1xN pattern for pruning CNNs").

Output filters are reordered by L1 norm (descending) so that the n consecutive kernels forming a
1xN block have similar magnitudes: blocks are then kept or removed with less collateral damage. The
matching permutation is applied to the layer's BN and to the input channels of its consumers, so the
network computes exactly the same function (tests/test_apply.py checks that).

Where it is skipped (reported, never silently wrong): when the layer's output channels are coupled to
another producer (a residual add: permuting one branch would need permuting all of them and the
block inputs), when the layer's outputs are the model's outputs, when a consumer is a depthwise conv, a flatten into a classifier, a concat, or the
model output. In the zoo that means: ResNet conv1 of each block (consumer conv2) is rearranged,
ResNet conv2 / shortcut (residual-coupled) are skipped; MobileNetV2 expand convs feed a depthwise
conv (skipped); VGG convs except the last before the flatten are rearranged; ViT MLP fc1 is
rearranged, q/k/v are coupled through attention (skipped).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_pruning.ops import OPTYPE

from automl.models.layers import prunable_layers
from search_spaces.channel import _build_graph, output_layers


def _plan(graph, model: nn.Module, name: str) -> tuple[list[tuple[nn.Module, str]], str | None]:
    """(module, how) pairs to permute, or a reason to skip."""
    names = {m: n for n, m in model.named_modules()}
    layer = model.get_submodule(name)
    width = layer.weight.shape[0]
    pruner = graph.get_pruner_of_module(layer)
    group = graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(width)))
    plan: list[tuple[nn.Module, str]] = []
    for dep, idxs in group:
        mod, kind = dep.target.module, dep.target.type
        out_fn = graph.is_out_channel_pruning_fn(dep.handler)
        if kind == OPTYPE.ELEMENTWISE and out_fn:
            if getattr(mod, "op_cls", None) is not None and "add" in str(getattr(mod, "op_cls", "")).lower():
                return [], "output channels meet a residual add"
            continue
        if kind == OPTYPE.BN and out_fn:
            plan.append((mod, "bn"))
        elif kind in (OPTYPE.CONV, OPTYPE.LINEAR) and out_fn:
            if mod is not layer:
                return [], f"output channels are coupled with '{names.get(mod, '?')}' (residual add)"
            plan.append((mod, "out"))
        elif kind in (OPTYPE.CONV, OPTYPE.LINEAR) and not out_fn:
            if len(idxs) != width:
                return [], f"consumer '{names.get(mod, '?')}' sees the channels through a reshape"
            plan.append((mod, "in"))
        else:
            return [], f"channels reach a {kind.name.lower()} op"
    return plan, None


@torch.no_grad()
def rearrange_filters(model: nn.Module, example_input: torch.Tensor, layers: Sequence[str]) -> dict[str, str]:
    """Reorder each named layer's output filters by L1 norm in place; returns 'rearranged' or the skip reason."""
    if not layers:
        return {}
    graph = _build_graph(model, example_input)
    protected = output_layers(model, example_input, prunable_layers(model, tuple(example_input.shape[1:])))
    status: dict[str, str] = {}
    for name in layers:
        if name in protected:
            status[name] = "skipped: its outputs are the model's outputs"
            continue
        plan, reason = _plan(graph, model, name)
        if reason is not None:
            status[name] = f"skipped: {reason}"
            continue
        layer = model.get_submodule(name)
        perm = torch.argsort(layer.weight.abs().reshape(layer.weight.shape[0], -1).sum(1), descending=True,
                             stable=True)
        for mod, how in plan:
            if how == "in":
                mod.weight.copy_(mod.weight[:, perm])
                continue
            tensors = [mod.weight, getattr(mod, "bias", None)]
            if how == "bn":
                tensors += [mod.running_mean, mod.running_var]
            for t in tensors:
                if t is not None:
                    t.copy_(t[perm])
        status[name] = "rearranged"
    return status
