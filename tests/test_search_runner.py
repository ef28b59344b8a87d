"""The search's final choice: chosen on validation accuracy, within the budget where it was measured.

The end-to-end flow (Ray, MLflow, the fine-tune itself) is covered by test_search_e2e.py; these tests pin
the choice among fine-tuned candidates, which the end-to-end test cannot steer."""

from __future__ import annotations

from automl.policy import CompressionPolicy
from automl.search.config import SearchConfig
from automl.search.runner import SearchRunner, measured_within_budget


def _runner(budget: dict, printed: list[str]) -> SearchRunner:
    cfg = SearchConfig.from_dict({"budget": budget, "candidates": 4})
    return SearchRunner(cfg, tracking_uri="sqlite:///unused.db", printer=printed.append)


def _cand(index: int, val: float, test: float, **metrics: float) -> dict:
    return {"index": index, "policy": CompressionPolicy("m", {}), "stage": "finetuned", "status": "ok",
            "metrics": {"accuracy": test, "finetuned_accuracy": test, "val_accuracy": val, **metrics}}


def test_measured_within_budget_reads_the_configured_bound():
    cfg = SearchConfig.from_dict({"budget": {"max_latency_ms": 1.0}})
    assert measured_within_budget({"latency_ms_measured": 0.9}, cfg.budget) is True
    assert measured_within_budget({"latency_ms_measured": 1.1}, cfg.budget) is False
    assert measured_within_budget({"latency_ms": 0.5}, cfg.budget) is None  # predicted only: not judged
    ratio = SearchConfig.from_dict({"budget": {"max_latency_ratio": 0.5}}).budget
    assert measured_within_budget({"latency_ms_measured": 0.9, "dense_latency_ms_side_by_side": 2.0}, ratio) is True
    assert measured_within_budget({"latency_ms_measured": 1.1, "dense_latency_ms_side_by_side": 2.0},
                                  ratio) is False
    assert measured_within_budget({"latency_ms_measured": 1.1}, ratio) is None  # no dense timed beside it
    macs_only = SearchConfig.from_dict({"budget": {"max_mac_ratio": 0.5}}).budget
    assert measured_within_budget({"latency_ms_measured": 9.0}, macs_only) is None


def test_best_is_chosen_on_validation_not_test_accuracy():
    printed: list[str] = []
    runner = _runner({"max_latency_ms": 1.0}, printed)
    best = runner._best_finetuned([_cand(0, val=0.80, test=0.90), _cand(1, val=0.85, test=0.86)])
    assert best["index"] == 1
    assert not printed


def test_best_skips_candidates_measured_over_the_budget():
    printed: list[str] = []
    runner = _runner({"max_latency_ratio": 0.5}, printed)
    over = _cand(0, val=0.90, test=0.90, latency_ms_measured=1.2, dense_latency_ms_side_by_side=2.0)
    within = _cand(1, val=0.85, test=0.85, latency_ms_measured=0.95, dense_latency_ms_side_by_side=2.0)
    unmeasured = _cand(2, val=0.84, test=0.95)
    assert runner._best_finetuned([over, within, unmeasured])["index"] == 1
    assert not printed


def test_all_over_budget_still_gives_a_best_and_says_so():
    printed: list[str] = []
    runner = _runner({"max_latency_ms": 1.0}, printed)
    a = _cand(0, val=0.70, test=0.90, latency_ms_measured=1.5)
    b = _cand(1, val=0.80, test=0.80, latency_ms_measured=1.2)
    assert runner._best_finetuned([a, b])["index"] == 1
    assert len(printed) == 1 and "over budget" in printed[0]


def test_candidates_logged_before_validation_accuracy_existed_rank_by_accuracy():
    printed: list[str] = []
    runner = _runner({"max_latency_ms": 1.0}, printed)
    old = {"index": 0, "policy": CompressionPolicy("m", {}), "metrics": {"accuracy": 0.88}}
    assert runner._best_finetuned([old, _cand(1, val=0.85, test=0.95)])["index"] == 0


def test_top_candidates_keep_the_channels_a_blocked_runtime_computes_anyway():
    """Before the fine-tune, a candidate's channel groups are raised to whole blocks of the profile's
    blocked layout where the profile predicts that free (`latency.widen_free_channels`, on by default); a
    profile without a blocked layout, or the option off, leaves the candidate as it was."""
    from dataclasses import replace

    from test_latency_profile import _synthetic_other_kernels, fixture_samples, here_profile

    from automl.models import build_model
    from latency_models import predict_policy
    from search_spaces import SearchSpace
    from search_spaces.widening import widen_free_channels

    space = SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28))
    plain = here_profile(fixture_samples() + _synthetic_other_kernels())
    blocked = replace(plain, layout_block=16)
    policy = space.decode({lc.layer.name: {"scheme": "channel", "sparsity": 0.4, "align": 8}
                           for lc in space.layers if "channel" in lc.schemes})
    cand = {"index": 3, "policy": policy, "metrics": {"accuracy": 0.8}}
    expected, steps = widen_free_channels(policy, space, lambda p: predict_policy(blocked, space, p).ms, 16)
    assert steps  # this profile prices at least one group's next block as free

    printed: list[str] = []
    widened = _runner({"max_latency_ratio": 0.5}, printed)._widened(cand, space, blocked)
    assert widened["policy"] == expected and widened["metrics"]["widened_groups"] == len(steps)
    assert cand["policy"] is policy and "widened_groups" not in cand["metrics"]  # the input is not modified
    assert f"{steps[0].layer} {steps[0].kept_before}->{steps[0].kept_after}" in printed[-1]
    assert predict_policy(blocked, space, expected).ms <= predict_policy(blocked, space, policy).ms

    assert _runner({"max_latency_ratio": 0.5}, [])._widened(cand, space, plain) is cand  # no blocked layout
    off = SearchConfig.from_dict({"budget": {"max_latency_ratio": 0.5}, "latency": {"widen_free_channels": False}})
    assert SearchRunner(off, tracking_uri="sqlite:///unused.db", printer=print)._widened(cand, space, blocked) is cand
