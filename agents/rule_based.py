"""`rule_based`: the seed's rule-based scheme mapping, then sparsity spread by latency sensitivity (or, on a
block-sparse runtime's profile, allocated greedily on the predicted latency).

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
  On a block-sparse runtime's profile that spread does not work: latency there is a step function of a
  layer's sparsity (dense until its kernel's threshold, ~50% for 1x4 blocks, ~75% for N=1, then falling),
  and ``t * w_i`` hands the block-sparse layers 0-0.1 (below any threshold) while the channel-pruned ones
  (stem, shortcuts), whose latency falls from the first channel, take all of it. There step 2 is a greedy
  allocation on the predicted latency instead (`_greedy`): start dense; a layer's moves go from where it
  is to any further value of its option's sparsity grid; repeatedly take the move with the largest
  budget-score saving (predicted ms / limit for a latency budget, from the cost model's latency callable)
  per unit of accuracy cost, until the budget is met; the last move is then cut to the smallest step on
  its layer that still meets it. Scoring every further grid value, not only the next one, is what jumps
  a threshold instead of crawling to it: below it a step saves nothing, and on a step-shaped curve the
  best saving per cost is at the smallest value where the latency drops; scoring all of them (rather
  than taking the first predicted drop) also keeps the small wiggles a fitted profile shows below a
  threshold (~0.2% of the model here) from passing for the step.
  Accuracy cost of a state: sum over layers of ``-log(kept share)``, where the kept share is of the
  layer's dense weights after the policy (coupled channel pruning shrinks other layers too, and counts
  there), and weights removed with their channels count `CHANNEL_COST` times. That is the share of the
  model's weights pruned, weighted by 1/(layer size): a small layer (the stem, a 1x1 shortcut) has fewer
  redundant weights, so halving it costs as much as halving a big one, not 1/16 of it. The log makes each
  further halving of a layer cost as much as the first (accuracy falls faster as a layer empties), so
  sparsity spreads over layers instead of piling onto the cheapest, and a layer is never pruned away
  (infinite cost: that grid value is not a move). Channel removal counts double because coarser pruning
  loses more accuracy per weight than fine-grained zeros. Savings are first estimated from single-layer
  predictions (each layer moved alone from dense: one prediction per grid value, cached) and a move is
  re-predicted on the current state before it is taken (lazy greedy: coupled channels and the profile's
  context make savings not quite additive). If no sequence of moves meets the budget (the greedy's
  options cannot reach it), step 2 falls back to the spread above. Jittered later proposals (below)
  jitter the per-layer accuracy costs. The onnxruntime / no-predictor behaviour is unchanged.
Bit-widths: 8 bits where the space offers it (int8 kernels are what CPUs accelerate) when the latency is
  of an int8 deployment or there is no latency model; float when the latency profile is of an fp32 runtime
  and no size budget is set: the latency the search reports is then the float model's, so bits would cost
  accuracy (fake-quant in every score) for a speed nobody measured, and a printed "weight_bits=8" would
  contradict the fp32 latency next to it. A block-sparse runtime's profile (sparse-cpu's kernels are fp32)
  is such an fp32 runtime; `automl apply --runtime sparse-cpu` refuses bits.

There is no search cost: the first proposal is the rule's policy. Later proposals (when asked for
more) jitter the sensitivities (on a structured profile: the greedy's per-layer accuracy costs) with the
agent's seeded generator so extra evaluations are not wasted. `allocation` says which step 2 the last
proposal used ("greedy" or "spread").
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
#: greedy allocation (structured profiles): weights removed with their channels count this many times
#: the same share of fine-grained zeros in a layer's accuracy cost
CHANNEL_COST = 2.0
#: predictions the greedy keeps (a proposal on resnet20 makes ~250, later ones ~30 more each)
GREEDY_CACHE = 20_000


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
        #: how the last proposal spread sparsity: "greedy" (structured profile) or "spread" (t * w_i)
        self.allocation: str | None = None
        self._greedy_ladders: list[list[Gene]] | None = None
        self._greedy_cache: dict[tuple[Gene, ...], tuple[float, np.ndarray]] = {}
        self._dense_weights = np.zeros(0)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_greedy_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # agents pickled before the greedy allocation existed resume with its caches empty
        self.__dict__.update({"allocation": None, "_greedy_ladders": None, "_greedy_cache": {},
                              "_dense_weights": np.zeros(0), **state})

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
        first = (None, 8) if self._float_latency_target() else (8, None)

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

    def _float_latency_target(self) -> bool:
        """The latency being optimised is a float model's (every structured profile is: sparse-cpu runs fp32
        only) and no size budget makes bits pay."""
        profile = getattr(self.cost_model.latency, "profile", None)
        if profile is None or self.budget.max_size_bytes is not None:
            return False
        return getattr(profile, "precision", "fp32") != "int8"

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

    # -- step 2 on a block-sparse runtime's profile: greedy on the predicted latency
    def _budget_score(self, genes: list[Gene]) -> tuple[float, np.ndarray]:
        """(budget score, -log kept share per layer) of `genes`, cached: the score from the cost model's
        latency callable when latency is the only limit (no MAC / size accounting), else the full costs."""
        key = tuple(genes)
        hit = self._greedy_cache.get(key)
        if hit is not None:
            return hit
        if len(self._greedy_cache) >= GREEDY_CACHE:
            self._greedy_cache.clear()
        policy = self.walker.policy(genes)
        limits = self.budget.limits()
        if set(limits) == {"latency_ms"}:
            score = float(self.cost_model.latency(policy)) / limits["latency_ms"]
        else:
            score = self.budget.score(self.cost_model.costs(policy))
        layers = self.space.compressed_layers(policy)
        shrunk = np.array([cl.weights for cl in layers], dtype=float) / self._dense_weights
        density = np.array([cl.density for cl in layers], dtype=float)
        with np.errstate(divide="ignore"):
            cost = -CHANNEL_COST * np.log(shrunk) - np.log(np.maximum(density, 0.0))
        self._greedy_cache[key] = (score, cost)
        return score, cost

    def _greedy_start(self) -> list[Gene]:
        """Every layer dense (its step-1 option at the grid's least sparsity where the space has no dense)."""
        start = []
        for i, act in enumerate(self.actions):
            dense = self._find(act, "dense")
            start.append(Gene(dense[0], act.sparsities[0], *self.bits[i]) if dense
                         else self._gene(i, self.options[i], act.sparsities[0]))
        return start

    def _ladders(self) -> list[list[Gene]]:
        """Per layer, its genes from dense up its option's sparsity grid, each keeping strictly fewer of
        the layer's weights than the one before (grid values that snap to the same mask are dropped, and
        so is pruning the whole layer); each is predicted once as the model's only change from dense."""
        if self._greedy_ladders is not None:
            return self._greedy_ladders
        self._dense_weights = np.array([lc.layer.out_channels * lc.layer.gemm_cols for lc in self.space.layers],
                                       dtype=float)
        start = self._greedy_start()
        ladders = []
        for i, act in enumerate(self.actions):
            option = act.options[self.options[i]]
            grid = act.sparsities if act.has_sparsity(option) else (0.0,)
            ladder, last = [start[i]], self._budget_score(start)[1][i]
            for s in grid:
                gene = Gene(self.options[i], float(s), *self.bits[i])
                own = self._budget_score(start[:i] + [gene] + start[i + 1:])[1][i]
                if last + 1e-12 < own < np.inf:
                    ladder.append(gene)
                    last = own
            ladders.append(ladder)
        self._greedy_ladders = ladders
        return ladders

    def _greedy(self, sens: np.ndarray) -> list[Gene] | None:
        """Sparsity by greedy moves on the predicted latency (see the module docstring); None when no
        sequence of moves meets the budget."""
        import heapq

        if self.walker.fits(self._greedy_start()):
            return self._greedy_start()
        ladders = self._ladders()
        pos = [0] * len(ladders)

        def genes_at(p: list[int]) -> list[Gene]:
            return [ladder[k] for ladder, k in zip(ladders, p, strict=True)]

        def moved(i: int, j: int) -> list[int]:
            return pos[:i] + [j] + pos[i + 1:]

        def single(i: int, j: int) -> tuple[float, np.ndarray]:
            return self._budget_score(genes_at([0] * i + [j] + [0] * (len(pos) - i - 1)))

        def fits(p: list[int]) -> bool:
            return self._budget_score(genes_at(p))[0] <= 1.0 + 1e-9 and self.walker.fits(genes_at(p))

        if fits(pos):
            return genes_at(pos)
        score, cost = self._budget_score(genes_at(pos))
        negligible = 1e-3 * score

        def rate(saving: float, extra: float) -> float:
            return saving / extra if extra > 1e-12 else np.inf

        def table_move(i: int) -> tuple[float, int] | None:
            """Layer i's best move from the single-layer predictions (additive estimate): the further grid
            value with the best saving per accuracy cost; ties go to the smaller step."""
            k, best = pos[i], None
            s_k, c_k = single(i, k)
            for j in range(k + 1, len(ladders[i])):
                s_j, c_j = single(i, j)
                if s_k - s_j > negligible:
                    r = rate(s_k - s_j, float(sens @ (c_j - c_k)))
                    if best is None or r > best[0] * (1 + 1e-9):
                        best = (r, j)
            return best

        heap: list[tuple[float, int, int, int]] = []
        for i in range(len(pos)):
            found = table_move(i)
            if found is not None:
                heapq.heappush(heap, (-found[0], i, found[1], -1))
        version, rescanned = 0, False
        while True:
            if not heap:
                if rescanned:
                    return None
                # the additive estimates found nothing more: rescan every move on the real state once
                rescanned = True
                for i in range(len(pos)):
                    for j in range(pos[i] + 1, len(ladders[i])):
                        s, c = self._budget_score(genes_at(moved(i, j)))
                        if score - s > negligible:
                            heapq.heappush(heap, (-rate(score - s, float(sens @ (c - cost))), i, j, version))
                continue
            neg_rate, i, j, stamp = heapq.heappop(heap)
            if j <= pos[i]:
                continue
            if stamp != version:  # an estimate, or valued on an older state: value it on this one
                s, c = self._budget_score(genes_at(moved(i, j)))
                if score - s <= negligible:
                    continue
                r = rate(score - s, float(sens @ (c - cost)))
                if heap and r < -heap[0][0]:
                    heapq.heappush(heap, (-r, i, j, version))
                    continue
            k = pos[i]
            pos[i] = j
            version += 1
            rescanned = False
            if fits(pos):
                # the last move need not go all the way: the smallest step on that layer that fits
                for smaller in range(k + 1, j):
                    if fits(moved(i, smaller)):
                        pos[i] = smaller
                        break
                return genes_at(pos)
            score, cost = self._budget_score(genes_at(pos))
            found = table_move(i)
            if found is not None:
                heapq.heappush(heap, (-found[0], i, found[1], -1))

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
            noise = None
            if self.proposed > 0:
                noise = np.exp(self.jitter * self.rng.standard_normal(len(weights)))
                weights = weights * noise
            self.proposed += 1
            genes = None
            if self._structured_profile():
                genes = self._greedy(np.ones(len(weights)) if noise is None else noise)
            self.allocation = "spread" if genes is None else "greedy"
            if genes is None:
                genes = self._fit(weights)
            out.append(self.finish(self.walker.walk(genes)))
        return out


def _describe(option: dict[str, Any]) -> str:
    extra = {k: v for k, v in option.items() if k != "scheme"}
    return option["scheme"] + ("(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else "")
