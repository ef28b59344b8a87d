"""Kernel samples: small modules that run exactly one kernel, and the configurations the profiler measures.

Configurations are drawn two ways, as nn-Meter does: half around the kernels of the zoo models (with
their channel counts cut by a random fraction and rounded to a random multiple 1/2/4/8/16, so counts
land both on and off the multiples of 8), half uniformly over a wide range. Some conv/linear samples
carry masked (zeroed) weights at the dense shape: where a runtime has no sparse kernel, they time like
dense ones, and the predictor learns exactly that.

For a runtime with block-sparse kernels (``structured=True``, sparse-cpu) masks are what the policies
produce: most conv/linear samples are pruned, by the engine's own schemes (unstructured, 1xN blocks of
2/4/8 along output channels, block-punched with row blocks of 4, N:M, 3x3 patterns) at densities from
0.05 to 1, with the block height recorded, so the profile learns where, and by how much, each structure
beats the dense kernel. The other runtimes' sampling is unchanged (same draws for the same seed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from latency_models.kernels import (
    SCHEME_CODES,
    Kernel,
    decision_block,
    kernel_block,
    trace_kernels,
    with_block,
)

HW_CHOICES = (2, 4, 7, 8, 14, 16, 28, 32)
ALIGNS = (1, 1, 1, 2, 4, 8, 8, 16)
MAX_MACS = 40e6


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, bn: bool, act: bool, density: float):
        super().__init__()
        pad = 0 if (k == stride and k > 1 and k % 2 == 0) else k // 2
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()
        _mask(self.conv.weight, density)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _DW(nn.Module):
    def __init__(self, c: int, k: int, stride: int, act: bool):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Linear(nn.Module):
    def __init__(self, fin: int, fout: int, act: bool, density: float):
        super().__init__()
        self.fc = nn.Linear(fin, fout)
        self.act = nn.GELU() if act else nn.Identity()
        _mask(self.fc.weight, density)

    def forward(self, x):
        return self.act(self.fc(x))


class _Eltwise(nn.Module):
    def __init__(self, numel: int, n_inputs: int, act: bool):
        super().__init__()
        self.register_buffer("c", torch.randn(1, numel))
        self.n, self.act = n_inputs, act

    def forward(self, x):
        y = x + self.c if self.n >= 2 else x * 0.5
        return torch.relu(y) if self.act else y


class _Pool(nn.Module):
    def __init__(self, global_pool: bool):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.pool(x)


class _Norm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x)


class _Softmax(nn.Module):
    def forward(self, x):
        return x.softmax(dim=-1)


class _Matmul(nn.Module):
    def __init__(self, batch: int, k: int, n: int):
        super().__init__()
        self.register_buffer("b", torch.randn(1, batch, k, n))

    def forward(self, x):
        return x @ self.b


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class _Glue(nn.Module):
    """One glue op (`latency_models.kernels`): a view (flatten) or a copy (concatenation)."""

    def __init__(self, copies: bool):
        super().__init__()
        self.copies = copies

    def forward(self, x):
        return torch.cat((x, x), 1) if self.copies else x.flatten(1)


class _Baseline(nn.Module):
    """The smallest model: what a runtime costs per call before any kernel (subtracted from every sample).

    `identity`: no op at all (profiles of version 3), so a sample keeps the cost of every op it calls; in
    torch eager each op is a Python and dispatcher call (~2 us), which a one-op baseline took off every
    sample, and so off every kernel of a predicted model.
    """

    def __init__(self, identity: bool = False):
        super().__init__()
        self.identity = identity

    def forward(self, x):
        return x if self.identity else torch.relu(x)


def _mask(w: torch.Tensor, density: float) -> None:
    """Keep a random `density` share of `w`. Exact zeros of the random init (about one weight in 10^6
    is drawn as 0.0) are nudged off zero first, so a sample holds exactly the density its kernel claims
    and every kept block of a structured mask is all non-zero."""
    with torch.no_grad():
        w.masked_fill_(w == 0, 1e-6)
        if density < 1.0:
            w.mul_((torch.rand_like(w) < density).float())


# ------------------------------------------------------------------------------ structured masks
#: scheme mix of conv/linear samples for runtimes with block-sparse kernels (pattern: 3x3 convs only)
STRUCTURED_MIX = (("dense", 0.3), ("unstructured", 0.24), ("block1xn", 0.26), ("block_punched", 0.12),
                  ("nm", 0.05), ("pattern", 0.03))
#: 1xN block heights drawn for block1xn samples (4 and 8 run as 1x4 on sparse-cpu; 2 has its own kernel)
BLOCK_N_MIX = ((4, 0.45), (8, 0.35), (2, 0.2))
PUNCH_ROWS = 4
SPARSITY_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95)
PUNCH_COLS = (4, 8, 16, 9)
_CODE_SCHEMES = {code: name for name, code in SCHEME_CODES.items() if name not in ("dense", "channel")}


def _punch_cols(gemm_cols: int) -> int | None:
    """The column count of a block-punched sample's blocks: the first of `PUNCH_COLS` dividing the GEMM width."""
    return next((c for c in PUNCH_COLS if gemm_cols % c == 0), None)


def _decision(code: int, density: float, block: float, gemm_cols: int):
    """The engine decision a structured sample's mask comes from, rebuilt from its kernel parameters."""
    from automl.policy import LayerDecision

    scheme = _CODE_SCHEMES.get(int(code), "unstructured")
    if scheme == "nm":
        return LayerDecision("nm", n=max(1, round(density * 4)), m=4)
    if scheme == "pattern":
        return LayerDecision("pattern", sparsity=min(0.999, max(0.0, 1.0 - density * 9 / 4)))
    sparsity = min(0.999, max(0.0, 1.0 - density))
    if scheme == "block1xn":
        return LayerDecision("block1xn", sparsity=sparsity, n=int(block))
    if scheme == "block_punched":
        return LayerDecision("block_punched", sparsity=sparsity, block=(int(block), _punch_cols(gemm_cols)))
    return LayerDecision("unstructured", sparsity=sparsity)


def structured_mask(weight: torch.Tensor, k: Kernel) -> torch.Tensor:
    """The keep-mask of a structured conv/linear sample: the engine's scheme mask (`search_spaces.schemes`)
    for the kernel's scheme code, density and block height, on this (random) weight."""
    from search_spaces.schemes import get_scheme

    i = 8 if k.type == "conv" else 4
    density, code = float(k.params[i]), int(k.params[i + 1])
    if density >= 1.0 or code == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    decision = _decision(code, density, kernel_block(k), int(weight[0].numel()))
    return get_scheme(decision.scheme).mask(weight, decision)


def _structured_sparsity(rng: random.Random, kind: str, cin: int, cout: int,
                         ks: int) -> tuple[int, int, float, float, int]:
    """(cin, cout, density, scheme code, block height) of one structured sample; channels are rounded
    where a scheme needs it (1xN blocks need n | cout, punched blocks rows | cout and cols | GEMM width)."""
    from automl.policy import LayerDecision
    from search_spaces.schemes import get_scheme

    names, weights = zip(*STRUCTURED_MIX, strict=True)
    scheme = rng.choices(names, weights)[0]
    if scheme == "dense":
        return cin, cout, 1.0, 0.0, 1
    if scheme == "pattern" and (kind != "conv" or ks != 3):
        scheme = "unstructured"
    if scheme == "block_punched" and _punch_cols(cin * ks * ks) is None:
        if cin >= 4:
            cin = max(4, int(round(cin / 4)) * 4)
        else:
            scheme = "block1xn"
    if scheme == "nm" and (cin * ks * ks) % 4:
        scheme = "unstructured"
    # half on the sparsities policies use (the space's grid, where sparse-cpu's thresholds also lie), half
    # uniform; block schemes from 15%: below 10% their structure is not recorded (`decision_block`)
    lo = 0.15 if scheme in ("block1xn", "block_punched") else 0.05
    sparsity = rng.choice([g for g in SPARSITY_GRID if g >= lo]) if rng.random() < 0.5 else rng.uniform(lo, 0.95)
    if scheme == "block1xn":
        n = rng.choices(*zip(*BLOCK_N_MIX, strict=True))[0]
        cout = max(n, int(round(cout / n)) * n)
        decision = LayerDecision("block1xn", sparsity=sparsity, n=n)
    elif scheme == "block_punched":
        cout = max(PUNCH_ROWS, int(round(cout / PUNCH_ROWS)) * PUNCH_ROWS)
        decision = LayerDecision("block_punched", sparsity=sparsity,
                                 block=(PUNCH_ROWS, _punch_cols(cin * ks * ks)))
    elif scheme == "nm":
        decision = LayerDecision("nm", n=rng.choice((1, 2)), m=4)
    else:
        decision = LayerDecision(scheme, sparsity=sparsity)
    cols = cin * ks * ks
    density = get_scheme(scheme).density(cout, cols, (ks, ks), decision)
    block = decision_block(scheme, decision.n, decision.block, density)
    return cin, cout, density, float(SCHEME_CODES[scheme]), block


def sample_module(k: Kernel, batch: int, rng: random.Random,
                  structured: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """A module that runs kernel `k` alone, with its input shape (batch first).

    `structured`: conv/linear weights get the engine's mask for the kernel's scheme code and block height
    (`structured_mask`) instead of a random one of its density.
    """
    p = [int(v) if float(v).is_integer() else v for v in k.params]
    if k.type == "conv":
        cin, cout, ks, stride, h, w, bn, act, density = p[:9]
        module = _Conv(cin, cout, ks, stride, bool(bn), bool(act), 1.0 if structured else float(density))
        if structured:
            with torch.no_grad():
                module.conv.weight.mul_(structured_mask(module.conv.weight, k))
        return module, (batch, cin, h, w)
    if k.type == "dwconv":
        c, ks, stride, h, w, act = p[:6]
        return _DW(c, ks, stride, bool(act)), (batch, c, h, w)
    if k.type == "linear":
        tokens, fin, fout, act, density = p[:5]
        shape = (batch, fin) if tokens == 1 else (batch, tokens, fin)
        module = _Linear(fin, fout, bool(act), 1.0 if structured else float(density))
        if structured:
            with torch.no_grad():
                module.fc.weight.mul_(structured_mask(module.fc.weight, k))
        return module, shape
    if k.type == "eltwise":
        numel, n_in, act = p[:3]
        return _Eltwise(numel, n_in, bool(act)), (batch, numel)
    if k.type == "pool":
        numel_in, numel_out = p[:2]
        if numel_out * 4 > numel_in:  # global pool: numel_out channels
            hw = max(1, numel_in // numel_out)
            side = int(round(math.sqrt(hw)))
            return _Pool(True), (batch, numel_out, side, max(1, hw // side))
        side = 14 if numel_in >= 196 else 4
        c = max(1, round(numel_in / side**2))
        return _Pool(False), (batch, c, side, side)
    if k.type == "norm":
        numel, dim = p[:2]
        return _Norm(dim), (batch, max(1, numel // dim), dim)
    if k.type == "softmax":
        numel = p[0]
        return _Softmax(), (batch, max(1, numel // 50), 50)
    if k.type == "matmul":
        b, m, kk, n = p[:4]
        return _Matmul(b, kk, n), (batch, b, m, kk)
    if k.type == "transpose":
        numel = p[0]
        a = 50 if numel % 50 == 0 else 1
        return _Transpose(), (batch, a, numel // a)
    if k.type == "glue":
        numel, copies = p[:2]
        n_in = max(1, numel // 2) if copies else numel
        a = 50 if n_in % 50 == 0 else 1
        return _Glue(bool(copies)), (batch, a, n_in // a)
    raise ValueError(f"no sample module for kernel type '{k.type}'")


def baseline_module(batch: int, identity: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    return _Baseline(identity), (batch, 1)


def measured_params(k: Kernel, module: nn.Module, shape: Sequence[int]) -> Kernel:
    """The kernel as the sample module really runs it (pool/transposes approximate their sizes)."""
    if k.type == "pool":
        numel_in = int(math.prod(shape[1:]))
        with torch.no_grad():
            out = module(torch.zeros(1, *shape[1:]))
        return Kernel("pool", (float(numel_in), float(out.numel())))
    if k.type == "transpose":
        return Kernel("transpose", (float(math.prod(shape[1:])),))
    if k.type == "glue":
        return Kernel("glue", (float(math.prod(shape[1:]) * (2 if k.params[1] else 1)), float(k.params[1])))
    return k


# ------------------------------------------------------------------------------ configurations
@lru_cache(maxsize=4)
def zoo_prior(input_shapes: tuple[tuple[int, int, int], ...] = ((1, 28, 28), (3, 32, 32))) -> tuple[Kernel, ...]:
    """Kernels of every zoo model at typical input sizes: where real configurations live."""
    from automl.models import ZOO, build_model

    out: list[Kernel] = []
    for shape in input_shapes:
        for name in ZOO:
            model = build_model(name, shape[0], 10, shape[1])
            out.extend(trace_kernels(model, shape))
    return tuple(out)


def _cut(c: float, rng: random.Random) -> int:
    frac = rng.choice((1.0, rng.uniform(0.05, 1.0), rng.uniform(0.3, 1.0)))
    align = rng.choice(ALIGNS)
    kept = max(1, int(round(c * frac)))
    if align > 1:
        kept = max(align, int(round(kept / align)) * align)
    return kept


def _bits_density(rng: random.Random) -> tuple[float, float]:
    if rng.random() < 0.15:
        return round(rng.uniform(0.1, 0.9), 3), float(rng.choice((1, 2)))
    return 1.0, 0.0


def random_kernel(rng: random.Random, prior: Sequence[Kernel], types: Sequence[str],
                  structured: bool = False) -> Kernel:
    """One configuration: around a zoo kernel (cut + random alignment) or uniform, never over MAX_MACS.

    `structured` (runtimes with block-sparse kernels): conv/linear sparsity, scheme and block height are
    drawn by `_structured_sparsity` instead of the plain 15% of random masks.
    """
    pool = [k for k in prior if k.type in types]
    if not pool:
        raise ValueError(f"no zoo kernel of types {list(types)} to sample around")
    for _ in range(50):
        base = rng.choice(pool)
        p = list(base.params)
        uniform = rng.random() < 0.4
        if base.type == "conv":
            if uniform:
                p[0] = float(rng.choice((1, 3, rng.randint(1, 64), rng.randint(1, 512))))
                p[1] = float(rng.choice((rng.randint(1, 64), rng.randint(1, 512), rng.randint(1, 1280))))
                p[2] = float(rng.choice((1, 1, 3, 3, 3, 5)))
                p[3] = float(rng.choice((1, 1, 2)))
                p[4] = p[5] = float(rng.choice(HW_CHOICES))
                p[6] = float(rng.random() < 0.9)
                p[7] = float(rng.random() < 0.6)
            else:
                p[0] = float(p[0] if p[0] <= 3 else _cut(p[0], rng))
                p[1] = float(_cut(p[1], rng))
                p[7] = float(rng.random() < 0.6) if rng.random() < 0.3 else p[7]
            if structured:
                cin, cout, p[8], p[9], block = _structured_sparsity(rng, "conv", int(p[0]), int(p[1]), int(p[2]))
                p[0], p[1] = float(cin), float(cout)
                p = list(with_block("conv", p, block))
            else:
                p[8], p[9] = _bits_density(rng)
            macs = p[0] * p[1] * p[2] ** 2 * (p[4] / p[3]) * (p[5] / p[3])
        elif base.type == "dwconv":
            p[0] = float(_cut(p[0], rng) if not uniform else rng.randint(1, 1024))
            if uniform:
                p[3] = p[4] = float(rng.choice(HW_CHOICES))
                p[2] = float(rng.choice((1, 2)))
            macs = p[0] * p[1] ** 2 * p[3] * p[4]
        elif base.type == "linear":
            if uniform:
                p[0] = float(rng.choice((1, 1, 17, 50, 65)))
                p[1], p[2] = float(rng.randint(1, 1536)), float(rng.randint(1, 1024))
                p[3] = float(rng.random() < 0.4)
            else:
                p[1], p[2] = float(_cut(p[1], rng)), float(_cut(p[2], rng))
            if structured:
                fin, fout, p[4], p[5], block = _structured_sparsity(rng, "linear", int(p[1]), int(p[2]), 1)
                p[1], p[2] = float(fin), float(fout)
                p = list(with_block("linear", p, block))
            else:
                p[4], p[5] = _bits_density(rng)
            macs = p[0] * p[1] * p[2]
        elif base.type in ("eltwise", "softmax", "transpose", "norm"):
            scale = rng.uniform(0.05, 1.5)
            if base.type == "norm":
                p[1] = float(_cut(p[1], rng))
                p[0] = float(max(1, round(p[0] / base.params[1] * rng.uniform(0.5, 1.2))) * p[1])
            else:
                p[0] = float(max(1, int(p[0] * scale)))
                if base.type == "transpose" and p[0] % 50:
                    p[0] = float(max(50, round(p[0] / 50) * 50))
            if base.type == "eltwise" and rng.random() < 0.3:
                p[2] = float(1 - p[2])
            macs = p[0]
        elif base.type == "glue":
            p[0] = float(max(1, int(p[0] * rng.uniform(0.05, 1.5))))
            if rng.random() < 0.3:
                p[1] = float(1 - p[1])
            macs = p[0]
        elif base.type == "pool":
            scale = rng.uniform(0.05, 1.2)
            p[0] = float(max(4, int(p[0] * scale)))
            p[1] = float(max(1, int(p[1] * scale)))
            macs = p[0]
        elif base.type == "matmul":
            p[2] = float(_cut(p[2], rng))
            p[3] = float(_cut(p[3], rng)) if p[3] < 60 and p[3] != p[1] else p[3]
            macs = p[0] * p[1] * p[2] * p[3]
        else:
            continue
        if macs <= MAX_MACS:
            return Kernel(base.type, tuple(p))
    raise RuntimeError(f"could not draw a kernel configuration of types {list(types)} under {MAX_MACS:.0f} MACs")


def channel_sweep(channels: Sequence[int] = tuple(range(56, 73)), hw: int = 14, k: int = 3) -> list[Kernel]:
    """c->c 3x3 convs across a multiple of 8: the step a predictor must reproduce (GUIDE §2)."""
    return [Kernel("conv", (float(c), float(c), float(k), 1.0, float(hw), float(hw), 1.0, 1.0, 1.0, 0.0, 32.0, 32.0))
            for c in channels]


# ------------------------------------------------------------------------------ composite networks
#: the zoo's resnets (depth, width) and vgg8's widths: never drawn as random networks (they are what the
#: latency benchmark predicts)
_ZOO_RESNETS = {(20, 16), (56, 16)}
_ZOO_VGG = (32, 64, 128)


def random_network(rng: random.Random) -> tuple[nn.Module, tuple[int, int, int]]:
    """A random-width network of one of the zoo's block families, for the context calibration.

    Kernels timed alone miss what a runtime does between them (layout reorders kept across a chain of
    convs, ops fused across kernels, weights that are no longer in cache, glue such as concat/slice):
    whole random networks measured once let the profile learn a per-kernel-type correction. Widths (half
    of the time multiples of 8, as designed networks have them), depths (resnets of 8-56 layers, whose
    weights range from kilobytes to beyond the cache) and stage repeats are drawn at random, so these are
    not the zoo's models; half of them are then pruned the way policies prune (`_randomly_pruned`).
    """
    from automl.models.mobilenetv2 import CIFAR_SETTINGS, MobileNetV2
    from automl.models.resnet import CifarResNet
    from automl.models.vgg import VGG
    from automl.models.vit import VisionTransformer

    shape = rng.choice(((1, 28, 28), (3, 32, 32)))
    family = rng.choice(("resnet", "vgg", "mobilenet", "vit"))
    aligned = rng.random() < 0.5  # designed widths are multiples of 8; pruning (below) unaligns them

    def width(lo: int, hi: int) -> int:
        w = rng.randint(lo, hi)
        return max(8, round(w / 8) * 8) if aligned else w

    if family == "resnet":
        w = width(3, 24)
        depths = [d for d in (8, 14, 20, 32, 44, 56) if (d, w) not in _ZOO_RESNETS]
        model = CifarResNet(rng.choice(depths), shape[0], 10, width=w)
    elif family == "vgg":
        a, b, c = (width(4, 160) for _ in range(3))
        if (a, b, c) == _ZOO_VGG:
            c += 8
        model = VGG((a, a, "M", b, b, "M", c, c, "M"), shape[0], 10, hidden=rng.randint(16, 320))
    elif family == "mobilenet":
        stages = CIFAR_SETTINGS if rng.random() < 0.5 else CIFAR_SETTINGS[:-1]
        settings = tuple((t, c, rng.randint(1, max(1, n)), s) for t, c, n, s in stages)
        model = MobileNetV2(shape[0], 10, width_mult=rng.uniform(0.2, 0.8), settings=settings,
                            last_channels=rng.choice((320, 640, 1280)))
    else:
        heads = rng.choice((1, 2, 4))
        dim = heads * rng.randint(4, 24)
        model = VisionTransformer(shape[0], 10, image_size=shape[1], dim=dim, depth=rng.randint(1, 4),
                                  heads=heads, mlp_dim=rng.randint(16, 256))
    if rng.random() < 0.5:
        model = _randomly_pruned(model, shape, rng)
    return model.eval(), shape


def _randomly_pruned(model: nn.Module, shape: tuple[int, int, int], rng: random.Random) -> nn.Module:
    """Prune a random network layer by layer as policies do: mostly channels (random ratio and align
    1..16, so chains mix aligned and unaligned counts), some layers masked unstructured or N:M at their
    dense shape (their density is read off the weights)."""
    try:
        from search_spaces import SearchSpace, apply_policy
    except ImportError:  # the compression engine is optional here
        return model
    try:
        space = SearchSpace.from_model(model, "random-network", shape)
        choices = {}
        for lc in space.layers:
            u = rng.random()
            if "channel" in lc.schemes and u < 0.6:
                choices[lc.layer.name] = {"scheme": "channel", "align": rng.choice(lc.aligns),
                                          "sparsity": rng.choice([s for s in lc.sparsities if 0 < s <= 0.8] or [0.0])}
            elif "unstructured" in lc.schemes and u < 0.7:
                choices[lc.layer.name] = {"scheme": "unstructured",
                                          "sparsity": rng.choice([s for s in lc.sparsities if s > 0] or [0.0])}
            elif "nm" in lc.schemes and lc.nm and u < 0.75:
                choices[lc.layer.name] = {"scheme": "nm", "nm": list(rng.choice(lc.nm))}
        return apply_policy(model, space.decode(choices), torch.zeros(1, *shape)).model
    except Exception:  # a random width the pruner cannot honour: keep the network as it is
        return model
