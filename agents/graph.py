"""The model's computation graph for AGMC: nodes = ops traced by torch.fx, edges = data flow.

A hand-made layer embedding (AMC) cannot see that two convolutions feed the same residual add and
therefore must keep the same channels; a graph can. `build_graph` traces the model with torch.fx,
propagates shapes, and gives every node static features (op type, channels, kernel, stride, MAC
share, prunable or not). `ComputationGraph.features` appends the episode's dynamic features (the
sparsity decided for each prunable layer so far, which layer is being decided) so a GNN reads one
matrix per step.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

OP_TYPES = ("input", "conv", "depthwise", "linear", "norm", "act", "add", "mul", "pool", "reshape", "output",
            "other")
STATIC_FEATURES = len(OP_TYPES) + 7  # + position, log in ch, log out ch, kernel, stride, MAC share, prunable
DYNAMIC_FEATURES = 3  # decided sparsity, decided flag, current flag


def _op_type(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Conv2d):
            return "depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)):
            return "norm"
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh)):
            return "act"
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
            return "pool"
        if isinstance(m, (nn.Flatten, nn.Identity)):
            return "reshape"
        return "other"
    target = node.target
    name = getattr(target, "__name__", str(target))
    if target in (operator.add, torch.add) or name in ("add", "iadd", "__add__"):
        return "add"
    if target in (operator.mul, torch.mul) or name in ("mul", "__mul__"):
        return "mul"
    if name in ("relu", "gelu", "sigmoid", "silu"):
        return "act"
    if name in ("flatten", "view", "reshape", "permute", "transpose", "contiguous", "size", "getattr"):
        return "reshape"
    if "pool" in name or name in ("mean",):
        return "pool"
    return "other"


@dataclass
class ComputationGraph:
    """Nodes in topological order; `layer_nodes[i]` is the node of the space's i-th prunable layer."""

    names: list[str]
    op_types: list[str]
    static: np.ndarray  # (N, STATIC_FEATURES), in [0, 1]
    edge_index: np.ndarray  # (2, E) directed data-flow edges src -> dst
    layer_nodes: list[int]

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def predecessors(self, node: int) -> list[int]:
        return [int(s) for s, d in self.edge_index.T if d == node]

    def features(self, sparsities: Sequence[float], current: int) -> np.ndarray:
        """(N, STATIC+DYNAMIC) float32 node features for a step deciding layer `current` (-1: done)."""
        dyn = np.zeros((self.num_nodes, DYNAMIC_FEATURES), dtype=np.float32)
        for i, node in enumerate(self.layer_nodes):
            if current < 0 or i < current:
                dyn[node, 0] = float(sparsities[i])
                dyn[node, 1] = 1.0
            if i == current:
                dyn[node, 2] = 1.0
        return np.concatenate([self.static, dyn], axis=1)

    def undirected_edges(self) -> torch.Tensor:
        e = torch.as_tensor(self.edge_index, dtype=torch.long)
        return torch.cat([e, e.flip(0)], dim=1)


def build_graph(model: nn.Module, input_shape: tuple[int, ...], layer_names: Sequence[str]) -> ComputationGraph:
    """Trace `model` with torch.fx on one sample of `input_shape` (C, H, W); prunable layers by name."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported ops
        raise ValueError(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); AGMC "
                         "needs a traceable model — use the 'amc' agent, whose embedding needs no graph") from exc
    was_training = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    model.train(was_training)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    edges = [(index[src], index[n]) for n in nodes for src in n.all_input_nodes]
    macs = np.zeros(len(nodes))
    rows = []
    for i, n in enumerate(nodes):
        op = _op_type(n, modules)
        meta = n.meta.get("tensor_meta")
        out_ch = int(meta.shape[1]) if meta is not None and hasattr(meta, "shape") and len(meta.shape) > 1 else 1
        in_ch, kernel, stride = out_ch, 1, 1
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, nn.Conv2d):
                in_ch, kernel, stride = m.in_channels, m.kernel_size[0], m.stride[0]
                hw = meta.shape[-2] * meta.shape[-1] if meta is not None else 1
                macs[i] = hw * m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                in_ch = m.in_features
                macs[i] = m.in_features * m.out_features
        one_hot = [1.0 if op == t else 0.0 for t in OP_TYPES]
        rows.append(one_hot + [i / max(1, len(nodes) - 1), math.log2(in_ch + 1) / 12, math.log2(out_ch + 1) / 12, kernel / 7, stride / 4,
                               0.0, 0.0])
    static = np.asarray(rows, dtype=np.float32)
    static[:, -2] = macs / (macs.max() or 1.0)
    name_to_node = {n.target: i for i, n in enumerate(nodes) if n.op == "call_module"}
    missing = [name for name in layer_names if name not in name_to_node]
    if missing:
        raise ValueError(f"prunable layer(s) {missing[:3]} are not call_module nodes of the traced graph "
                         "(called functionally?); AGMC cannot place them — use the 'amc' agent")
    layer_nodes = [name_to_node[name] for name in layer_names]
    static[layer_nodes, -1] = 1.0
    static = np.clip(static, 0.0, 1.0)
    edge_index = np.asarray(edges, dtype=np.int64).T if edges else np.zeros((2, 0), dtype=np.int64)
    return ComputationGraph([n.name for n in nodes], [_op_type(n, modules) for n in nodes], static, edge_index,
                            layer_nodes)
