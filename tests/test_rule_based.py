"""The rule-based agent reads the runtime from its latency profile (fitted on recorded samples, no timing).

On sparse-cpu (block-sparse kernels) it picks per layer the fine-grained scheme / block size the profile
predicts fastest; on onnxruntime (no sparse kernel) it keeps falling back to channel pruning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agents import Budget, CostModel, make_agent
from agents.base import PredictedLatency
from agents.rule_based import TIE
from automl.models import build_model
from automl.policy import LayerDecision
from latency_models import DeviceProfile
from latency_models.estimate import device_fingerprint, device_info
from latency_models.predictors import Sample
from search_spaces import SearchSpace, apply_policy

FIXTURE = Path(__file__).parent / "fixtures" / "latency_onnxruntime_b1.json"


@pytest.fixture(scope="module")
def model():
    return build_model("resnet20", 1, 10, 28)


@pytest.fixture(scope="module")
def space(model):
    return SearchSpace.from_model(model, "resnet20", (1, 28, 28))


def rule_agent(profile, space, budget_share: float = 0.7):
    latency = PredictedLatency(profile, space)
    budget = Budget(max_latency_ms=budget_share * latency(space.dense_policy()))
    return make_agent("rule_based", space, budget, CostModel(space, latency)), latency


def chosen(agent, name):
    i = agent.space.layer_names().index(name)
    return agent.actions[i].options[agent.options[i]]


def inner_3x3(space):
    return [lc.layer.name for lc in space.layers if lc.layer.kind == "conv3x3" and lc.layer.name != "conv1"]


def test_on_sparse_cpu_the_rule_takes_the_block_scheme_the_profile_predicts_fastest(model, space):
    from _sparse_profile import synthetic_profile

    from latency_models.sparse_kernels import convert_model
    from latency_models.sparse_kernels.modules import SparseConv2d

    agent, latency = rule_agent(synthetic_profile("sparse-cpu"), space)
    dense = latency(space.dense_policy())
    for name in inner_3x3(space):
        option = chosen(agent, name)
        # the rule alone would say pattern; pattern at half the weights runs dense on sparse-cpu
        assert option["scheme"] in ("block1xn", "block_punched"), (name, option)
        height = option["n"] if option["scheme"] == "block1xn" else option["block"][0]
        assert height % 4 == 0, (name, option)  # runs on the 1x4 kernel, never the slower 1x2 one
        assert name in agent.measured_choices and agent.measured_choices[name].startswith("pattern")

        def saved(decision, name=name):
            return dense - latency(space.dense_policy().with_layer(name, decision))

        best = max(saved(LayerDecision("block1xn", sparsity=0.5, n=n)) for n in (2, 4, 8, 16))
        picked = LayerDecision(option["scheme"], sparsity=0.5, n=option.get("n"), block=option.get("block"))
        assert saved(picked) >= (1 - TIE) * best - 1e-9
        # (the law says unstructured at 50% saves nothing; the fitted profile is not that sharp)
        assert saved(picked) > 1.5 * saved(LayerDecision("unstructured", sparsity=0.5))
    # on the real kernels the chosen structure runs as 1x4 blocks
    name = inner_3x3(space)[4]
    option = chosen(agent, name)
    policy = space.decode({name: {**option, "sparsity": 0.7}})
    converted = convert_model(apply_policy(model, policy, torch.zeros(1, 1, 28, 28)).model)
    assert {n: m.n for n, m in converted.named_modules() if isinstance(m, SparseConv2d)} == {name: 4}
    # float bit-widths: sparse-cpu's kernels are fp32
    proposal = agent.propose(1)[0]
    assert all(d.weight_bits is None and d.act_bits is None for d in proposal.layers.values())
    assert latency(proposal) <= agent.budget.max_latency_ms * (1 + 1e-9)


def test_on_onnxruntime_the_rule_still_falls_back_to_channel_pruning(space):
    """The recorded onnxruntime conv samples (no sparse conv kernel: masks time like dense)."""
    from _sparse_profile import synthetic_samples

    info = device_info()
    recorded = [Sample.from_list(r) for r in json.loads(FIXTURE.read_text())["samples"]]
    others = [s for s in synthetic_samples("onnxruntime", 300) if s.kernel.type != "conv"]
    profile = DeviceProfile(device=info["device"], runtime="onnxruntime", batch=1, threads=1, precision="fp32",
                            versions=info["versions"], fingerprint=device_fingerprint(info),
                            samples=recorded + others, overhead_ms=0.005).fit()
    agent, _ = rule_agent(profile, space)
    assert agent.measured_choices == {}
    for name in inner_3x3(space):
        assert chosen(agent, name)["scheme"] == "channel", name
        assert agent.fallbacks[name] == "pattern -> channel"
