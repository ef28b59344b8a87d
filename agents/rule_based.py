"""`rule_based`: the seed's rule-based scheme mapping, then sparsity spread by latency sensitivity.

Step 1, scheme per layer from its kind and shape (Pruning-scheme mapping, rule-based branch):
  conv3x3 -> pattern; conv1x1 / linear / attention -> block_punched with a block whose rows are the
  device's vector width (AVX2: 8 fp32 lanes) and whose columns follow the layer's input size, else
  1xN blocks with N = vector width; depthwise -> channel (or dense); other kernels -> channel.
  When the latency predictor is the profile of a runtime with block-sparse kernels (``profile.structured``:
  sparse-cpu), the rule does not assume: each layer takes the fine-grained option (unstructured, N:M,
  pattern, 1xN blocks, block-punched; any block size the space offers) the profile predicts fastest
  with half of its weights kept (`PROBE_SPARSITY`); options within `TIE` of the fastest count as equal,
  and then the rule's own choice, else the finest-grained one, wins (fewer weights pruned together
  cost less accuracy).
  When a latency predictor is given and says the chosen scheme saves no time on this runtime (stock
  CPU runtimes gain nothing from fine-grained sparse convolutions), the layer falls back to the
  option that does save the most, preferring channel pruning aligned to the vector width.
Step 2, sparsity: every layer gets ``t * w_i`` (snapped to the grid), where ``w_i`` is the layer's
  latency sensitivity (ms saved at the probe sparsity, from the predictor) or its MAC share when no
  predictor is given; the smallest ``t`` that meets the budget is found by bisection.
Bit-widths: 8 bits where the space offers it (int8 kernels are what CPUs accelerate), else float; float
  on a block-sparse runtime's profile (sparse-cpu's kernels are fp32: bits would cost accuracy for nothing,
  and `automl apply --runtime sparse-cpu` refuses them).

There is no search cost: the first proposal is the rule's policy. Later proposals (when asked for
more) jitter the sensitivities with the agent's seeded generator so extra evaluations are not wasted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.base import Agent, Budget, CostModel, Gene, LayerActions, Objective
from automl.policy import CompressionPolicy

PROBE_SPARSITY = 0.5
#: options predicted within this share of the fastest one's saving are treated as equally fast
TIE = 0.05
#: fine-grained options are compared at the grid setting whose kept-weight share is nearest to
#: 1 - PROBE_SPARSITY, and only when it is this close (pattern keeps 4 of 9 at best, 1:4 N:M a quarter)
PROBE_TOLERANCE = 0.1
FINE_GRAINED = ("unstructured", "nm", "pattern", "block1xn", "block_punched")


class RuleBasedAgent(Agent):
    name = "rule_based"

    def __init__(self, space: Any, budget: Budget | None = None, cost_model: CostModel | None = None,
                 seed: int = 0, *, objective: str | Objective = "accuracy", vector_width: int = 8,
                 jitter: float = 0.35):
        super().__init__(space, budget, cost_model, seed, objective)
        self.vector_width = vector_width
        self.jitter = jitter
        self.options = [self._rule_option(a, c.layer) for a, c in zip(self.actions, space.layers, strict=True)]
        self.bits = [self._rule_bits(a) for a in self.actions]
        self.fallbacks: dict[str, str] = {}
        #: layer -> "rule's option -> chosen option", where a structured profile changed the rule's scheme
        self.measured_choices: dict[str, str] = {}
        self.sensitivity = self._sensitivities()
        self.proposed = 0

    # -- step 1: schemes
    def _find(self, act: LayerActions, scheme: str) -> list[int]:
        return [i for i, o in enumerate(act.options) if o["scheme"] == scheme]

    def _channel(self, act: LayerActions) -> int | None:
        idx = self._find(act, "channel")
        if not idx:
            return None
        return min(idx, key=lambda i: (act.options[i].get("align", 1) != self.vector_width,
                                       -act.options[i].get("align", 1)))

    def _rule_option(self, act: LayerActions, layer: Any) -> int:
        vw = self.vector_width
        kind = layer.kind
        if kind == "conv3x3" and self._find(act, "pattern"):
            return self._find(act, "pattern")[0]
        if kind in ("conv1x1", "linear", "attention"):
            blocks = self._find(act, "block_punched")
            if blocks:
                cols_target = max(4, layer.gemm_cols // 8) if hasattr(layer, "gemm_cols") else 8
                return min(blocks, key=lambda i: (act.options[i]["block"][0] % vw != 0,
                                                  abs(act.options[i]["block"][0] - vw),
                                                  abs(act.options[i]["block"][1] - cols_target)))
            onexn = self._find(act, "block1xn")
            if onexn:
                return min(onexn, key=lambda i: abs(act.options[i]["n"] - vw))
        if kind == "depthwise":
            ch = self._channel(act)
            if ch is not None:
                return ch
            return (self._find(act, "dense") or [0])[0]
        ch = self._channel(act)
        if ch is not None:
            return ch
        for scheme in ("unstructured", "dense"):
            if self._find(act, scheme):
                return self._find(act, scheme)[0]
        return 0

    def _rule_bits(self, act: LayerActions) -> tuple[int, int]:
        first = (None, 8) if self._structured_profile() else (8, None)

        def pick(options: tuple[int | None, ...]) -> int:
            return next((options.index(b) for b in first if b in options), 0)
        return pick(act.weight_bits), pick(act.act_bits)

    def _gene(self, i: int, option: int, sparsity: float) -> Gene:
        act = self.actions[i]
        s = act.snap_sparsity_value(sparsity) if act.has_sparsity(act.options[option]) else 0.0
        return Gene(option, s, *self.bits[i])

    # -- step 2: sensitivities
    def _saving(self, i: int, option: int, base: list[Gene], key: str, dense_cost: float) -> float:
        genes = list(base)
        genes[i] = self._gene(i, option, PROBE_SPARSITY)
        return dense_cost - self.walker.costs(genes)[key]

    def _structured_profile(self) -> bool:
        """The cost model's latency comes from a profile of a runtime with block-sparse kernels."""
        return bool(getattr(getattr(self.cost_model.latency, "profile", None), "structured", False))

    def _density(self, i: int, option: int, sparsity: float) -> float:
        from automl.policy import LayerDecision
        from search_spaces import get_scheme

        choice = self.actions[i].choice(Gene(option, sparsity))
        decision = LayerDecision(**{k: v for k, v in choice.items() if k not in ("weight_bits", "act_bits")})
        info = self.space.layers[i].layer
        return get_scheme(decision.scheme).density(info.out_channels, info.gemm_cols,
                                                   tuple(info.kernel_size), decision)

    def _probe_gene(self, i: int, option: int) -> Gene | None:
        """`option` with about 1 - PROBE_SPARSITY of its weights kept, or None if it cannot get close."""
        act = self.actions[i]
        grid = act.sparsities if act.has_sparsity(act.options[option]) else (0.0,)
        target = 1.0 - PROBE_SPARSITY
        s = min(grid, key=lambda g: abs(self._density(i, option, g) - target))
        if abs(self._density(i, option, s) - target) > PROBE_TOLERANCE:
            return None
        return Gene(option, s, *self.bits[i])

    def _granularity(self, i: int, option: int) -> int:
        """Weights pruned together by one unit of the option (1xN blocks take every tap of the kernel)."""
        o, (kh, kw) = self.actions[i].options[option], self.space.layers[i].layer.kernel_size
        if o["scheme"] == "block1xn":
            return int(o["n"]) * kh * kw
        if o["scheme"] == "block_punched":
            return int(o["block"][0])
        return 1

    def _fastest_fine_grained(self, i: int, base: list[Gene], key: str,
                              dense_cost: float) -> tuple[int, float] | None:
        """(option, saving) of the fine-grained option predicted fastest at the probe (see module docstring)."""
        act = self.actions[i]
        scored = []
        for o, option in enumerate(act.options):
            gene = self._probe_gene(i, o) if option["scheme"] in FINE_GRAINED else None
            if gene is not None:
                genes = list(base)
                genes[i] = gene
                scored.append((dense_cost - self.walker.costs(genes)[key], o))
        if not scored:
            return None
        best = max(saving for saving, _ in scored)
        tied = [(saving, o) for saving, o in scored if saving >= best - TIE * abs(best)]
        saving, o = min(tied, key=lambda t: (t[1] != self.options[i], self._granularity(i, t[1]), t[1]))
        return o, saving

    def _sensitivities(self) -> np.ndarray:
        has_latency = self.cost_model.latency is not None
        key = "latency_ms" if has_latency else "macs"
        base = [self._gene(i, o, 0.0) for i, o in enumerate(self.options)]
        dense_cost = self.walker.costs(base)[key]
        structured = has_latency and self._structured_profile()
        negligible = 1e-3 * max(dense_cost, 1e-9)
        sens = np.zeros(len(self.actions))
        for i, act in enumerate(self.actions):
            if structured:  # a fine-grained option that saves nothing is left to the fallback below
                found = self._fastest_fine_grained(i, base, key, dense_cost)
                if found is not None and found[0] != self.options[i] and found[1] > negligible:
                    self.measured_choices[act.name] = (f"{_describe(act.options[self.options[i]])} -> "
                                                       f"{_describe(act.options[found[0]])}")
                    self.options[i] = found[0]
            saving = self._saving(i, self.options[i], base, key, dense_cost)
            if has_latency and saving <= negligible:
                # the rule's scheme gains nothing on this runtime: take the option that does
                candidates = [o for o in range(len(act.options)) if act.has_sparsity(act.options[o])]
                ch = self._channel(act)
                scored = sorted(((self._saving(i, o, base, key, dense_cost), o == ch, o) for o in candidates),
                                reverse=True)
                if scored and scored[0][0] > saving:
                    best_saving, _, best = scored[0]
                    if ch is not None:
                        ch_saving = self._saving(i, ch, base, key, dense_cost)
                        if ch_saving >= 0.9 * best_saving:
                            best, best_saving = ch, ch_saving
                    self.fallbacks[act.name] = f"{act.options[self.options[i]]['scheme']} -> " \
                                               f"{act.options[best]['scheme']}"
                    self.options[i], saving = best, best_saving
            sens[i] = max(saving, 0.0)
        if sens.max() <= 0:
            sens[:] = 1.0
        return sens / sens.max()

    # -- proposing
    def _genes_for(self, weights: np.ndarray, t: float) -> list[Gene]:
        return [self._gene(i, o, float(min(1.0, t * w))) for i, (o, w) in enumerate(zip(self.options, weights,
                                                                                            strict=True))]

    def _fit(self, weights: np.ndarray) -> list[Gene]:
        hi_genes = self._genes_for(weights, 1.0 / max(weights.max(), 1e-9))
        if not self.walker.fits(hi_genes):
            return self.walker.walk(hi_genes)
        lo, hi = 0.0, 1.0 / max(weights.max(), 1e-9)
        if self.walker.fits(self._genes_for(weights, lo)):
            return self._genes_for(weights, lo)
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            if self.walker.fits(self._genes_for(weights, mid)):
                hi = mid
            else:
                lo = mid
        return self._genes_for(weights, hi)

    def propose(self, n: int = 1) -> list[CompressionPolicy]:
        out = []
        for _ in range(n):
            weights = self.sensitivity
            if self.proposed > 0:
                weights = weights * np.exp(self.jitter * self.rng.standard_normal(len(weights)))
            self.proposed += 1
            out.append(self.finish(self.walker.walk(self._fit(weights))))
        return out


def _describe(option: dict[str, Any]) -> str:
    extra = {k: v for k, v in option.items() if k != "scheme"}
    return option["scheme"] + ("(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else "")
