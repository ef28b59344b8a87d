"""Post-training baselines a search must beat: global magnitude, uniform per-layer, and layer-wise
least-squares reconstruction (no fine-tuning).

* `global_magnitude(model, target_mac_ratio, input_shape)`: one magnitude threshold over the weights of
  every prunable layer (unstructured); the threshold is bisected until the policy's effective MACs (from
  `search_spaces.costs`, the one place with the cost formulas) hit the target ratio.
* `uniform(model, scheme, target_mac_ratio, input_shape)`: the same scheme and sparsity on every layer
  that supports it (others stay dense); the sparsity is bisected to the target. Schemes whose density is
  fixed by a parameter (N:M) pick the pair whose MAC ratio is closest to the target instead.
  `uniform_channel_within(space, fits)` scans the channel sparsity instead, up from zero,
  until a budget check passes (a search's first candidate).
* `reconstruct(pruned, dense, calib)`: OBS / OBC-style layer-wise reconstruction. Layer by layer, in
  execution order, the kept weights of each row are re-solved by least squares so that the pruned layer,
  fed the *pruned* model's inputs, reproduces the *dense* layer's output on the dense model's inputs:
  ``min_w ||W_dense X_dense - w_S X_pruned,S||^2``  ->  ``w_S = (H_SS + lambda I)^-1 C_S``,
  with ``H = X_p X_p^T`` and ``C = X_p (W_dense X_dense)^T`` accumulated over calibration batches.
  Using the pruned model's inputs lets each layer absorb the error of the layers before it (as OBC and
  SparseGPT do). The support S (the mask) is kept, so every scheme's structure survives. Works for every
  mask scheme and for layers whose *inputs* were physically channel-pruned but whose outputs were not
  (AMC / ThiNet's least-squares channel reconstruction); layers whose own output channels were removed
  and grouped/depthwise convs are left as they are (listed in the result).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from automl.models.layers import prunable_layers
from automl.policy import CompressionPolicy, LayerDecision, PolicyError
from search_spaces.costs import cost_report
from search_spaces.space import SearchSpace, SpaceConfig


class BaselineError(PolicyError):
    """A baseline cannot be built as asked (unknown scheme, unreachable target)."""


# ------------------------------------------------------------------------------ target-ratio policies
def _check_ratio(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise BaselineError(f"target_mac_ratio must lie in (0, 1], got {target}", field_name="target_mac_ratio")


def _bisect(make_policy, space: SearchSpace, target: float, lo: float, hi: float, iters: int = 30
            ) -> CompressionPolicy:
    """Largest-ratio-not-below... : find x in [lo, hi] whose policy's MAC ratio is closest to target.

    `make_policy(x)` must give a MAC ratio that does not increase with x.
    """
    best, best_err = None, float("inf")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        policy = make_policy(mid)
        ratio = cost_report(space, policy).mac_ratio
        if abs(ratio - target) < best_err:
            best, best_err = policy, abs(ratio - target)
        if ratio > target:
            lo = mid
        else:
            hi = mid
    for edge in (lo, hi):
        policy = make_policy(edge)
        err = abs(cost_report(space, policy).mac_ratio - target)
        if err < best_err:
            best, best_err = policy, err
    return best


def _with_ratio(space: SearchSpace, policy: CompressionPolicy, extra: Mapping[str, object]) -> CompressionPolicy:
    report = cost_report(space, policy)
    meta = {**dict(policy.metadata), **extra, "mac_ratio": round(report.mac_ratio, 4)}
    return CompressionPolicy(policy.model, policy.layers, policy.default, meta)


@torch.no_grad()
def global_magnitude(model: nn.Module, target_mac_ratio: float, input_shape: tuple[int, int, int], *,
                     model_name: str = "model", max_sparsity: float = 0.99) -> CompressionPolicy:
    """Unstructured pruning with one global |w| threshold, set so effective MACs / dense MACs = target."""
    _check_ratio(target_mac_ratio)
    space = SearchSpace.from_model(model, model_name, input_shape)
    modules = dict(model.named_modules())
    mags = {name: modules[name].weight.detach().abs().flatten().sort().values for name in space.layer_names()}
    top = max(float(m[-1]) for m in mags.values())

    def make(threshold: float) -> CompressionPolicy:
        layers = {}
        for name, m in mags.items():
            s = min(float(torch.searchsorted(m, threshold)) / m.numel(), max_sparsity)
            if s > 0:
                layers[name] = LayerDecision("unstructured", sparsity=s)
        return CompressionPolicy(model_name, layers)

    policy = _bisect(make, space, target_mac_ratio, 0.0, top)
    space.validate(policy)
    return _with_ratio(space, policy, {"baseline": "global_magnitude"})


def uniform(model: nn.Module, scheme: str, target_mac_ratio: float, input_shape: tuple[int, int, int], *,
            model_name: str = "model", config: SpaceConfig | None = None, nm: tuple[int, int] | None = None,
            block_n: int | None = None, block: tuple[int, int] | None = None, align: int | None = None
            ) -> CompressionPolicy:
    """The same `scheme` on every layer that offers it, at the sparsity that meets the MAC target.

    Structural parameters default to the space's first option for each layer (override with `nm`,
    `block_n`, `block`, `align`; a value a layer cannot take falls back to that layer's first option).
    """
    _check_ratio(target_mac_ratio)
    space = SearchSpace.from_model(model, model_name, input_shape, config)
    eligible = _eligible(space, scheme)

    def choices(lc, sparsity: float, pair: tuple[int, int] | None = None) -> dict[str, object]:
        c: dict[str, object] = {"scheme": scheme}
        if scheme == "nm":
            c["nm"] = list(pair if pair in lc.nm else lc.nm[0])
            return c
        c["sparsity"] = sparsity
        if scheme == "block1xn":
            c["block_n"] = block_n if block_n in lc.block_n else lc.block_n[0]
        if scheme == "block_punched":
            c["block"] = list(block if block in lc.blocks else lc.blocks[0])
        if scheme == "channel":
            c["align"] = align if align in lc.aligns else lc.aligns[0]
        return c

    if scheme == "nm":
        pairs = [nm] if nm is not None else sorted({p for lc in eligible for p in lc.nm})
        candidates = [space.decode({lc.layer.name: choices(lc, 0.0, p) for lc in eligible}) for p in pairs]
        policy = min(candidates, key=lambda p: abs(cost_report(space, p).mac_ratio - target_mac_ratio))
    else:
        lo, hi = _common_sparsity_range(eligible)
        policy = _bisect(lambda s: space.decode({lc.layer.name: choices(lc, s) for lc in eligible}),
                         space, target_mac_ratio, lo, hi)
    return _with_ratio(space, policy, {"baseline": f"uniform_{scheme}"})


def _eligible(space: SearchSpace, scheme: str) -> list:
    """The space's layers that offer `scheme`; a BaselineError naming the offered schemes when none does."""
    eligible = [lc for lc in space.layers if scheme in lc.schemes]
    if not eligible:
        offered = sorted({s for lc in space.layers for s in lc.schemes})
        raise BaselineError(f"no layer of this model offers scheme '{scheme}'; offered: {offered}",
                            field_name="scheme")
    return eligible


def _common_sparsity_range(eligible: list) -> tuple[float, float]:
    """The sparsities every one of `eligible` can take: (largest minimum, smallest maximum)."""
    return max(min(lc.sparsities) for lc in eligible), min(max(lc.sparsities) for lc in eligible)


def uniform_channel_within(space: SearchSpace, fits, *, align: int = 8, step: float = 0.01
                           ) -> CompressionPolicy | None:
    """Uniform channel pruning at the lowest sparsity (on a `step` grid) whose policy `fits(policy)` (a
    budget check), kept channels rounded to `align` where a layer offers it. None when none fits.

    Why: a search's honest reference point. Evaluated as one of its candidates, it is ranked like the
    agent's own, so a search does not recommend a policy its own ranking puts under the obvious baseline.
    The sparsity is scanned, not bisected on a MAC target: with kept channels rounded, the MAC ratio moves
    in steps, and a bisection on the target can settle far under the budget. Takes the search's own space
    (no second trace of the model).
    """
    eligible = _eligible(space, "channel")
    lo, hi = _common_sparsity_range(eligible)
    n = max(1, int(round((hi - lo) / step)))
    for i in range(n + 1):
        sparsity = lo + (hi - lo) * i / n
        policy = space.decode({lc.layer.name: {"scheme": "channel", "sparsity": sparsity,
                                               "align": align if align in lc.aligns else lc.aligns[0]}
                               for lc in eligible})
        if fits(policy):
            return _with_ratio(space, policy, {"baseline": "uniform_channel"})
    return None


# ------------------------------------------------------------------------------ reconstruction
@dataclass
class ReconstructionResult:
    reconstructed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why
    rel_error_before: dict[str, float] = field(default_factory=dict)  # ||Y_dense - Y_pruned|| / ||Y_dense||
    rel_error_after: dict[str, float] = field(default_factory=dict)


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's GEMM input as (cols, samples): im2col for convs, rows of tokens for linear layers."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # N, C*k*k, L
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)
    return x.reshape(-1, x.shape[-1]).T


class _InputCaptured(Exception):
    """Raised by the capture hook: the layer's input is recorded, the rest of the forward is not needed."""


def _capture_inputs(model: nn.Module, name: str, calib: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The inputs `name` receives over `calib`, batch by batch (its first call per batch). The forward stops
    at the layer: an early layer costs a fraction of a full forward."""
    module = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def hook(m, inp):
        seen.append(inp[0].detach())
        raise _InputCaptured

    handle = module.register_forward_pre_hook(hook)
    try:
        for i in range(0, len(calib), batch_size):
            try:
                model(calib[i:i + batch_size])
            except _InputCaptured:
                pass
    finally:
        handle.remove()
    return seen


@torch.no_grad()
def reconstruct(pruned: nn.Module, dense: nn.Module, calib: torch.Tensor, *,
                masks: Mapping[str, torch.Tensor] | None = None, damp: float = 0.01,
                batch_size: int = 128) -> ReconstructionResult:
    """Re-solve the kept weights of every reconstructible layer of `pruned` in place (see module docstring).

    `masks` (layer -> keep mask, e.g. `CompressedModel.masks`) fixes the support; without a mask the
    support is the weights that are non-zero now. `calib`: a few hundred model inputs (no labels needed).
    """
    if calib is None or len(calib) == 0:
        raise BaselineError("reconstruction needs calibration inputs (a few hundred images)", field_name="calib")
    was = (pruned.training, dense.training)
    pruned.eval()
    dense.eval()
    result = ReconstructionResult()
    names = [info.name for info in prunable_layers(dense, tuple(calib.shape[1:]))]
    try:
        for name in names:
            p_mod, d_mod = pruned.get_submodule(name), dense.get_submodule(name)
            why = _why_not(p_mod, d_mod)
            if why:
                result.skipped[name] = why
                continue
            xs_p = _capture_inputs(pruned, name, calib, batch_size)
            xs_d = _capture_inputs(dense, name, calib, batch_size)
            w_d = d_mod.weight.reshape(d_mod.weight.shape[0], -1)
            w_p = p_mod.weight.reshape(p_mod.weight.shape[0], -1)
            has_bias = p_mod.bias is not None
            cols = w_p.shape[1] + int(has_bias)
            h = torch.zeros(cols, cols, dtype=torch.float64)
            c = torch.zeros(cols, w_d.shape[0], dtype=torch.float64)
            err_before, norm = 0.0, 0.0
            for x_p, x_d in zip(xs_p, xs_d, strict=True):
                a_p, a_d = _columns(p_mod, x_p), _columns(d_mod, x_d)
                y_d = w_d @ a_d  # dense output without bias (the bias is re-fit with the kept weights)
                if has_bias:
                    y_d = y_d + d_mod.bias[:, None]
                    a_p = torch.cat([a_p, torch.ones(1, a_p.shape[1])])
                    y_before = torch.cat([w_p, p_mod.bias[:, None]], 1) @ a_p
                else:
                    y_before = w_p @ a_p
                a64 = a_p.double()
                h += a64 @ a64.T
                c += a64 @ y_d.double().T
                err_before += float((y_d - y_before).pow(2).sum())
                norm += float(y_d.pow(2).sum())
            support = (masks[name].reshape(w_p.shape) != 0) if masks is not None and name in masks else w_p != 0
            if has_bias:
                support = torch.cat([support, torch.ones(w_p.shape[0], 1, dtype=torch.bool)], 1)
            lam = damp * float(h.diagonal().mean()) + 1e-8
            new = torch.zeros(w_p.shape[0], cols, dtype=torch.float64)
            for r in range(w_p.shape[0]):
                s = support[r].nonzero().flatten()
                if len(s) == 0:
                    continue
                hs = h[s][:, s] + lam * torch.eye(len(s), dtype=torch.float64)
                new[r, s] = torch.linalg.solve(hs, c[s, r])
            # error after, from the normal equations: ||y||^2 - 2 w.c + w H w  (exact, no second pass)
            y2 = norm
            err_after = y2 - 2 * float((new * c.T).sum()) + float(((new @ h) * new).sum())
            if err_after >= err_before:  # ill-conditioned layer: keep what we had
                result.skipped[name] = "least squares did not reduce the output error"
                continue
            p_mod.weight.copy_(new[:, :w_p.shape[1]].reshape(p_mod.weight.shape).to(p_mod.weight.dtype))
            if has_bias:
                p_mod.bias.copy_(new[:, -1].to(p_mod.bias.dtype))
            result.reconstructed.append(name)
            result.rel_error_before[name] = (err_before / max(norm, 1e-12)) ** 0.5
            result.rel_error_after[name] = (max(err_after, 0.0) / max(norm, 1e-12)) ** 0.5
    finally:
        pruned.train(was[0])
        dense.train(was[1])
    return result


def _why_not(p_mod: nn.Module, d_mod: nn.Module) -> str | None:
    if type(d_mod) not in (nn.Conv2d, nn.Linear) or not isinstance(p_mod, (nn.Conv2d, nn.Linear)):
        return "not a plain Conv2d / Linear"
    if isinstance(d_mod, nn.Conv2d) and (d_mod.groups != 1 or p_mod.groups != 1):
        return "grouped / depthwise conv (rows see different inputs; not handled)"
    if p_mod.weight.shape[0] != d_mod.weight.shape[0]:
        return "output channels were physically removed (no dense target row per kept channel)"
    return None
