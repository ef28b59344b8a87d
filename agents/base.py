"""The agent contract: propose policies, observe results, never leave the budget.

An agent is an ask/tell controller (as Optuna's samplers are): whoever runs the trials (a local loop,
Ray Tune in `automl.search`) asks for candidates with `propose(n)` and reports each outcome with
`observe(policy, Observation)`. Agents therefore never import Ray or MLflow, hold their own seeded
random state (no global seeding), survive several outstanding proposals and failed trials, and
pickle (Tune checkpoints its searcher to resume).

Budgets are enforced the AMC way: while layers are decided in order, each layer's action is
clipped so that the remaining layers, compressed as hard as the space allows, can still meet the
budget (`BudgetWalker`). Every agent builds its policies through the walker, so none ever proposes
a policy over budget.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automl.policy import CompressionPolicy

LatencyFn = Callable[[CompressionPolicy], float]

# ------------------------------------------------------------------------------ observations


@dataclass(frozen=True)
class Observation:
    """The outcome of evaluating one proposed policy.

    `metrics` holds whatever the evaluator measured (accuracy in 0..1, latency_ms, mac_ratio,
    size_bytes, ...). A failed trial carries `status="failed"` and the error text, so agents can
    skip it instead of learning from a made-up number.
    """

    metrics: Mapping[str, float] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed"):
            raise ValueError(f"Observation.status must be 'ok' or 'failed', got {self.status!r}")

    @property
    def ok(self) -> bool:
        """Usable for learning: status ok *and* an accuracy to learn from (else treated as failed)."""
        return self.status == "ok" and "accuracy" in self.metrics and math.isfinite(float(self.metrics["accuracy"]))

    @classmethod
    def failed(cls, error: str, **metrics: float) -> Observation:
        return cls(metrics=dict(metrics), status="failed", error=error)


# ------------------------------------------------------------------------------ budgets


class BudgetError(ValueError):
    """The budget cannot be met by any policy of the space; the message names the best reachable value."""


_BUDGET_KEYS = {"max_latency_ms": "latency_ms", "max_mac_ratio": "mac_ratio", "max_size_bytes": "size_bytes"}


@dataclass(frozen=True)
class Budget:
    """Resource limits a proposed policy must meet; any combination, None = unconstrained."""

    max_latency_ms: float | None = None
    max_mac_ratio: float | None = None
    max_size_bytes: float | None = None

    def __post_init__(self) -> None:
        for name in _BUDGET_KEYS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0 or math.isnan(value)):
                raise ValueError(f"Budget.{name} must be a positive number or None, got {value!r}")

    def limits(self) -> dict[str, float]:
        """Cost key -> limit for the limits that are set."""
        return {cost: float(getattr(self, name)) for name, cost in _BUDGET_KEYS.items()
                if getattr(self, name) is not None}

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ms is not None

    def score(self, costs: Mapping[str, float]) -> float:
        """Worst cost/limit ratio: <= 1 means within budget. 0 when unconstrained."""
        worst = 0.0
        for key, limit in self.limits().items():
            if key not in costs:
                raise KeyError(f"budget limits '{key}' but the cost model gave only {sorted(costs)}; "
                               "pass a latency predictor to CostModel for a latency budget")
            worst = max(worst, float(costs[key]) / limit)
        return worst

    def check(self, costs: Mapping[str, float], tol: float = 1e-9) -> bool:
        return self.score(costs) <= 1.0 + tol

    def violations(self, costs: Mapping[str, float]) -> list[str]:
        return [f"{key} {costs[key]:.4g} > {limit:.4g}" for key, limit in self.limits().items()
                if float(costs[key]) > limit * (1 + 1e-9)]

    def describe(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in _BUDGET_KEYS if getattr(self, name) is not None]
        return "Budget(" + ", ".join(parts) + ")" if parts else "Budget(unconstrained)"

    def to_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in _BUDGET_KEYS}


# ------------------------------------------------------------------------------ costs


class CostModel:
    """Fast costs of a policy: MACs / size from `search_spaces.cost_report`, latency from a predictor.

    `latency` is any picklable callable policy -> ms (e.g. ``functools.partial(predict_ms, profile, space)``);
    without it, costs carry no latency_ms and a latency budget is refused.
    """

    def __init__(self, space: Any, latency: LatencyFn | None = None, cache_size: int = 4096):
        self.space = space
        self.latency = latency
        self.cache_size = cache_size
        self._cache: dict[str, dict[str, float]] = {}

    def costs(self, policy: CompressionPolicy) -> dict[str, float]:
        from search_spaces import cost_report

        key = policy.to_json(indent=None)
        hit = self._cache.get(key)
        if hit is not None:
            return dict(hit)
        report = cost_report(self.space, policy)
        out = {"mac_ratio": float(report.mac_ratio), "macs": float(report.effective_macs),
               "dense_macs": float(report.dense_macs), "params": float(report.params),
               "size_bytes": float(report.size_bytes)}
        if self.latency is not None:
            out["latency_ms"] = float(self.latency(policy))
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = out
        return dict(out)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


class PredictedLatency:
    """A picklable latency callable for `CostModel`: ``predict_policy(profile, space, policy).ms``.

    Agents are pickled to resume a search; a closure or lambda as predictor would make that fail.
    """

    def __init__(self, profile: Any, space: Any):
        self.profile, self.space = profile, space

    def __call__(self, policy: CompressionPolicy) -> float:
        from latency_models import predict_policy

        return float(predict_policy(self.profile, self.space, policy).ms)


# ------------------------------------------------------------------------------ objectives


class Objective(abc.ABC):
    """Turns an observation (accuracy + costs) into one reward to maximise."""

    name: str = "objective"

    @abc.abstractmethod
    def reward(self, metrics: Mapping[str, float]) -> float: ...


class AccuracyObjective(Objective):
    """Plain accuracy under a hard budget (AMC's resource-constrained setting): the budget does the rest."""

    name = "accuracy"

    def reward(self, metrics: Mapping[str, float]) -> float:
        return float(metrics["accuracy"])


class ErrorLogCostObjective(Objective):
    """AMC's ``-error * log(cost)``: rewards both accuracy and cost reduction (cost = MACs or latency)."""

    name = "error_log_cost"

    def __init__(self, cost_key: str = "macs"):
        self.cost_key = cost_key

    def reward(self, metrics: Mapping[str, float]) -> float:
        error = 1.0 - float(metrics["accuracy"])
        cost = max(float(metrics.get(self.cost_key, 1.0)), 1e-9)
        return -error * math.log(cost + 1.0)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "accuracy": AccuracyObjective,
    "error_log_macs": lambda: ErrorLogCostObjective("macs"),
    "error_log_latency": lambda: ErrorLogCostObjective("latency_ms"),
}


def make_objective(objective: str | Objective) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]()


# ------------------------------------------------------------------------------ per-layer genes


@dataclass(frozen=True)
class Gene:
    """One layer's choice in index form: scheme option, sparsity (grid value), bit-width indices."""

    option: int = 0
    sparsity: float = 0.0
    wbits: int = 0
    abits: int = 0


def _tuple(value: Any, default: Sequence[Any]) -> tuple[Any, ...]:
    if value is None:
        return tuple(default)
    return tuple(value)


@dataclass(frozen=True)
class LayerActions:
    """The discrete options of one layer, flattened from `LayerChoices` so agents index them uniformly.

    An *option* is a scheme with its structural parameters (channel + align, nm + n:m, block1xn + n,
    block_punched + block); sparsity and bit-widths are separate genes.
    """

    name: str
    options: tuple[dict[str, Any], ...]
    sparsities: tuple[float, ...]
    weight_bits: tuple[int | None, ...]
    act_bits: tuple[int | None, ...]

    @classmethod
    def from_choices(cls, choices: Any) -> LayerActions:
        name = choices.layer.name
        options: list[dict[str, Any]] = []
        for scheme in _tuple(getattr(choices, "schemes", None), ("dense",)):
            if scheme == "channel":
                options += [{"scheme": "channel", "align": int(a)} for a in _tuple(choices.aligns, (1,))]
            elif scheme == "nm":
                options += [{"scheme": "nm", "n": int(n), "m": int(m)} for n, m in _tuple(choices.nm, ())]
            elif scheme == "block1xn":
                options += [{"scheme": "block1xn", "n": int(n)} for n in _tuple(choices.block_n, ())]
            elif scheme == "block_punched":
                options += [{"scheme": "block_punched", "block": tuple(int(v) for v in b)}
                            for b in _tuple(choices.blocks, ())]
            else:
                options.append({"scheme": scheme})
        if not options:
            options = [{"scheme": "dense"}]
        sparsities = tuple(sorted({float(s) for s in _tuple(getattr(choices, "sparsities", None), (0.0,))}))
        wbits = _tuple(getattr(choices, "weight_bits", None), (None,)) or (None,)
        abits = _tuple(getattr(choices, "act_bits", None), (None,)) or (None,)
        return cls(name, tuple(options), sparsities or (0.0,), tuple(wbits), tuple(abits))

    @staticmethod
    def has_sparsity(option: Mapping[str, Any]) -> bool:
        return option["scheme"] not in ("dense", "nm")

    def snap_sparsity(self, u: float) -> float:
        """Map u in [0, 1] to the nearest sparsity of the grid (linear in the grid's range)."""
        lo, hi = self.sparsities[0], self.sparsities[-1]
        target = lo + float(np.clip(u, 0.0, 1.0)) * (hi - lo)
        return min(self.sparsities, key=lambda s: abs(s - target))

    def snap_sparsity_value(self, sparsity: float) -> float:
        """The grid sparsity nearest to `sparsity`."""
        return min(self.sparsities, key=lambda s: abs(s - float(sparsity)))

    def choice(self, gene: Gene) -> dict[str, Any]:
        """The `SearchSpace.decode` entry for this layer."""
        out = dict(self.options[gene.option])
        if self.has_sparsity(out):
            out["sparsity"] = float(gene.sparsity)
        out["weight_bits"] = self.weight_bits[gene.wbits]
        out["act_bits"] = self.act_bits[gene.abits]
        return out

    def min_bits(self) -> tuple[int, int]:
        """Indices of the smallest weight / activation bit-widths (None = float counts as 32)."""
        def key(b: int | None) -> int:
            return 32 if b is None else b
        w = min(range(len(self.weight_bits)), key=lambda i: key(self.weight_bits[i]))
        a = min(range(len(self.act_bits)), key=lambda i: key(self.act_bits[i]))
        return w, a

    def dense_gene(self) -> Gene:
        """The least compressed gene: dense if offered, else the first option at its smallest sparsity."""
        def key(b: int | None) -> int:
            return 32 if b is None else b
        idx = next((i for i, o in enumerate(self.options) if o["scheme"] == "dense"), 0)
        w = max(range(len(self.weight_bits)), key=lambda i: key(self.weight_bits[i]))
        a = max(range(len(self.act_bits)), key=lambda i: key(self.act_bits[i]))
        return Gene(idx, self.sparsities[0], w, a)

    def gene_from_unit(self, unit: Sequence[float]) -> Gene:
        """Decode a point of [0,1]^4 (sparsity, option, weight bits, act bits) into a gene."""
        def pick(u: float, n: int) -> int:
            return min(int(float(np.clip(u, 0.0, 1.0)) * n), n - 1)
        s, o, w, a = (list(unit) + [0.0, 0.0, 0.0])[:4]
        return Gene(pick(o, len(self.options)), self.snap_sparsity(s), pick(w, len(self.weight_bits)),
                    pick(a, len(self.act_bits)))

    def random_gene(self, rng: np.random.Generator) -> Gene:
        return Gene(int(rng.integers(len(self.options))), float(rng.choice(self.sparsities)),
                    int(rng.integers(len(self.weight_bits))), int(rng.integers(len(self.act_bits))))


def layer_actions(space: Any) -> list[LayerActions]:
    return [LayerActions.from_choices(c) for c in space.layers]


# ------------------------------------------------------------------------------ the budget walker


class BudgetWalker:
    """Builds policies layer by layer and clips each layer's gene so the budget stays reachable (AMC).

    The invariant: after layers 0..i-1 are decided, (decided prefix + most-compressed rest) meets the
    budget. A layer's proposed gene is accepted if it keeps the invariant; otherwise its sparsity is
    raised along the grid, and failing that the layer takes its most-compressed scheme and sparsity at the
    proposed bit-widths if that keeps the invariant, else its most-compressed gene (which keeps the
    invariant by induction). The finished policy therefore always meets the budget.
    """

    def __init__(self, space: Any, budget: Budget, cost_model: CostModel):
        if budget.needs_latency and cost_model.latency is None:
            raise ValueError(f"{budget.describe()} limits latency but the CostModel has no latency predictor; "
                             "pass CostModel(space, latency=...) or use max_mac_ratio / max_size_bytes")
        self.space = space
        self.budget = budget
        self.cost_model = cost_model
        self.actions = layer_actions(space)
        self.model_name = getattr(space, "model", None) or getattr(space, "model_name", None)
        self.dense = [a.dense_gene() for a in self.actions]
        self.max_compressed = self._most_compressed()
        best = self.cost_model.costs(self.policy(self.max_compressed))
        if not budget.check(best):
            reach = ", ".join(f"{k}={best[k]:.4g}" for k in budget.limits())
            raise BudgetError(f"{budget.describe()} cannot be met: the most compressed policy of the space "
                              f"reaches {reach}. Loosen the budget or allow more compression in the search space.")
        self.dense_costs = self.cost_model.costs(self.policy(self.dense))

    # -- building policies
    def choices(self, genes: Sequence[Gene]) -> dict[str, dict[str, Any]]:
        return {a.name: a.choice(g) for a, g in zip(self.actions, genes, strict=True)}

    def policy(self, genes: Sequence[Gene]) -> CompressionPolicy:
        return self.space.decode(self.choices(genes))

    def costs(self, genes: Sequence[Gene]) -> dict[str, float]:
        return self.cost_model.costs(self.policy(genes))

    def score(self, genes: Sequence[Gene]) -> float:
        return self.budget.score(self.costs(genes))

    def _most_compressed(self) -> list[Gene]:
        """Per layer, the gene that lowers the budget score most (others dense); greedy but cheap."""
        genes = list(self.dense)
        if not self.budget.limits():
            return genes
        for i, act in enumerate(self.actions):
            w, a = act.min_bits()
            best, best_score = genes[i], math.inf
            for o, option in enumerate(act.options):
                s = act.sparsities[-1] if act.has_sparsity(option) else 0.0
                cand = Gene(o, s, w, a)
                trial = genes[:i] + [cand] + genes[i + 1:]
                sc = self.score(trial)
                if sc < best_score - 1e-12:
                    best, best_score = cand, sc
            genes[i] = best
        return genes

    # -- clipping
    def clip(self, index: int, prefix: Sequence[Gene], gene: Gene) -> Gene:
        """The gene layer `index` may take given the decided `prefix` (len == index)."""
        if not self.budget.limits():
            return gene
        rest = self.max_compressed[index + 1:]
        if self.budget.check(self.costs(list(prefix) + [gene] + rest)):
            return gene
        act = self.actions[index]
        if act.has_sparsity(act.options[gene.option]):
            for s in act.sparsities:
                if s <= gene.sparsity:
                    continue
                cand = Gene(gene.option, s, gene.wbits, gene.abits)
                if self.budget.check(self.costs(list(prefix) + [cand] + rest)):
                    return cand
        # the most compressed gene, at the proposed bit-widths when those keep the invariant: lower bits
        # only where they lower the binding cost (a size budget), never as a side effect of a latency clip
        # on a float runtime, where they would cost accuracy and buy nothing
        most = self.max_compressed[index]
        if (gene.wbits, gene.abits) != (most.wbits, most.abits):
            cand = Gene(most.option, most.sparsity, gene.wbits, gene.abits)
            if self.budget.check(self.costs(list(prefix) + [cand] + rest)):
                return cand
        return most

    def walk(self, genes: Sequence[Gene]) -> list[Gene]:
        """Clip a whole gene list in layer order; a shortcut skips the walk when it already fits."""
        genes = list(genes)
        if self.budget.check(self.costs(genes)):
            return genes
        out: list[Gene] = []
        for i, g in enumerate(genes):
            out.append(self.clip(i, out, g))
        return out

    def fits(self, genes: Sequence[Gene]) -> bool:
        return self.budget.check(self.costs(genes))


def as_policy(policy: CompressionPolicy | Mapping[str, Any]) -> CompressionPolicy:
    """Accept a policy or its dict form (as replayed from a tracker after a resume)."""
    return policy if isinstance(policy, CompressionPolicy) else CompressionPolicy.from_dict(policy)


def policy_key(policy: CompressionPolicy | Mapping[str, Any]) -> str:
    """A stable identity for matching observations to proposals (metadata ignored)."""
    policy = as_policy(policy)
    return CompressionPolicy(policy.model, policy.layers, policy.default).to_json(indent=None)


# ------------------------------------------------------------------------------ the agent base


class Agent(abc.ABC):
    """propose(n) -> policies within budget; observe(policy, Observation) -> learn.

    Subclasses declare their options as keyword arguments of `__init__` (after the common ones), so
    `make_agent` can refuse unknown options with a clear message.
    """

    name: str = "agent"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, objective: str | Objective = "accuracy"):
        self.space = space
        self.budget = budget or Budget()
        self.cost_model = cost_model or CostModel(space)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.objective = make_objective(objective)
        self.walker = BudgetWalker(space, self.budget, self.cost_model)
        self.history: list[tuple[CompressionPolicy, Observation]] = []
        self.best: tuple[CompressionPolicy, float] | None = None
        self.n_failed = 0

    @property
    def actions(self) -> list[LayerActions]:
        return self.walker.actions

    @abc.abstractmethod
    def propose(self, n: int = 1) -> list[CompressionPolicy]:
        """Return `n` policies, each within the budget."""

    def observe(self, policy: CompressionPolicy, result: Observation) -> None:
        """Record the outcome; subclasses learn from it (call super first)."""
        policy = as_policy(policy)
        self.history.append((policy, result))
        if not result.ok:
            self.n_failed += 1
            return
        reward = self.reward(result)
        if self.best is None or reward > self.best[1]:
            self.best = (policy, reward)

    def reward(self, result: Observation) -> float:
        return self.objective.reward(result.metrics)

    # helpers for subclasses
    def finish(self, genes: Sequence[Gene], **metadata: Any) -> CompressionPolicy:
        """The policy of already-walked genes, checked against the budget (a bug here must be loud)."""
        policy = self.walker.policy(genes)
        costs = self.cost_model.costs(policy)
        if not self.budget.check(costs):
            raise AssertionError(f"{self.name} built a policy over {self.budget.describe()}: "
                                 f"{self.budget.violations(costs)}")
        if metadata:
            from dataclasses import replace
            policy = replace(policy, metadata={**dict(policy.metadata), "agent": self.name, **metadata})
        return policy


# ------------------------------------------------------------------------------ registry

AGENTS: dict[str, str] = {
    "random": "agents.random_agent:RandomAgent",
    "rule_based": "agents.rule_based:RuleBasedAgent",
    "amc": "agents.amc:AMCAgent",
    "agmc": "agents.agmc:AGMCAgent",
    "optuna": "agents.optuna_agent:OptunaAgent",
}


def agent_class(name: str) -> type[Agent]:
    """Resolve a registered agent lazily (heavy imports such as optuna / torch-geometric load on use)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent '{name}'; registered agents: {', '.join(AGENTS)}")
    module_name, _, attr = AGENTS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def agent_options(name: str) -> dict[str, Any]:
    """The options an agent accepts (beyond space, budget, cost_model, seed) with their defaults."""
    cls = agent_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def make_agent(name: str, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
               seed: int = 0, **options: Any) -> Agent:
    """Build a registered agent; unknown options raise ValueError listing the ones it accepts."""
    allowed = agent_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"agent '{name}' does not take option(s) {unknown}; it accepts: "
                         f"{', '.join(f'{k}={v!r}' for k, v in allowed.items()) or 'none'}")
    return agent_class(name)(space, budget, cost_model, seed, **options)
