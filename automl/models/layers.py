"""Introspection: which layers of a model can be compressed, their kinds, shapes and MACs.

One forward pass with hooks records each Conv2d / Linear layer's input and output sizes. The kinds
are what the search space keys scheme support on: conv3x3, conv1x1, depthwise, conv (other
kernels), linear, attention (a Linear inside a module that declares `compress_kind = "attention"`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from automl.policy import LayerShape

LAYER_KINDS = ("conv3x3", "conv1x1", "depthwise", "conv", "linear", "attention")


@dataclass(frozen=True)
class LayerInfo(LayerShape):
    """A prunable layer as seen in one forward pass at the model's input size."""

    stride: tuple[int, int] = (1, 1)
    input_hw: tuple[int, int] = (1, 1)
    output_hw: tuple[int, int] = (1, 1)
    tokens: int = 1  # rows a Linear layer sees per sample (sequence length for transformers)
    macs: int = 0  # per sample, dense
    params: int = 0
    index: int = 0  # position in execution order

    def shape(self) -> LayerShape:
        return LayerShape(self.name, self.kind, self.in_channels, self.out_channels, self.kernel_size, self.groups)


def layer_kind(module: nn.Module, parent: nn.Module | None) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        if tuple(module.kernel_size) == (1, 1):
            return "conv1x1"
        if tuple(module.kernel_size) == (3, 3):
            return "conv3x3"
        return "conv"
    if isinstance(module, nn.Linear):
        return "attention" if getattr(parent, "compress_kind", None) == "attention" else "linear"
    return None


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    parents: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        for child_name, _ in module.named_children():
            parents[f"{name}.{child_name}" if name else child_name] = module
    return parents


def _conv_macs(m: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    kh, kw = m.kernel_size
    return out_hw[0] * out_hw[1] * m.out_channels * (m.in_channels // m.groups) * kh * kw


@torch.no_grad()
def prunable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """List the Conv2d / Linear layers in execution order, with MACs for one sample of `input_shape` (C, H, W)."""
    parents = _parents(model)
    records: dict[str, LayerInfo] = {}
    hooks = []

    def make_hook(name: str, module: nn.Module):
        def hook(mod: nn.Module, inputs, output) -> None:
            if name in records:  # a module called twice (weight sharing): keep the first call
                return
            kind = layer_kind(mod, parents.get(name))
            x = inputs[0]
            if isinstance(mod, nn.Conv2d):
                in_hw = (int(x.shape[-2]), int(x.shape[-1]))
                out_hw = (int(output.shape[-2]), int(output.shape[-1]))
                info = LayerInfo(name=name, kind=kind, in_channels=mod.in_channels, out_channels=mod.out_channels,
                                 kernel_size=tuple(mod.kernel_size), groups=mod.groups, stride=tuple(mod.stride),
                                 input_hw=in_hw, output_hw=out_hw, macs=_conv_macs(mod, out_hw),
                                 params=sum(p.numel() for p in mod.parameters(recurse=False)), index=len(records))
            else:
                tokens = int(x.numel() // x.shape[-1] // x.shape[0])
                info = LayerInfo(name=name, kind=kind, in_channels=mod.in_features, out_channels=mod.out_features,
                                 tokens=tokens, macs=tokens * mod.in_features * mod.out_features,
                                 params=sum(p.numel() for p in mod.parameters(recurse=False)), index=len(records))
            records[name] = info
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(make_hook(name, module)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sorted(records.values(), key=lambda r: r.index)


@dataclass(frozen=True)
class MacReport:
    """Dense multiply-accumulates per sample: per prunable layer plus attention matmuls."""

    total: int
    per_layer: dict[str, int]
    attention_matmuls: int
    params: int


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> MacReport:
    """MACs of one sample. Conv: Ho*Wo*Cout*(Cin/groups)*kh*kw. Linear: tokens*in*out.

    Attention score and weighting matmuls (2 * tokens^2 * dim per attention module) are counted
    separately because no pruning scheme removes them.
    """
    layers = prunable_layers(model, input_shape)
    attn_macs = 0
    hooks = []

    def attn_hook(mod, inputs, output):
        nonlocal attn_macs
        x = inputs[0]
        t, d = int(x.shape[-2]), int(mod.q.out_features) if hasattr(mod, "q") else int(x.shape[-1])
        attn_macs += 2 * t * t * d

    for module in model.modules():
        if getattr(module, "compress_kind", None) == "attention":
            hooks.append(module.register_forward_hook(attn_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per_layer = {l.name: l.macs for l in layers}
    return MacReport(total=sum(per_layer.values()) + attn_macs, per_layer=per_layer, attention_matmuls=attn_macs,
                     params=sum(p.numel() for p in model.parameters()))
