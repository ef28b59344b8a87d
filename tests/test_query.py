"""automl.query against a real sqlite MLflow store in the documented layout."""

from __future__ import annotations

import pytest
from _query_store import DEVICE, make_store, policy_for

from automl.query import (
    Candidate,
    Constraints,
    QueryError,
    TrackingReader,
    best_policy,
    choose_best,
    compare,
    default_x,
    layer_view,
    list_searches,
    load_policy,
    pareto_front,
    pareto_plot_data,
    search_candidates,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("mlflow"))


def _best(store, **kw):
    uri, _ = store
    kw.setdefault("model", "resnet20")
    kw.setdefault("dataset", "fashion-mnist")
    kw.setdefault("device", DEVICE)
    return best_policy(uri, **kw)


def test_list_searches_filters_by_model_dataset_device(store):
    uri, ids = store
    assert {s.search_id for s in list_searches(uri, model="resnet20")} == {ids["A"], ids["B"], ids["C"]}
    assert [s.search_id for s in list_searches(uri, model="resnet20", dataset="cifar10")] == [ids["C"]]
    found = list_searches(uri, model="resnet20", dataset="fashion-mnist", device=DEVICE)
    assert [s.search_id for s in found] == [ids["A"]]
    assert found[0].candidates_total == 5 and found[0].status == "finished"
    assert list_searches(uri, model="no-such-model") == []


def test_candidates_of_a_search_skip_failed_runs(store):
    uri, ids = store
    cands = search_candidates(uri, ids["A"])
    assert {c.run_id for c in cands} == {ids[k] for k in ("A0p", "A1p", "A2p", "A4p", "A0f", "A1f")}
    assert all(c.device == DEVICE and c.dataset == "fashion-mnist" for c in cands)
    everything = TrackingReader(uri).candidates(ids["A"], include_failed=True)
    failed = [c for c in everything if c.status == "failed"]
    assert [c.run_id for c in failed] == [ids["A3p"]] and "simulated" in failed[0].error


def test_best_without_constraints_prefers_finetuned(store):
    _, ids = store
    best = _best(store)
    assert best.candidate.run_id == ids["A1f"] and best.stage == "finetuned"
    assert best.to_dict()["fine_tuned"] is True and "fine-tuned" in best.note
    # Across devices the proxy 0.90 of search B is more "accurate", but fine-tuned results win.
    assert _best(store, device=None).candidate.run_id == ids["A1f"]


@pytest.mark.parametrize("constraints, expected, stage", [
    ({"max_latency_ms": 0.6}, "A0f", "finetuned"),
    ({"max_latency_ms": 0.4}, "A2p", "proxy"),
    ({"max_mac_ratio": 0.35}, "A2p", "proxy"),
    ({"max_size_mb": 0.22}, "A0f", "finetuned"),
    ({"max_latency_ms": 0.6, "min_accuracy": 0.82}, "A0f", "finetuned"),
    ({"min_accuracy": 0.86}, "A1f", "finetuned"),
])
def test_best_under_constraints(store, constraints, expected, stage):
    _, ids = store
    best = _best(store, **constraints)
    assert best is not None and best.candidate.run_id == ids[expected] and best.stage == stage
    d = best.to_dict()
    for key, bound in constraints.items():
        value = d[key.replace("max_", "").replace("min_", "")]
        assert value <= bound if key.startswith("max") else value >= bound
    if stage == "proxy":
        assert "not fine-tuned" in best.note


def test_best_other_dataset_and_nothing_fits(store):
    uri, ids = store
    assert _best(store, dataset="cifar10").candidate.run_id == ids["C0p"]
    assert _best(store, max_latency_ms=0.6, min_accuracy=0.85) is None
    assert _best(store, max_latency_ms=0.05) is None
    assert _best(store, model="mobilenetv2") is None
    result, message = TrackingReader(uri).best_policy("resnet20", "fashion-mnist", DEVICE,
                                                      Constraints(max_latency_ms=0.05))
    assert result is None and "latency_ms <= 0.05" in message and "lowest latency_ms seen 0.3" in message


def test_failed_candidate_is_never_best(store):
    _, ids = store
    best = _best(store, max_latency_ms=0.2)  # only the failed A3 (0.1 ms, acc 0.99) would fit
    assert best is None


def test_constraints_reject_bad_values():
    with pytest.raises(QueryError, match="max_latency_ms"):
        Constraints(max_latency_ms=-1)


def test_pareto_front_is_non_dominated_and_sorted():
    def c(i, acc, lat):
        return Candidate(f"{i:032x}", "s" * 32, i, "proxy", "ok", "m", None, None, None, "",
                         {"accuracy": acc, "latency_ms": lat})

    pts = [c(0, 0.8, 0.5), c(1, 0.85, 0.7), c(2, 0.7, 0.3), c(3, 0.6, 0.6), c(4, 0.85, 0.9), c(5, 0.9, 1.0),
           Candidate("f" * 32, "s" * 32, 6, "proxy", "ok", "m", None, None, None, "", {"accuracy": 0.99})]
    front = pareto_front(pts)
    assert [p.index for p in front] == [2, 0, 1, 5]
    for p in pts:
        if p in front or "latency_ms" not in p.metrics:
            continue
        assert any(f.accuracy >= p.accuracy and f.latency_ms <= p.latency_ms for f in front)
    assert pareto_front([]) == []
    assert choose_best(pts).index == 6


def test_compare_search_and_candidates(store):
    uri, ids = store
    cmp = compare(uri, [ids["A"]])
    assert cmp.sources == {ids["A"]: "search"}
    # one entry per policy: fine-tuned run where there is one, else the proxy run; failed runs left out
    assert {c.run_id for c in cmp.entries} == {ids[k] for k in ("A0f", "A1f", "A2p", "A4p")}
    assert [c.run_id for c in cmp.front] == [ids["A2p"], ids["A0f"], ids["A1f"]]
    mixed = compare(uri, [ids["A1p"], ids["B"], ids["C0p"]])
    assert mixed.sources == {ids["A1p"]: "candidate", ids["B"]: "search", ids["C0p"]: "candidate"}
    assert {c.run_id for c in mixed.entries} == {ids["A1p"], ids["B0p"], ids["C0p"]}
    data = pareto_plot_data(cmp.entries, cmp.front)
    assert data["xlabel"] == "latency (ms)" and data["ylabel"] == "accuracy"
    assert sorted((p["x"], p["y"]) for p in data["points"]) == [(0.3, 0.7), (0.52, 0.84), (0.6, 0.6), (0.72, 0.88)]
    assert data["front"] == [[0.3, 0.7], [0.52, 0.84], [0.72, 0.88]]


def test_compare_unknown_ids(store):
    uri, _ = store
    with pytest.raises(QueryError, match="no run with id"):
        compare(uri, ["0" * 32])
    with pytest.raises(QueryError, match="not an MLflow run id"):
        compare(uri, ["../../etc/passwd"])
    with pytest.raises(QueryError, match="at least one"):
        compare(uri, [])


def test_load_policy_and_layer_view(store):
    uri, ids = store
    p1 = load_policy(uri, ids["A1f"])
    assert p1 == policy_for("resnet20", 1, "finetuned")
    p2 = load_policy(uri, ids["A2p"])
    rows = {r["layer"]: r for r in layer_view(p1, p2)}
    assert rows["conv1"]["same"] == "yes" and rows["conv1"]["a"] == "dense"
    assert rows["layer1.0.conv1"]["a"] == "channel align8 s=0.20" and rows["layer1.0.conv1"]["b"].endswith("s=0.30")
    assert rows["fc"]["a"] == "nm 2:4" and rows["fc"]["b"] == "unstructured s=0.30"
    assert "w8a8" in rows["layer1.0.conv2"]["a"]
    with pytest.raises(QueryError, match="no best_policy.json"):
        load_policy(uri, ids["A"])  # the fixture search logged no best_policy.json


def test_front_falls_back_to_mac_ratio_without_latency(store):
    def c(i, acc, mac):
        return Candidate(f"{i:032x}", "s" * 32, i, "proxy", "ok", "m", None, None, None, "",
                         {"accuracy": acc, "mac_ratio": mac})

    pts = [c(0, 0.8, 0.5), c(1, 0.7, 0.6), c(2, 0.9, 0.9)]
    assert default_x(pts) == "mac_ratio"
    data = pareto_plot_data(pts, x=default_x(pts))
    assert data["xlabel"] == "MACs / dense MACs" and data["front"] == [[0.5, 0.8], [0.9, 0.9]]
    uri, ids = store
    assert default_x(compare(uri, [ids["A"]]).entries) == "latency_ms"
    assert [e.run_id for e in compare(uri, [ids["A"]], x="mac_ratio").front] == [ids["A2p"], ids["A0f"], ids["A1f"]]
    with pytest.raises(QueryError, match="cannot compare on 'params'"):
        compare(uri, [ids["A"]], x="params")
