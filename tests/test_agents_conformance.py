"""One suite every registered agent passes (as Optuna's pytest_samplers): determinism under a seed,
decode-valid policies, never over budget, failed trials, pickling mid-search, impossible budgets."""

from __future__ import annotations

import pickle

import pytest

from agents import AGENTS, Budget, BudgetError, CostModel, Observation, make_agent, policy_key
from agents.testing import StepLatency, TargetSparsity, tiny_space

AGENT_NAMES = sorted(AGENTS)
FAST = {"amc": {"warmup": 3, "hidden": 32}, "agmc": {"warmup": 3, "hidden": 32, "gnn_hidden": 16},
        "optuna": {"n_startup_trials": 3}}


@pytest.fixture(scope="module")
def space():
    return tiny_space()


@pytest.fixture(scope="module")
def space_bits():
    return tiny_space(weight_bits=(None, 8, 4), act_bits=(None, 8))


def objective(space):
    return TargetSparsity(space.layer_names(), [0.5] * len(space.layers))


def agent(name, space, budget, seed=0, latency=None, **extra):
    return make_agent(name, space, budget, CostModel(space, latency), seed=seed, **{**FAST.get(name, {}), **extra})


def drive(a, space, rounds: int, batch: int = 2) -> list:
    """A small ask/tell loop with several outstanding proposals, told back in reverse order."""
    score = objective(space)
    proposed = []
    for _ in range(rounds):
        policies = a.propose(batch)
        proposed += policies
        for p in reversed(policies):
            a.observe(p, Observation({"accuracy": score(p), "latency_ms": 1.0}))
    return proposed


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_deterministic_under_seed(name, space):
    budget = Budget(max_mac_ratio=0.6)
    a, b = agent(name, space, budget, seed=3), agent(name, space, budget, seed=3)
    pa = [policy_key(p) for p in drive(a, space, 5)]
    pb = [policy_key(p) for p in drive(b, space, 5)]
    assert pa == pb
    if name != "rule_based":  # the rule's first proposal does not depend on the seed
        c = agent(name, space, budget, seed=4)
        assert [policy_key(p) for p in drive(c, space, 5)] != pa


@pytest.mark.parametrize("name", AGENT_NAMES)
@pytest.mark.parametrize("budget", [Budget(max_mac_ratio=0.5), Budget(max_mac_ratio=0.3, max_size_bytes=20000)],
                         ids=["macs", "macs+size"])
def test_valid_and_never_over_budget(name, budget, space):
    a = agent(name, space, budget)
    cm = CostModel(space)
    for policy in drive(a, space, 6):
        space.validate(policy)  # decode-valid: every layer's choice is one the space offers
        for layer, decision in policy.layers.items():
            assert decision.scheme in space.choices(layer).schemes
        assert budget.check(cm.costs(policy)), budget.violations(cm.costs(policy))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_latency_budget(name, space):
    latency = StepLatency(space)
    dense_ms = latency(space.dense_policy())
    budget = Budget(max_latency_ms=0.5 * dense_ms)
    a = agent(name, space, budget, latency=latency)
    for policy in drive(a, space, 4):
        assert latency(policy) <= 0.5 * dense_ms + 1e-9


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_survives_failed_trials(name, space):
    a = agent(name, space, Budget(max_mac_ratio=0.5))
    for i in range(6):
        (p,) = a.propose(1)
        if i % 2:
            a.observe(p, Observation.failed("worker died"))
        else:
            a.observe(p, Observation({"accuracy": 0.4}))
    a.observe(a.propose(1)[0], Observation({}, status="ok"))  # ok without accuracy counts as failed
    assert a.n_failed == 4
    assert len(a.propose(2)) == 2
    # an observation for a policy it never proposed (replayed after a resume) is accepted
    a.observe(space.dense_policy().to_dict(), Observation({"accuracy": 0.9}))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_picklable_mid_search(name, space):
    a = agent(name, space, Budget(max_mac_ratio=0.5))
    drive(a, space, 3)
    outstanding = a.propose(2)  # pickled with proposals in flight, as Tune checkpoints a searcher
    b = pickle.loads(pickle.dumps(a))
    for agent_ in (a, b):
        for p in outstanding:
            agent_.observe(p, Observation({"accuracy": 0.5}))
    assert [policy_key(p) for p in a.propose(3)] == [policy_key(p) for p in b.propose(3)]


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_impossible_budget_is_a_clear_error(name, space):
    with pytest.raises(BudgetError, match=r"max_mac_ratio=0\.001.*reaches mac_ratio="):
        agent(name, space, Budget(max_mac_ratio=0.001))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_searches_bits_when_the_space_has_them(name, space_bits):
    a = agent(name, space_bits, Budget(max_size_bytes=8000))
    cm = CostModel(space_bits)
    policies = drive(a, space_bits, 4)
    bits = {d.weight_bits for p in policies for _, d in p}
    assert bits - {None}, f"{name} never chose a weight bit-width"
    assert all(cm.costs(p)["size_bytes"] <= 8000 for p in policies)


def test_unknown_agent_and_option_errors(space):
    with pytest.raises(ValueError, match="registered agents: .*random"):
        make_agent("nope", space)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['warmpu'\].*warmup="):
        make_agent("amc", space, warmpu=3)


def test_latency_budget_without_predictor_is_refused(space):
    with pytest.raises(ValueError, match="no latency predictor"):
        make_agent("random", space, Budget(max_latency_ms=1.0), CostModel(space))


def test_the_walker_lowers_bits_only_when_the_binding_cost_needs_it(space_bits):
    """A clipped layer keeps its proposed bit-widths unless fewer bits are what brings the budget in reach."""
    from agents import BudgetWalker

    def walk_float(budget: Budget) -> list:
        walker = BudgetWalker(space_bits, budget, CostModel(space_bits))
        float_genes = [walker.dense[i] for i in range(len(walker.actions))]  # dense and float everywhere
        assert all(a.weight_bits[g.wbits] is None for a, g in zip(walker.actions, float_genes, strict=True))
        genes = walker.walk(float_genes)
        assert walker.fits(genes)
        return [a.weight_bits[g.wbits] for a, g in zip(walker.actions, genes, strict=True)]

    # MACs do not depend on bits: a tight MAC budget clips sparsity and schemes, never the float bits
    assert set(walk_float(Budget(max_mac_ratio=0.2))) == {None}
    # size does: a tight size budget is met only with fewer bits
    assert set(walk_float(Budget(max_size_bytes=0.2 * _dense_size(space_bits)))) - {None}


def _dense_size(space) -> float:
    return CostModel(space).costs(space.dense_policy())["size_bytes"]
