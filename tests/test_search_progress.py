"""Search progress output and the near-chance proxy warning (automl.search.progress)."""

from __future__ import annotations

from automl.search.progress import SearchProgress, proxy_ranking_warning


def test_warns_when_every_proxy_accuracy_is_near_chance_and_names_the_fix():
    # the quickstart with the random agent and no proxy steps: best 15.6% for a 89.71% dense model
    text = proxy_ranking_warning([0.156, 0.115, 0.093], 10, 0.8971, 0)
    assert text is not None and "15.60%" in text and "chance 10.00%" in text and "dense 89.71%" in text
    assert "set evaluation.proxy_finetune_steps" in text
    again = proxy_ranking_warning([0.156], 10, 0.8971, 30)
    assert again is not None and "even after 30 proxy SGD steps" in again


def test_no_warning_when_the_proxy_separates_candidates_from_chance():
    # the quickstart with rule_based and 30 proxy steps: best 75.6%
    assert proxy_ranking_warning([0.756, 0.408], 10, 0.8971, 30) is None
    # the threshold is chance + a quarter of the dense model's margin: 10% + 0.25 * 79.71% = 29.93%
    assert proxy_ranking_warning([0.30], 10, 0.8971, 0) is None
    assert proxy_ranking_warning([0.29], 10, 0.8971, 0) is not None
    # nothing to judge
    assert proxy_ranking_warning([], 10, 0.9, 0) is None
    # an unknown or near-chance dense accuracy falls back to a perfect model's margin
    assert proxy_ranking_warning([0.3], 10, None, 0) is not None
    assert proxy_ranking_warning([0.4], 10, 0.05, 0) is None


def test_progress_line_counts_failures_and_tracks_the_best():
    lines: list[str] = []
    progress = SearchProgress(3, printer=lines.append)
    progress.update({"index": 0, "status": "ok", "metrics": {"accuracy": 0.5, "latency_ms": 1.0}})
    progress.update({"index": 1, "status": "failed", "metrics": {}, "error": "boom\nmore"})
    progress.update({"index": 2, "status": "ok", "metrics": {"accuracy": 0.7, "latency_ms": 2.0}})
    assert lines[0].startswith("[1/3] #0 acc 50.00%") and "best #0: 50.00%" in lines[0]
    assert "FAILED (boom)" in lines[1] and "best #0" in lines[1]
    assert "best #2: 70.00%" in lines[2] and progress.failed == 1
