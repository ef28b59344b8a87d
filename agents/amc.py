"""`amc`: AMC's DDPG agent over a gymnasium environment that walks the layers (He et al., ECCV 2018).

The environment (`LayerPruningEnv`) visits prunable layers in execution order. Its state is AMC's
layer embedding (index, kind, channels, kernel, stride, MACs, MACs already reduced, MACs still to
come, previous action); its action is a point of [0,1]^k: the sparsity, plus — only when the space
offers a choice — a discretised scheme option and weight / activation bit-width (HAQ style). The
budget walker clips each action so the remaining layers can still meet the budget. The reward
(accuracy or AMC's -error*log(cost)) arrives once per episode, at its end.

The learner is DDPG with a replay buffer, warm-up episodes of uniform actions and truncated-normal
exploration noise whose width decays per episode. Because the only reward is the episode's final one
and AMC discounts with gamma = 1, every step's return *is* that reward; the critic therefore regresses
Monte-Carlo returns (standardised over the buffer) instead of bootstrapping, which removes the target
networks and is markedly more stable on a few hundred episodes.

Ask/tell: `propose(n)` rolls out n episodes with the current actor and keeps their transitions keyed
by policy; `observe` attaches the reward and trains. Outstanding proposals may come back in any
order; failed trials drop their transitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.base import Agent, Budget, BudgetWalker, CostModel, Gene, Objective, Observation, policy_key
from automl.models import LAYER_KINDS
from automl.policy import CompressionPolicy

# ------------------------------------------------------------------------------ environment


def action_dims(walker: BudgetWalker) -> list[str]:
    """Which action components the space needs: sparsity always; option / bits only when there is a choice."""
    dims = ["sparsity"]
    if any(len(a.options) > 1 for a in walker.actions):
        dims.append("option")
    if any(len(a.weight_bits) > 1 for a in walker.actions):
        dims.append("weight_bits")
    if any(len(a.act_bits) > 1 for a in walker.actions):
        dims.append("act_bits")
    return dims


def amc_static_features(walker: BudgetWalker) -> np.ndarray:
    """Per layer: index, kind one-hot, in/out channels, stride, kernel, log MACs — each scaled to [0, 1]."""
    layers = [c.layer for c in walker.space.layers]
    n = len(layers)
    rows = []
    for i, layer in enumerate(layers):
        kind = [1.0 if layer.kind == k else 0.0 for k in LAYER_KINDS]
        stride = getattr(layer, "stride", (1, 1))[0]
        rows.append([i / max(1, n - 1), *kind, layer.in_channels, layer.out_channels, stride,
                     layer.kernel_size[0], math.log1p(getattr(layer, "macs", 0))])
    x = np.asarray(rows, dtype=np.float64)
    scale = x[:, 7:].max(axis=0)
    x[:, 7:] = x[:, 7:] / np.where(scale > 0, scale, 1.0)
    return x.astype(np.float32)


class LayerPruningEnv(gym.Env):
    """One episode = one policy: step i decides layer i; the walker keeps every episode in budget.

    `evaluate(policy) -> reward` gives the terminal reward; without it the reward is 0 and the finished
    policy is returned in `info["policy"]` so an ask/tell agent can score it later.
    `embedding`: "amc" (vector state) or "graph" (node-feature matrix of `graph`, for AGMC).
    """

    metadata = {"render_modes": []}

    def __init__(self, walker: BudgetWalker, evaluate: Callable[[CompressionPolicy], float] | None = None,
                 embedding: str = "amc", graph: Any = None):
        super().__init__()
        if embedding not in ("amc", "graph"):
            raise ValueError(f"embedding must be 'amc' or 'graph', got {embedding!r}")
        if embedding == "graph" and graph is None:
            raise ValueError("embedding='graph' needs the model's ComputationGraph (agents.graph.build_graph)")
        self.walker = walker
        self.evaluate = evaluate
        self.embedding = embedding
        self.graph = graph
        self.n_layers = len(walker.actions)
        self.dims = action_dims(walker)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(len(self.dims),), dtype=np.float32)
        self.static = amc_static_features(walker)
        macs = np.array([float(getattr(c.layer, "macs", 0)) for c in walker.space.layers])
        total = macs.sum() or 1.0
        self.remaining_after = np.array([macs[i + 1:].sum() / total for i in range(self.n_layers)])
        if embedding == "amc":
            shape = (self.static.shape[1] + 3,)
        else:
            shape = graph.features(np.zeros(self.n_layers), -1).shape
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32)
        self.genes: list[Gene] = []
        self.sparsities = np.zeros(self.n_layers)

    def _obs(self) -> np.ndarray:
        i = len(self.genes)
        if self.embedding == "graph":
            return self.graph.features(self.sparsities, i if i < self.n_layers else -1)
        row = self.static[min(i, self.n_layers - 1)]
        dense_rest = self.walker.dense[i:]
        reduced = 1.0 - self.walker.costs(self.genes + dense_rest)["mac_ratio"] if self.genes else 0.0
        remaining = self.remaining_after[i] if i < self.n_layers else 0.0
        prev = self.sparsities[i - 1] if i > 0 else 0.0
        obs = np.concatenate([row, [reduced, remaining, prev]]).astype(np.float32)
        return np.clip(obs, 0.0, 1.0)

    def unit(self, action: Sequence[float]) -> list[float]:
        """Action vector -> (sparsity, option, weight_bits, act_bits) units, absent dims at 0."""
        values = dict(zip(self.dims, (float(v) for v in action), strict=True))
        return [values.get(k, 0.0) for k in ("sparsity", "option", "weight_bits", "act_bits")]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.genes = []
        self.sparsities = np.zeros(self.n_layers)
        return self._obs(), {}

    def step(self, action):
        i = len(self.genes)
        if i >= self.n_layers:
            raise RuntimeError("episode is over; call reset()")
        act = self.walker.actions[i]
        wanted = act.gene_from_unit(self.unit(np.asarray(action, dtype=np.float64)))
        gene = self.walker.clip(i, self.genes, wanted)
        self.genes.append(gene)
        self.sparsities[i] = gene.sparsity if act.has_sparsity(act.options[gene.option]) else 0.0
        terminated = len(self.genes) == self.n_layers
        info: dict[str, Any] = {"gene": gene, "clipped": gene != wanted}
        reward = 0.0
        if terminated:
            policy = self.walker.policy(self.genes)
            info["policy"] = policy
            if self.evaluate is not None:
                reward = float(self.evaluate(policy))
        return self._obs(), reward, terminated, False, info

    def taken_action(self, gene: Gene, index: int) -> np.ndarray:
        """The action vector that a clipped gene corresponds to (stored in the buffer, as AMC does)."""
        act = self.walker.actions[index]
        lo, hi = act.sparsities[0], act.sparsities[-1]
        s = (gene.sparsity - lo) / (hi - lo) if hi > lo else 0.0
        units = {"sparsity": s, "option": (gene.option + 0.5) / len(act.options),
                 "weight_bits": (gene.wbits + 0.5) / len(act.weight_bits),
                 "act_bits": (gene.abits + 0.5) / len(act.act_bits)}
        return np.array([units[d] for d in self.dims], dtype=np.float32)


# ------------------------------------------------------------------------------ DDPG

LOGIT_BOUND = 3.0  # sigmoid(3) = 0.95: actions reach the grid's ends, gradients stay alive


class ReplayBuffer:
    """Fixed-size ring buffer of (state, action, return)."""

    def __init__(self, obs_shape: tuple[int, ...], act_dim: int, size: int):
        self.obs = np.zeros((size, *obs_shape), dtype=np.float32)
        self.act = np.zeros((size, act_dim), dtype=np.float32)
        self.ret = np.zeros(size, dtype=np.float32)
        self.size, self.n, self.pos = size, 0, 0

    def add(self, obs: np.ndarray, act: np.ndarray, ret: float) -> None:
        self.obs[self.pos], self.act[self.pos], self.ret[self.pos] = obs, act, ret
        self.pos = (self.pos + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.n, size=min(batch, self.n))
        returns = self.ret[: self.n]
        mean, std = returns.mean(), returns.std() + 1e-6
        return self.obs[idx], self.act[idx], (self.ret[idx] - mean) / std


class MLPActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 300):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim))

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(obs))


class MLPCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 300):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


def truncated_normal(rng: np.random.Generator, mean: np.ndarray, sigma: float, lo: float = 0.0,
                     hi: float = 1.0) -> np.ndarray:
    """Samples of N(mean, sigma) truncated to [lo, hi] (AMC's exploration noise), by inverse CDF."""
    from scipy.special import ndtr, ndtri  # normal CDF and its inverse (scipy.stats imports slowly)

    mean = np.asarray(mean, dtype=np.float64)
    if sigma <= 0:
        return np.clip(mean, lo, hi)
    a, b = ndtr((lo - mean) / sigma), ndtr((hi - mean) / sigma)
    u = a + rng.random(mean.shape) * np.maximum(b - a, 1e-12)
    return np.clip(mean + sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12)), lo, hi)


class AMCAgent(Agent):
    """DDPG over `LayerPruningEnv` with AMC's layer embedding."""

    name = "amc"
    embedding = "amc"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, *, objective: str | Objective = "accuracy", warmup: int = 20,
                 noise: float = 0.5, noise_decay: float = 0.95, hidden: int = 300, lr_actor: float = 1e-3,
                 lr_critic: float = 3e-3, batch_size: int = 64, buffer_size: int = 20000,
                 updates_per_episode: int | None = None):
        super().__init__(space, budget, cost_model, seed, objective)
        self.warmup, self.noise, self.noise_decay = warmup, noise, noise_decay
        self.batch_size = batch_size
        self.env = self._make_env()
        self.updates_per_episode = updates_per_episode or self.env.n_layers
        obs_shape = self.env.observation_space.shape
        act_dim = self.env.action_space.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.actor, self.critic = self._make_networks(obs_shape, act_dim, hidden)
        self.actor_opt = torch.optim.Adam(self._actor_parameters(), lr=lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.buffer = ReplayBuffer(obs_shape, act_dim, buffer_size)
        self.episodes = 0  # proposals rolled out (drives warm-up and noise decay)
        self.pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.rewards: list[float] = []

    # -- hooks AGMC overrides
    def _make_env(self) -> LayerPruningEnv:
        return LayerPruningEnv(self.walker, embedding="amc")

    def _make_networks(self, obs_shape: tuple[int, ...], act_dim: int, hidden: int) -> tuple[nn.Module, nn.Module]:
        return MLPActor(obs_shape[0], act_dim, hidden), MLPCritic(obs_shape[0], act_dim, hidden)

    def _actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    # -- acting
    @property
    def sigma(self) -> float:
        return self.noise * self.noise_decay ** max(0, self.episodes - self.warmup)

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        mean = self.actor(torch.as_tensor(obs[None])).numpy()[0]
        return truncated_normal(self.rng, mean, self.sigma) if explore else mean

    def rollout(self, explore: bool = True) -> tuple[CompressionPolicy, list[tuple[np.ndarray, np.ndarray]]]:
        """One episode: returns the policy and its (state, taken action) transitions."""
        warm = explore and self.episodes < self.warmup
        obs, _ = self.env.reset()
        steps: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(self.env.n_layers):
            if warm:
                action = self.rng.random(self.env.action_space.shape[0])
            else:
                action = self.act(obs, explore)
            next_obs, _, terminated, _, info = self.env.step(action)
            steps.append((obs, self.env.taken_action(info["gene"], i)))
            obs = next_obs
            if terminated:
                return self.finish(self.env.genes), steps
        raise RuntimeError("environment did not terminate")  # pragma: no cover

    def propose(self, n: int = 1) -> list[CompressionPolicy]:
        out = []
        for _ in range(n):
            policy, steps = self.rollout(explore=True)
            self.episodes += 1
            self.pending.setdefault(policy_key(policy), []).append(steps)
            out.append(policy)
        return out

    def greedy(self) -> CompressionPolicy:
        """The actor's policy without noise (what the agent has learned)."""
        return self.rollout(explore=False)[0]

    # -- learning
    def observe(self, policy: CompressionPolicy, result: Observation) -> None:
        super().observe(policy, result)
        queue = self.pending.get(policy_key(policy))
        if not queue:
            return  # not ours (e.g. replayed after a resume): nothing to learn from
        steps = queue.pop(0)
        if not queue:
            del self.pending[policy_key(policy)]
        if not result.ok:
            return
        reward = self.reward(result)
        self.rewards.append(reward)
        for obs, action in steps:
            self.buffer.add(obs, action, reward)
        if self.buffer.n >= min(self.batch_size, 2 * self.env.n_layers):
            # as AMC: the critic learns from the warm-up episodes, the actor only follows it afterwards
            # (an actor chasing an untrained critic saturates its sigmoid outputs and never recovers)
            train_actor = len(self.rewards) > self.warmup
            for _ in range(self.updates_per_episode):
                self.update(train_actor)

    def update(self, train_actor: bool = True) -> tuple[float, float]:
        obs, act, ret = self.buffer.sample(self.rng, self.batch_size)
        obs_t, act_t, ret_t = torch.as_tensor(obs), torch.as_tensor(act), torch.as_tensor(ret, dtype=torch.float32)
        critic_loss = nn.functional.mse_loss(self.critic(obs_t, act_t), ret_t)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        if not train_actor:
            return critic_loss.item(), float("nan")
        logits = self.actor.logits(obs_t)
        # keep the sigmoid out of saturation: a saturated actor gets no gradient back from the critic
        # and stays pinned at an action bound (the classic DDPG failure on bounded actions)
        saturation = torch.relu(logits.abs() - LOGIT_BOUND).pow(2).mean()
        actor_loss = -self.critic(obs_t, torch.sigmoid(logits)).mean() + saturation
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        return critic_loss.item(), actor_loss.item()


def run_episodes(agent: Agent, evaluate: Callable[[CompressionPolicy], float], episodes: int) -> list[float]:
    """A tiny local ask/tell loop (tests, benchmarks): returns the reward of each episode in order."""
    rewards = []
    for _ in range(episodes):
        (policy,) = agent.propose(1)
        acc = float(evaluate(policy))
        agent.observe(policy, Observation({"accuracy": acc}))
        rewards.append(acc)
    return rewards
