"""Wraps any agent (propose/observe) as a Ray Tune `Searcher`, without changing the agent.

Tune asks `suggest(trial_id)` whenever a worker is free and reports `on_trial_complete` when a trial
finishes (after Tune's own retries of a dead worker). The agent never sees Ray: it only proposes
policies and observes results, so the same agent runs locally, on a cluster, and after a resume.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from automl.policy import CompressionPolicy


def _observation(metrics: dict[str, Any], status: str, error: str | None):
    from agents import Observation

    return Observation(metrics=metrics, status=status, error=error)


class AgentSearcher(Searcher):
    """Ask/tell bridge: one proposed policy per Tune trial; the agent is pickled for resume."""

    def __init__(self, agent: Any, remaining: int, metric: str = "accuracy", mode: str = "max",
                 state_path: Path | None = None, baselines: list[tuple[str, CompressionPolicy]] | None = None):
        super().__init__(metric=metric, mode=mode)
        self.agent = agent
        self.state_path = state_path
        self.remaining = remaining
        self.suggested = 0
        self.pending: dict[str, CompressionPolicy] = {}
        self.baselines = list(baselines or [])  # (name, policy): suggested before the agent's proposals

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.suggested >= self.remaining:
            return Searcher.FINISHED
        if self.baselines:  # the agent observes them like its own results (it learns what it can from them)
            name, policy = self.baselines.pop(0)
            origin = f"baseline:{name}"
        else:
            policy, origin = self.agent.propose(1)[0], "agent"
        self.pending[trial_id] = policy
        self.suggested += 1
        return {"policy": policy.to_dict(), "proposal": self.suggested - 1, "origin": origin}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        policy = self.pending.pop(trial_id, None)
        if policy is None:
            return
        if error or not result:
            self.agent.observe(policy, _observation({}, "failed", "trial errored after retries"))
        else:
            metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.agent.observe(policy, _observation(metrics, result.get("status", "ok"), result.get("error") or None))
        if self.state_path is not None:  # persisted after every observation: a killed driver resumes from here
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(self.agent))
            tmp.replace(self.state_path)

    # Tune calls these when it checkpoints the experiment; we also persist the agent ourselves.
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.agent))

    def restore(self, checkpoint_path: str) -> None:
        self.agent = pickle.loads(Path(checkpoint_path).read_bytes())
