"""AMC: the layer-walking environment is a valid gymnasium env, keeps budgets, and DDPG learns."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agents import Budget, BudgetWalker, CostModel, Observation, make_agent
from agents.amc import LayerPruningEnv, run_episodes, truncated_normal
from agents.testing import TargetSparsity, tiny_space, unstructured_only

TARGETS = [0.8, 0.2, 0.6, 0.0, 0.4]


@pytest.fixture(scope="module")
def space():
    return tiny_space()


@pytest.fixture(scope="module")
def playground():
    return tiny_space(**unstructured_only())


def test_env_passes_check_env(space):
    walker = BudgetWalker(space, Budget(max_mac_ratio=0.5), CostModel(space))
    score = TargetSparsity(space.layer_names(), [0.5] * len(space.layers))
    env = LayerPruningEnv(walker, evaluate=score)
    check_env(env, skip_render_check=True)
    assert env.dims == ["sparsity", "option", "weight_bits", "act_bits"]  # the default space has bits


def test_action_dims_follow_the_space(playground):
    env = LayerPruningEnv(BudgetWalker(playground, Budget(), CostModel(playground)))
    assert env.dims == ["sparsity", "option"]  # no bit-width choice offered -> no bit-width action


def test_episode_clips_to_budget_and_reports_the_policy(space):
    budget = Budget(max_mac_ratio=0.3)
    walker = BudgetWalker(space, budget, CostModel(space))
    env = LayerPruningEnv(walker)
    obs, _ = env.reset()
    clipped, terminated = [], False
    while not terminated:
        assert env.observation_space.contains(obs)
        obs, reward, terminated, _, info = env.step(np.zeros(4, dtype=np.float32))  # "keep everything dense"
        clipped.append(info["clipped"])
    assert reward == 0.0 and any(clipped)
    assert budget.check(CostModel(space).costs(info["policy"]))


def test_truncated_noise_stays_in_bounds_and_decays(playground):
    rng = np.random.default_rng(0)
    x = truncated_normal(rng, np.full(10000, 0.95), 0.5)
    assert x.min() >= 0.0 and x.max() <= 1.0 and np.median(x) > 0.6  # mass piles up near the mean, not clipped
    narrow = truncated_normal(rng, np.full(10000, 0.3), 0.05)
    assert abs(narrow.mean() - 0.3) < 0.01 and abs(narrow.std() - 0.05) < 0.005
    agent = make_agent("amc", playground, warmup=2, noise=0.5, noise_decay=0.9)
    first = agent.sigma
    run_episodes(agent, TargetSparsity(playground.layer_names(), TARGETS), 6)
    assert agent.sigma < first


def test_ddpg_learns_a_known_optimum(playground):
    """Reward peaks at a per-layer sparsity pattern; the actor must find it well beyond random search."""
    score = TargetSparsity(playground.layer_names(), TARGETS)
    agent = make_agent("amc", playground, Budget(), CostModel(playground), seed=1, warmup=10)
    rewards = run_episodes(agent, score, 70)
    learned = score(agent.greedy())
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.12, rewards
    assert learned >= 0.85, (learned, rewards[-10:])
    greedy = agent.greedy()
    sparsities = [1 - greedy.decision(n).weight_density for n in playground.layer_names()]
    assert np.abs(np.array(sparsities) - TARGETS).max() <= 0.35, sparsities


def test_observations_out_of_order_are_matched_to_their_episodes(playground):
    agent = make_agent("amc", playground, warmup=2)
    policies = agent.propose(3)
    for p in reversed(policies):
        agent.observe(p, Observation({"accuracy": 0.5}))
    assert not agent.pending and agent.buffer.n == 3 * len(playground.layers)
