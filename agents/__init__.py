"""Search agents: ask/tell controllers that propose compression policies within a resource budget.

Users type ``agents.make_agent("amc", space, budget, cost_model, seed=0)``; agents load lazily so
importing this package does not pull optuna or torch-geometric.
"""

from agents.base import (
    AGENTS,
    OBJECTIVES,
    Agent,
    Budget,
    BudgetError,
    BudgetWalker,
    CostModel,
    Gene,
    LayerActions,
    Objective,
    Observation,
    PredictedLatency,
    agent_class,
    agent_options,
    make_agent,
    make_objective,
    policy_key,
)

__all__ = ["AGENTS", "OBJECTIVES", "Agent", "Budget", "BudgetError", "BudgetWalker", "CostModel", "Gene",
           "LayerActions", "Objective", "Observation", "PredictedLatency", "agent_class", "agent_options",
           "make_agent", "make_objective", "policy_key"]
