"""`agmc`: AMC's DDPG loop with a GNN state (Yu et al., "AGMC: Auto Graph encoder-decoder Model Compression").

The state of each step is the model's whole computation graph (agents.graph: torch.fx ops as nodes,
data flow as edges) with per-node features, including the sparsities decided so far and a flag on
the layer being decided. Actor and critic each own a torch-geometric GraphSAGE encoder; the embedding of
the current layer's node (plus its raw features) feeds the DDPG heads. Encoders train end to end
through the critic / actor losses, so the agent can learn that layers joined by a residual add
behave alike — something AMC's per-layer vector cannot express.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from agents.amc import AMCAgent, LayerPruningEnv
from agents.base import Budget, CostModel, Objective
from agents.graph import ComputationGraph, build_graph


class GraphEncoder(nn.Module):
    """GraphSAGE layers over a batch of copies of one graph: (B, N, F) -> (B, H + F) state embedding
    (the current layer's node embedding — which has seen its 3-hop neighbourhood: the residual add it
    feeds, the layers it is coupled to, their decided sparsities — and its raw features).

    SAGE keeps a separate weight for a node's own features (its root), so the flag marking the layer
    being decided is not averaged away by its neighbours, as it would be in a plain GCN.
    """

    def __init__(self, in_features: int, edge_index: torch.Tensor, hidden: int = 64, layers: int = 3):
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.convs = nn.ModuleList(SAGEConv(in_features if i == 0 else hidden, hidden) for i in range(layers))
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.norm = nn.LayerNorm(hidden)  # keeps the heads' inputs at unit scale
        self.out_dim = hidden + in_features

    def node_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        b, n, f = x.shape
        offsets = (torch.arange(b) * n).repeat_interleave(self.edge_index.shape[1])
        edges = self.edge_index.repeat(1, b) + offsets
        h = x.reshape(b * n, f)
        for i, conv in enumerate(self.convs):
            h = conv(h, edges)
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return h.reshape(b, n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.node_embeddings(x)
        current = x[..., -1:]  # the "current layer" flag (last dynamic feature)
        cur = (h * current).sum(1) / current.sum(1).clamp_min(1.0)
        # the current node's own features skip the GNN: early in training the random encoder blurs them,
        # and a critic that cannot tell steps apart drives every layer to the same saturated action
        x_cur = (x * current).sum(1)
        return torch.cat([self.norm(cur), x_cur], dim=-1)


class GraphActor(nn.Module):
    """The actor reads the critic's encoder, detached (as in SAC-AE / DrQ): the encoder learns from the
    critic's regression, which has a dense signal, while an actor training its own encoder through
    dQ/da alone learns state-blind actions and saturates."""

    def __init__(self, encoder: GraphEncoder, act_dim: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(encoder.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, act_dim))

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs).detach())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(obs))


class GraphCritic(nn.Module):
    def __init__(self, in_features: int, edge_index: torch.Tensor, act_dim: int, hidden: int, gnn_hidden: int):
        super().__init__()
        self.encoder = GraphEncoder(in_features, edge_index, gnn_hidden)
        self.head = nn.Sequential(nn.Linear(self.encoder.out_dim + act_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(obs), act], dim=-1)).squeeze(-1)


def graph_for_space(space: Any, model: nn.Module | None = None) -> ComputationGraph:
    """The computation graph of the space's model: `model` if given, else rebuilt from the zoo by name
    (only the architecture matters for the graph, not the weights)."""
    names = [c.layer.name for c in space.layers]
    input_shape = tuple(getattr(space, "input_shape", ()) or ())
    if model is None:
        from automl.models import build_model

        model_name = getattr(space, "model", None) or getattr(space, "model_name", None)
        if not model_name or not input_shape:
            raise ValueError("AGMC needs the model's graph: pass model=<nn.Module> (the space names no zoo model "
                             "and input shape)")
        last = space.layers[-1].layer
        num_classes = last.out_channels if last.kind == "linear" else 10
        model = build_model(model_name, input_shape[0], num_classes, input_shape[-1])
    if not input_shape:
        raise ValueError("AGMC needs the input shape (C, H, W) to trace the model; the space has none")
    return build_graph(model, input_shape, names)


class AGMCAgent(AMCAgent):
    """DDPG whose actor and critic read a GNN embedding of the computation graph."""

    name = "agmc"
    embedding = "graph"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, *, objective: str | Objective = "accuracy", model: nn.Module | None = None,
                 warmup: int = 20, noise: float = 0.5, noise_decay: float = 0.95, hidden: int = 300,
                 gnn_hidden: int = 16, lr_actor: float = 1e-3, lr_critic: float = 3e-3, batch_size: int = 64,
                 buffer_size: int = 5000, updates_per_episode: int | None = None):
        self.graph = graph_for_space(space, model)
        self.gnn_hidden = gnn_hidden
        super().__init__(space, budget, cost_model, seed, objective=objective, warmup=warmup, noise=noise,
                         noise_decay=noise_decay, hidden=hidden, lr_actor=lr_actor, lr_critic=lr_critic,
                         batch_size=batch_size, buffer_size=buffer_size, updates_per_episode=updates_per_episode)

    def _make_env(self) -> LayerPruningEnv:
        return LayerPruningEnv(self.walker, embedding="graph", graph=self.graph)

    def _make_networks(self, obs_shape: tuple[int, ...], act_dim: int, hidden: int) -> tuple[nn.Module, nn.Module]:
        critic = GraphCritic(obs_shape[-1], self.graph.undirected_edges(), act_dim, hidden, self.gnn_hidden)
        return GraphActor(critic.encoder, act_dim, hidden), critic

    def _actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.head.parameters())
