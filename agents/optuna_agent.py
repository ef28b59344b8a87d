"""`optuna`: TPE (one objective) or NSGA-II (accuracy vs latency, a Pareto front) through Optuna's ask/tell.

Each layer contributes categorical parameters: its scheme option (when there is a choice), its
sparsity on the space's grid, and weight / activation bit-width indices (when the space has bits).
The suggested genes go through the budget walker, so the proposed policy may be a clipped version of
what Optuna asked for; Optuna is told the result for the parameters it suggested (the same contract
AMC's clipped actions follow). With `storage="sqlite:///path.db"` the study lives in Optuna's RDB
storage and a new agent with the same `study_name` resumes it.
"""

from __future__ import annotations

from typing import Any

from agents.base import Agent, Budget, CostModel, Gene, Objective, Observation, as_policy, policy_key
from automl.policy import CompressionPolicy

SAMPLERS = ("tpe", "nsga2")


class OptunaAgent(Agent):
    name = "optuna"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, *, objective: str | Objective = "accuracy", sampler: str = "tpe",
                 cost_metric: str | None = None, storage: str | None = None, study_name: str | None = None,
                 n_startup_trials: int = 10, population_size: int = 20):
        import optuna

        super().__init__(space, budget, cost_model, seed, objective)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown optuna sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        self.sampler_name = sampler
        self.cost_metric = cost_metric or ("latency_ms" if self.cost_model.latency is not None else "mac_ratio")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler == "tpe":
            sampler_obj = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=n_startup_trials)
            directions = ["maximize"]
        else:
            sampler_obj = optuna.samplers.NSGAIISampler(seed=self.seed, population_size=population_size)
            directions = ["maximize", "minimize"]
        self.study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler_obj,
                                         directions=directions, load_if_exists=storage is not None)
        self.pending: dict[str, list[int]] = {}

    def _genes(self, trial: Any) -> list[Gene]:
        genes = []
        for act in self.actions:
            option = trial.suggest_categorical(f"{act.name}.option", list(range(len(act.options)))) \
                if len(act.options) > 1 else 0
            sparsity = trial.suggest_categorical(f"{act.name}.sparsity", list(act.sparsities)) \
                if len(act.sparsities) > 1 else act.sparsities[0]
            wbits = trial.suggest_categorical(f"{act.name}.weight_bits", list(range(len(act.weight_bits)))) \
                if len(act.weight_bits) > 1 else 0
            abits = trial.suggest_categorical(f"{act.name}.act_bits", list(range(len(act.act_bits)))) \
                if len(act.act_bits) > 1 else 0
            genes.append(Gene(option, float(sparsity), wbits, abits))
        return genes

    def propose(self, n: int = 1) -> list[CompressionPolicy]:
        out = []
        for _ in range(n):
            trial = self.study.ask()
            policy = self.finish(self.walker.walk(self._genes(trial)))
            self.pending.setdefault(policy_key(policy), []).append(trial.number)
            out.append(policy)
        return out

    def observe(self, policy: CompressionPolicy, result: Observation) -> None:
        from optuna.trial import TrialState

        super().observe(policy, result)
        queue = self.pending.get(policy_key(policy))
        if not queue:
            return
        number = queue.pop(0)
        if not queue:
            del self.pending[policy_key(policy)]
        if not result.ok:
            self.study.tell(number, state=TrialState.FAIL)
            return
        reward = self.reward(result)
        if self.sampler_name == "tpe":
            self.study.tell(number, reward)
        else:
            cost = result.metrics.get(self.cost_metric)
            if cost is None:
                cost = self.cost_model.costs(as_policy(policy))[self.cost_metric]
            self.study.tell(number, [reward, float(cost)])
