"""AGMC: the torch.fx graph shows residual coupling, and the GNN-based agent learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from agents import Budget, BudgetWalker, CostModel, make_agent
from agents.agmc import GraphEncoder, graph_for_space
from agents.amc import LayerPruningEnv, run_episodes
from agents.graph import DYNAMIC_FEATURES, STATIC_FEATURES, build_graph
from agents.testing import TINY_INPUT, TargetSparsity, tiny_model, tiny_space, unstructured_only
from automl.models import build_model, prunable_layers


@pytest.fixture(scope="module")
def playground():
    return tiny_space(**unstructured_only())


def test_tiny_graph_has_the_residual_edge():
    model = tiny_model()
    names = [i.name for i in prunable_layers(model, TINY_INPUT)]
    g = build_graph(model, TINY_INPUT, names)
    adds = [i for i, t in enumerate(g.op_types) if t == "add"]
    assert len(adds) == 1
    preds = sorted(g.names[p] for p in g.predecessors(adds[0]))
    assert preds == ["block_bn2", "relu"]  # the block's output and its skip input (the stem's ReLU)
    assert [g.names[n] for n in g.layer_nodes] == ["conv1", "block_conv1", "block_conv2", "conv3", "fc"]
    x = g.features(np.zeros(len(names)), 2)
    assert x.shape == (g.num_nodes, STATIC_FEATURES + DYNAMIC_FEATURES)
    assert x[g.layer_nodes[2], -1] == 1.0 and x[:, -1].sum() == 1.0  # exactly one "current" node


def test_resnet20_graph_couples_every_block():
    model = build_model("resnet20", 1, 10, 28)
    names = [i.name for i in prunable_layers(model, (1, 28, 28))]
    g = build_graph(model, (1, 28, 28), names)
    adds = [i for i, t in enumerate(g.op_types) if t == "add"]
    assert len(adds) == 9 and all(len(g.predecessors(a)) == 2 for a in adds)
    skips = [p for a in adds for p in g.predecessors(a) if "shortcut" in g.names[p]]
    assert len(skips) == 9  # every add has its skip branch
    assert sorted(g.op_types[p] for p in skips).count("norm") == 2  # two downsample through 1x1 conv + BN
    assert len(g.layer_nodes) == len(names) == 22


def test_graph_env_passes_check_env(playground):
    walker = BudgetWalker(playground, Budget(max_mac_ratio=0.6), CostModel(playground))
    env = LayerPruningEnv(walker, embedding="graph", graph=graph_for_space(playground))
    check_env(env, skip_render_check=True)


def test_gnn_encoder_learns_structure():
    """Regress each prunable layer's distance (in hops) to the nearest residual add: a structural target
    that the node's own features cannot give, only message passing can."""
    model = tiny_model()
    names = [i.name for i in prunable_layers(model, TINY_INPUT)]
    g = build_graph(model, TINY_INPUT, names)
    edges = g.undirected_edges()
    add = g.op_types.index("add")
    hops = {add: 0}
    frontier = [add]
    while frontier:
        nxt = []
        for n in frontier:
            for m in edges[1][edges[0] == n].tolist():
                if m not in hops:
                    hops[m] = hops[n] + 1
                    nxt.append(m)
        frontier = nxt
    target = torch.tensor([min(hops[n], 4) / 4 for n in g.layer_nodes])
    x = torch.as_tensor(g.features(np.zeros(len(names)), -1))
    x[:, STATIC_FEATURES - 7] = 0.0  # hide the position feature: structure must come from the edges
    torch.manual_seed(0)
    enc = GraphEncoder(x.shape[1], edges, hidden=16, layers=3)
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(300):
        h = enc.node_embeddings(x[None])[0, g.layer_nodes]
        loss = torch.nn.functional.mse_loss(head(h).squeeze(-1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0] and losses[-1] < 1e-3, (losses[0], losses[-1])


def test_agmc_improves_on_a_known_optimum(playground):
    score = TargetSparsity(playground.layer_names(), [0.8, 0.2, 0.6, 0.0, 0.4])
    agent = make_agent("agmc", playground, Budget(), CostModel(playground), seed=1, warmup=10)
    rewards = run_episodes(agent, score, 60)
    assert score(agent.greedy()) > np.mean(rewards[:10]) + 0.08, rewards
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05, rewards
