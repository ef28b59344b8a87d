"""Post-training baselines: target MAC ratios are met, and least-squares reconstruction beats plain pruning."""

from __future__ import annotations

import pytest
import torch

from automl.models import build_model
from automl.training import evaluate
from search_spaces import SearchSpace, apply_policy, cost_report
from search_spaces.baselines import (
    BaselineError,
    global_magnitude,
    reconstruct,
    uniform,
    uniform_channel_within,
)

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return build_model("resnet20", 1, 10, 28).eval()


def _ratio(model, policy) -> float:
    return cost_report(SearchSpace.from_model(model, "resnet20", SHAPE), policy).mac_ratio


def test_global_magnitude_hits_target(fresh):
    for target in (0.5, 0.3):
        policy = global_magnitude(fresh, target, SHAPE, model_name="resnet20")
        assert _ratio(fresh, policy) == pytest.approx(target, abs=0.01)
        assert policy.metadata["baseline"] == "global_magnitude"
        sparsities = [d.sparsity for _, d in policy]
        assert max(sparsities) - min(sparsities) > 0.05  # one threshold, different per-layer sparsity


@pytest.mark.parametrize("scheme, tol", [("unstructured", 0.01), ("channel", 0.03), ("block_punched", 0.02),
                                         ("block1xn", 0.02), ("nm", 0.1), ("pattern", 0.1)])
def test_uniform_hits_target(fresh, scheme, tol):
    policy = uniform(fresh, scheme, 0.5, SHAPE, model_name="resnet20")
    assert _ratio(fresh, policy) == pytest.approx(0.5, abs=tol)
    used = {d.scheme for _, d in policy}
    assert scheme in used and used <= {scheme, "dense", "unstructured"}  # unstructured only as a repair
    sparsities = {round(d.sparsity, 6) for _, d in policy if d.scheme == scheme and scheme != "nm"}
    assert len(sparsities) <= 1 or scheme == "channel"  # one sparsity everywhere (channel reports achieved)
    compressed = apply_policy(fresh, policy, torch.zeros(1, *SHAPE))
    assert compressed.model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_uniform_channel_within_takes_as_much_as_the_check_allows(fresh):
    space = SearchSpace.from_model(fresh, "resnet20", SHAPE)

    def under(limit):
        return lambda policy: cost_report(space, policy).mac_ratio <= limit

    policy = uniform_channel_within(space, under(0.4))
    ratio = _ratio(fresh, policy)
    assert 0.35 < ratio <= 0.4  # meets the check, and not by cutting far more than needed
    assert policy.metadata["baseline"] == "uniform_channel"
    kept = [d for _, d in policy if d.scheme == "channel"]
    assert kept and {d.align for d in kept} == {8}  # rounded as onnxruntime's blocked kernels like
    assert uniform_channel_within(space, under(1.0)).metadata["mac_ratio"] == 1.0
    assert uniform_channel_within(space, under(0.001)) is None  # unreachable


def test_bad_requests(fresh):
    with pytest.raises(BaselineError, match="target_mac_ratio"):
        global_magnitude(fresh, 1.5, SHAPE, model_name="resnet20")
    with pytest.raises(BaselineError, match="offers scheme 'bogus'"):
        uniform(fresh, "bogus", 0.5, SHAPE, model_name="resnet20")


@pytest.mark.parametrize("scheme", ["unstructured", "nm"])
def test_reconstruction_beats_plain_pruning(trained_resnet20, fmnist_small, scheme):
    s = fmnist_small
    base = evaluate(trained_resnet20, s.x_test, s.y_test)
    if scheme == "unstructured":
        policy = uniform(trained_resnet20, "unstructured", 0.5, SHAPE, model_name="resnet20")
    else:
        policy = uniform(trained_resnet20, "nm", 0.5, SHAPE, model_name="resnet20", nm=(2, 4))
    compressed = apply_policy(trained_resnet20, policy, s.x_test[:1])
    plain = evaluate(compressed.model, s.x_test, s.y_test)
    zeros_before = {n: (m == 0) for n, m in compressed.masks.items()}
    result = reconstruct(compressed.model, trained_resnet20, s.x_train[:128], masks=compressed.masks)
    recon = evaluate(compressed.model, s.x_test, s.y_test)
    assert len(result.reconstructed) >= 15
    for name in result.reconstructed:
        assert result.rel_error_after[name] < result.rel_error_before[name]
    for name, pruned in zeros_before.items():  # the structure (mask) is kept exactly
        assert torch.all(compressed.model.get_submodule(name).weight[pruned] == 0)
    assert plain < base - 0.03, (base, plain)  # the pruning really hurt ...
    assert recon > plain + 0.03, (base, plain, recon)  # ... and reconstruction recovered a good part of it
