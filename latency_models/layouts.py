"""A runtime's layout steps: which kernels run in a blocked layout, where it reorders, what it fuses.

onnxruntime (fp32, x86) rewrites convolutions into its NCHWc layout (channels in blocks of 8 with AVX2,
16 with AVX-512) when their channel counts allow, and then has to reorder a tensor wherever it passes
between an NCHWc kernel and one that runs plain NCHW. It also folds a residual add (and the ReLU after
it) into the conv that produces one of its operands, but only when both operands are in the layout
that conv runs in: an NCHWc conv whose residual arrives in NCHW leaves the add and the ReLU as nodes
of their own, with a reorder before them, and the block's output stays NCHW, so the next block pays
again. Whether a conv runs NCHWc depends on its own channel counts; what that costs depends on its
neighbours. Timed alone, a kernel cannot show it; summed per kernel, a resnet pruned to a mix of
aligned and unaligned widths was predicted 10-16% fast (resnet56 on the AMD host: 24-26 reorders and
8-18 loose adds in one forward pass, 0.3-0.5 ms of its 3-5 ms).

`nchwc_kernels` replays those rules on a model's kernels and their dataflow (`Kernel.inputs`, recorded
by the tracer): it marks the adds the runtime fuses (`role="fused"`) and adds a `reorder` kernel for
every tensor that changes layout (once per tensor and direction, as the runtime shares them). A device
profile of such a runtime prices the reorders and the fused adds from its whole random networks
(`latency_models.profile`); a test checks the replayed rules against the graph onnxruntime itself
optimises, on zoo models with random policies and on random networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from latency_models.kernels import Kernel

#: parameters of a `reorder` kernel: (elements per sample, direction); direction 0 = into the blocked
#: layout (onnxruntime's ReorderInput), 1 = out of it (ReorderOutput)
REORDER_IN, REORDER_OUT = 0.0, 1.0


def nchwc_block(cpu_flags: Sequence[str], machine: str) -> int:
    """The channel block of onnxruntime's NCHWc layout on a CPU with these flags (MLAS: 16 with AVX-512,
    8 with AVX/AVX2), 0 where it does not use one (other architectures)."""
    if machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 0
    flags = set(cpu_flags)
    if "avx512f" in flags:
        return 16
    return 8 if "avx" in flags or "avx2" in flags else 0


def out_numel(k: Kernel) -> float:
    """Elements per sample of a kernel's output (what a reorder of it moves)."""
    p = k.params
    if k.type == "conv":
        return p[1] * math.ceil(p[4] / p[3]) * math.ceil(p[5] / p[3])
    if k.type == "dwconv":
        return p[0] * math.ceil(p[3] / p[2]) * math.ceil(p[4] / p[2])
    if k.type == "linear":
        return p[0] * p[2]
    if k.type == "pool":
        return p[1]
    if k.type == "matmul":
        return p[0] * p[1] * p[3]
    return p[0]


#: onnxruntime reads an NCHWc tensor into a conv only when the conv's input channels are a multiple of this
#: (or fewer than a block: then it reads NCHW); measured with AVX2 (block 8), unverified with AVX-512
NCHWC_INPUT_ALIGN = 4


def _conv_layout(k: Kernel, block: int) -> tuple[bool, bool]:
    """(whether onnxruntime runs this conv / depthwise conv in NCHWc, whether it reads an NCHWc input).

    Measured on onnxruntime's optimised graphs (tests/test_latency_layouts.py): any output channel count
    runs NCHWc (padded to the block); the input decides. A conv with fewer input channels than a block
    reads NCHW directly; one whose input channels are a multiple of `NCHWC_INPUT_ALIGN` reads NCHWc;
    any other runs plain NCHW. A depthwise conv runs NCHWc when its channels are such a multiple."""
    cin = k.params[0]
    if k.type == "conv" and cin < block:
        return True, False
    aligned = cin % NCHWC_INPUT_ALIGN == 0
    return aligned, aligned


def _channels(k: Kernel) -> float | None:
    """Output channels of a conv-like kernel (None for others)."""
    return k.params[1] if k.type == "conv" else k.params[0] if k.type == "dwconv" else None


def nchwc_kernels(kernels: Sequence[Kernel], block: int) -> list[Kernel]:
    """`kernels` as onnxruntime's NCHWc rewrite runs them with channel block `block` (see the module
    docstring): fused adds marked, reorder kernels appended. Kernels without dataflow (traced before it
    was recorded) are returned as they are."""
    if block <= 0 or not kernels or not any(k.inputs for k in kernels):
        return list(kernels)
    n = len(kernels)
    consumers = [0] * n
    for k in kernels:
        for i in k.inputs:
            if i >= 0:
                consumers[i] += 1
    blocked = [False] * n  # the kernel's output is in NCHWc
    channels: list[float | None] = [_channels(k) for k in kernels]
    out = list(kernels)
    reorders: dict[tuple[int, float], float] = {}

    def as_plain(src: int) -> None:
        if src >= 0 and blocked[src]:
            reorders.setdefault((src, REORDER_OUT), out_numel(kernels[src]))

    def as_blocked(src: int, consumer: Kernel) -> None:
        if src < 0 or not blocked[src]:
            reorders.setdefault((src, REORDER_IN), _in_numel(consumer))

    for i, k in enumerate(kernels):
        if k.type in ("conv", "dwconv") and k.inputs:
            blocked[i], reads_blocked = _conv_layout(k, block)
            for src in k.inputs:
                as_blocked(src, k) if reads_blocked else as_plain(src)
        elif k.type == "eltwise" and len(k.inputs) == 2 and k.params[1] >= 2:
            fused = _fuse_add(kernels, k.inputs, blocked, consumers)
            if fused is None:  # a node of its own, in NCHW
                for src in k.inputs:
                    as_plain(src)
            else:
                conv, other = fused
                blocked[i], channels[i] = blocked[conv], channels[conv]
                if not blocked[conv]:
                    as_plain(other)
                out[i] = Kernel(k.type, k.params, k.layer, k.owner, k.scaled, k.count, k.inputs, "fused")
        elif k.type == "pool" and _blocked_pool(k, [(blocked[s], channels[s]) if s >= 0 else (False, None)
                                                    for s in k.inputs], block):
            blocked[i], channels[i] = True, channels[k.inputs[0]]
            for src in k.inputs:
                as_blocked(src, k)
        else:
            for src in k.inputs:
                as_plain(src)
    for (_, direction), numel in reorders.items():
        out.append(Kernel("reorder", (float(numel), direction)))
    return out


def _blocked_pool(k: Kernel, inputs: Sequence[tuple[bool, float | None]], block: int) -> bool:
    """Whether onnxruntime pools NCHWc: a max / average pool of whole channel blocks does (reordering an
    NCHW input into blocks), a global average pool only when its input is NCHWc already."""
    if len(inputs) != 1 or not inputs[0][1] or inputs[0][1] % block:
        return False
    is_blocked, channels = inputs[0]
    return is_blocked or k.params[1] != channels  # a global pool outputs one value per channel


def _in_numel(k: Kernel) -> float:
    """Elements per sample of a conv's or pool's input."""
    p = k.params
    if k.type == "pool":
        return p[0]
    return p[0] * p[3] * p[4] if k.type == "dwconv" else p[0] * p[4] * p[5]


def _fuse_add(kernels: Sequence[Kernel], inputs: Sequence[int], blocked: list[bool],
              consumers: list[int]) -> tuple[int, int] | None:
    """(the conv an add folds into, the add's other operand), or None when it stays a node.

    A conv can take the add when its output feeds nothing else and no activation follows it; an NCHWc
    conv only when the other operand is NCHWc too (else onnxruntime keeps the add, in NCHW), a plain
    conv with the other operand reordered to NCHW if need be. A blocked candidate is tried first."""
    a, b = inputs
    candidates = []
    for conv, other in ((a, b), (b, a)):
        if conv < 0 or kernels[conv].type != "conv" or consumers[conv] != 1 or kernels[conv].params[7]:
            continue
        candidates.append((conv, other))
    for conv, other in sorted(candidates, key=lambda c: not blocked[c[0]]):
        if blocked[conv]:
            if other >= 0 and blocked[other]:
                return conv, other
        else:
            return conv, other
    return None
