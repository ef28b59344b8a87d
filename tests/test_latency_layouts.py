"""latency_models.layouts: onnxruntime's NCHWc rewrite replayed on traced kernels.

The replayed rules are checked against the graph onnxruntime itself optimises (its saved optimised
model: ReorderInput / ReorderOutput nodes, adds left as nodes) on zoo models with random policies and on
the profiler's random networks; no timing.
"""

from __future__ import annotations

import collections
import random

import pytest
import torch
from torch import nn

from automl.models import ZOO, build_model
from latency_models.estimate import device_info
from latency_models.kernels import Kernel, kernels_for_model
from latency_models.layouts import REORDER_IN, REORDER_OUT, nchwc_block, nchwc_kernels
from latency_models.sampling import random_network

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

INPUT = (1, 28, 28)


def _block_here() -> int:
    info = device_info()
    return nchwc_block(info["cpu_flags"], info["machine"])


def _optimised_nodes(model: nn.Module, shape, tmp_path) -> list:
    from latency_models.runtimes.ort import OnnxRuntime

    data = OnnxRuntime(exporter="fast").export(model.eval(), torch.zeros(1, *shape), "fp32")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return list(onnx.load(str(tmp_path / "optimised.onnx")).graph.node)


def _runtime_counts(nodes) -> dict[str, int]:
    """Reorders and adds that run as nodes of their own in onnxruntime's optimised graph (an add folded
    with a LayerNorm still counts: that fusion is not the NCHWc layout's)."""
    counts: collections.Counter = collections.Counter()
    for n in nodes:
        if n.op_type in ("ReorderInput", "ReorderOutput"):
            counts[n.op_type] += 1
        elif n.op_type in ("Add", "Sum", "SkipLayerNormalization"):
            counts["Add"] += 1
    return dict(counts)


def _replayed_counts(kernels: list[Kernel]) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for k in kernels:
        if k.type == "reorder":
            counts["ReorderInput" if k.params[1] == REORDER_IN else "ReorderOutput"] += 1
        elif k.type == "eltwise" and len(k.inputs) == 2 and k.role != "fused":
            counts["Add"] += 1
    return dict(counts)


def _zoo_cases(per_model: int, seed: int):
    from search_spaces import SearchSpace, apply_policy

    rng = random.Random(seed)
    for name in ZOO:
        model = build_model(name, INPUT[0], 10, INPUT[1]).eval()
        space = SearchSpace.from_model(model, name, INPUT)
        for i in range(per_model):
            choices = {}
            for lc in space.layers:
                if "channel" in lc.schemes and rng.random() < 0.7:
                    choices[lc.layer.name] = {"scheme": "channel", "align": rng.choice(lc.aligns),
                                              "sparsity": rng.choice([s for s in lc.sparsities if 0 < s <= 0.8])}
            policy = space.dense_policy() if i == 0 else space.decode(choices)
            yield f"{name}#{i}", apply_policy(model, policy, torch.zeros(1, *INPUT)).model.eval(), INPUT


def test_the_replayed_layout_matches_the_graph_onnxruntime_optimises(tmp_path):
    """Where onnxruntime reorders between NCHW and NCHWc and which adds it leaves as nodes follow from each
    conv's channel counts and its neighbours' layouts (a pruned resnet mixing aligned and unaligned widths
    reorders 20+ times and leaves a cascade of adds unfused); the replay must find exactly those nodes."""
    block = _block_here()
    if block == 0:  # checked with AVX2's block of 8 and AVX-512's 16
        pytest.skip("this CPU runs no NCHWc layout")
    rng = random.Random(1)
    cases = list(_zoo_cases(3, seed=0)) + [(f"random#{j}", *random_network(rng)) for j in range(15)]
    mismatches = []
    reorders = 0
    for label, model, shape in cases:
        runtime = _runtime_counts(_optimised_nodes(model, shape, tmp_path))
        replayed = _replayed_counts(nchwc_kernels(kernels_for_model(model, shape), block))
        reorders += runtime.get("ReorderInput", 0) + runtime.get("ReorderOutput", 0)
        if runtime != replayed:
            mismatches.append(f"{label}: onnxruntime {runtime}, replayed {replayed}")
    assert not mismatches, "\n".join(mismatches)
    assert reorders > 3 * len(cases)  # the cases exercise the rules (pruned widths reorder often)


def test_the_block_is_the_one_onnxruntime_pads_channels_to(tmp_path):
    """nchwc_block (from the CPU flags) is the block onnxruntime's NCHWc conv pads its channels to: a conv
    with 6 output channels runs NCHWc with its filter padded to one block."""
    block = _block_here()
    if block == 0:
        pytest.skip("this CPU runs no NCHWc layout")
    model = nn.Sequential(nn.Conv2d(16, 6, 3, padding=1), nn.ReLU())
    nodes = _optimised_nodes(model, (16, 8, 8), tmp_path)
    convs = [n for n in nodes if n.op_type == "Conv" and "nchwc" in n.domain]
    assert len(convs) == 1
    graph = onnx.load(str(tmp_path / "optimised.onnx")).graph
    weight = next(i for i in graph.initializer if i.name == convs[0].input[1])
    assert weight.dims[0] == block


def _conv(cin: int, cout: int, act: int = 1) -> tuple[float, ...]:
    return (float(cin), float(cout), 3.0, 1.0, 8.0, 8.0, 1.0, float(act), 1.0, 0.0, 32.0, 32.0)


def _block(inputs: int, width: int, mid: int, start: int) -> list[Kernel]:
    """A residual block starting at kernel index `start`: conv(+relu), conv (no act), add(+relu)."""
    return [Kernel("conv", _conv(width, mid), inputs=(inputs,)),
            Kernel("conv", _conv(mid, width, act=0), inputs=(start,)),
            Kernel("eltwise", (width * 64.0, 2.0, 1.0), inputs=(start + 1, inputs))]


def test_an_aligned_chain_fuses_its_adds_and_reorders_only_at_its_ends():
    stem = [Kernel("conv", _conv(1, 16), inputs=(-1,))]
    kernels = stem + _block(0, 16, 16, 1) + _block(3, 16, 16, 4)
    run = nchwc_kernels(kernels, 8)
    assert [k.role for k in run if k.type == "eltwise"] == ["fused", "fused"]
    assert [k for k in run if k.type == "reorder"] == []  # the stem reads NCHW (1 channel), nothing leaves


def test_an_unaligned_residual_leaves_the_next_blocks_adds_as_nodes():
    """A block whose residual arrives NCHW (here: a stem of 12 channels feeding a conv of 13) cannot fold
    its add into an NCHWc conv: the add, a reorder out of the conv before it and one into the next conv
    are paid, and the next block inherits the NCHW residual."""
    stem = [Kernel("conv", _conv(1, 13), inputs=(-1,)), Kernel("conv", _conv(13, 16), inputs=(0,))]
    kernels = stem + _block(1, 16, 16, 2) + _block(4, 16, 16, 5)
    run = nchwc_kernels(kernels, 8)
    # the stem's 13->16 conv runs NCHW (13 input channels are no multiple of 4), so its output is NCHW
    assert [k.role for k in run if k.type == "eltwise"] == ["", ""]
    reorders = collections.Counter(k.params[1] for k in run if k.type == "reorder")
    # out: the stem's NCHWc 1->13 conv into the NCHW 13->16 conv, and each block's last conv into its
    # add; in: the NCHW residual into each block's first conv
    assert reorders == {REORDER_OUT: 3, REORDER_IN: 2}


def test_kernels_without_dataflow_and_runtimes_without_a_layout_are_left_as_they_are():
    kernels = [Kernel("conv", _conv(16, 16)), Kernel("conv", _conv(16, 13))]
    assert nchwc_kernels(kernels, 8) == kernels
    traced = [Kernel("conv", _conv(16, 13), inputs=(-1,))]
    assert nchwc_kernels(traced, 0) == traced


def test_the_block_follows_the_cpu():
    assert nchwc_block(["sse2", "avx", "avx2"], "x86_64") == 8
    assert nchwc_block(["avx2", "avx512f"], "x86_64") == 16
    assert nchwc_block(["neon"], "aarch64") == 0
    assert nchwc_block(["sse2"], "x86_64") == 0


def test_the_tracer_records_the_dataflow_of_a_residual_block():
    """Each kernel names the kernels whose outputs it reads: BN and ReLU fused into a conv pass its output
    on, an identity shortcut passes the block's input."""
    from automl.models.resnet import CifarResNet

    kernels = kernels_for_model(CifarResNet(8, 1, 10, width=8).eval(), INPUT)
    adds = [(i, k) for i, k in enumerate(kernels) if k.type == "eltwise"]
    assert adds
    for i, add in adds:
        assert len(add.inputs) == 2 and all(j < i for j in add.inputs)
        assert kernels[add.inputs[0]].type == "conv"  # the block's second conv
    assert kernels[0].inputs == (-1,)
    first_add = adds[0][0]
    assert kernels[adds[0][1].inputs[1]].type == "conv" and adds[0][1].inputs[1] == 0  # the stem, via identity
    assert kernels[first_add + 1].inputs == (first_add,)  # the next block reads the add's output
