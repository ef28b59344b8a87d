"""Latency predictors. `KernelPredictor` is nn-Meter's: one regressor per kernel type, summed over a model.

Each regressor is a gradient-boosted tree ensemble on log-latency, so errors are relative and nothing
assumes latency is linear or monotone in MACs. The features expose what the runtime's kernels care
about: channel counts modulo 4/8/16, counts rounded up to 8/16 (the SIMD and blocked-layout widths),
whether both channel counts are multiples of 8 (onnxruntime's NCHWc path on AVX2), MACs padded to
those widths, density and bits. Uncertainty: each type's cross-validated relative error, applied per
kernel and combined over the model.

`relative=True` (profiles of `MEDIAN_PROFILE_VERSION`) fits each type's trees on latency *relative to*
a linear cost first fitted to that type's samples (fixed cost + work, work = MACs or elements): trees
are constant outside the range they saw, so a kernel bigger than any sample (the context networks' wide
VGG convs) was predicted at the biggest sample's latency; relative to the linear cost it extrapolates
with it. Types a profile has no sample of are an error, except `OPTIONAL_TYPES` (glue ops, which profiles
of the first formats never sampled): those cost nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_models.kernels import Kernel, kernel_block

#: kernel types a profile may lack samples of (then predicted free, as before they were traced); a
#: layout `reorder` (`latency_models.layouts`) is never timed alone: the context fit prices it
OPTIONAL_TYPES = frozenset({"glue", "reorder"})


@dataclass(frozen=True)
class Sample:
    """One measured kernel: its configuration and its latency in ms (runtime overhead subtracted).

    `ref`: what the reference kernels took in the same timing process (`profile.REFERENCE_KERNELS`), so a
    profile can take out the machine's speed at the time (None: not recorded).
    """

    kernel: Kernel
    ms: float
    ref: float | None = None

    def to_list(self) -> list[Any]:
        row = [self.kernel.type, list(self.kernel.params), self.ms]
        return row + [self.ref] if self.ref is not None else row

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> Sample:
        ref = float(row[3]) if len(row) > 3 and row[3] is not None else None
        return cls(Kernel(row[0], tuple(float(v) for v in row[1])), float(row[2]), ref)


class LatencyPredictor(ABC):
    """Predicts latency from kernels. `fit` on measured samples; `predict_kernels` -> (ms, std_ms) per kernel."""

    @abstractmethod
    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Fit; returns the fit report (per kernel type: samples, cross-validated error)."""

    @abstractmethod
    def predict_kernels(self, kernels: Sequence[Kernel]) -> tuple[np.ndarray, np.ndarray]:
        """Per-kernel latency (ms) and its uncertainty (ms)."""

    def predict_layers(self, kernels: Sequence[Kernel]) -> tuple[float, float]:
        """Sum over a model's kernels; the std assumes independent per-kernel errors plus a shared 3% term."""
        ms, std = self.predict_kernels(kernels)
        total = float(ms.sum())
        return total, float(math.sqrt(float((std**2).sum()) + (0.03 * total) ** 2))


def _align_feats(c: float) -> list[float]:
    return [c, c % 4, c % 8, c % 16, math.ceil(c / 8) * 8, math.ceil(c / 16) * 16, float(c % 8 == 0)]


def features(k: Kernel, block: bool = False) -> list[float]:
    """Regression features of one kernel (type-specific; same length within a type and `block`).

    `block` adds, for conv/linear kernels, the 1xN block height of the weight's zeros and the density
    of the blocks a 1x4-block kernel stores: the profile of a runtime with block-sparse kernels
    (sparse-cpu) needs them, the others' features stay exactly what they were.
    """
    p = k.params
    if k.type == "conv":
        cin, cout, ks, s, h, w, bn, act, dens, scheme, wb, ab = p[:12]
        ho, wo = math.ceil(h / s), math.ceil(w / s)
        macs = cin * cout * ks * ks * ho * wo
        pad8 = math.ceil(cin / 8) * 8 * math.ceil(cout / 8) * 8 * ks * ks * ho * wo
        both8 = float(cin % 8 == 0 and cout % 8 == 0)
        out = [*_align_feats(cin), *_align_feats(cout), ks, s, h, ho * wo, bn, act, dens, scheme, wb, ab,
               math.log(macs + 1), math.log(pad8 + 1), both8, math.log(cin * h * w + 1), math.log(cout * ho * wo + 1)]
        return out + _block_feats(kernel_block(k), dens, macs) if block else out
    if k.type == "dwconv":
        c, ks, s, h, w, act = p
        ho, wo = math.ceil(h / s), math.ceil(w / s)
        return [*_align_feats(c), ks, s, h, ho * wo, act, math.log(c * ks * ks * ho * wo + 1), math.log(c * h * w + 1)]
    if k.type == "linear":
        tokens, fin, fout, act, dens, scheme, wb, ab = p[:8]
        out = [tokens, *_align_feats(fin), *_align_feats(fout), act, dens, scheme, wb, ab,
               math.log(tokens * fin * fout + 1), math.log(tokens * (fin + fout) + 1)]
        return out + _block_feats(kernel_block(k), dens, tokens * fin * fout) if block else out
    if k.type == "matmul":
        b, m, kk, n = p
        return [b, m, *_align_feats(kk), *_align_feats(n), math.log(b * m * kk * n + 1)]
    if k.type == "eltwise":
        return [math.log(p[0] + 1), p[1], p[2], p[0] % 8]
    if k.type == "pool":
        return [math.log(p[0] + 1), math.log(p[1] + 1), p[0] / max(1.0, p[1])]
    if k.type == "norm":
        return [math.log(p[0] + 1), *_align_feats(p[1])]
    if k.type == "glue":
        return [math.log(p[0] + 1), p[1]]
    return [math.log(p[0] + 1), p[0] % 8]


def work(k: Kernel) -> float:
    """What a kernel's time grows with: MACs for conv / dwconv / linear / matmul, elements otherwise."""
    p = k.params
    if k.type == "conv":
        return p[0] * p[1] * p[2] ** 2 * math.ceil(p[4] / p[3]) * math.ceil(p[5] / p[3])
    if k.type == "dwconv":
        return p[0] * p[1] ** 2 * math.ceil(p[3] / p[2]) * math.ceil(p[4] / p[2])
    if k.type == "linear":
        return p[0] * p[1] * p[2]
    if k.type == "matmul":
        return p[0] * p[1] * p[2] * p[3]
    return p[0]


def fit_linear_cost(works: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """(fixed ms, ms per unit of work) minimising the relative error, both kept positive."""
    A = np.stack([np.ones_like(works), works], axis=1) / ms[:, None]
    a, b = np.linalg.lstsq(A, np.ones(len(ms)), rcond=None)[0]
    if b <= 0:
        return float(np.median(ms)), 0.0
    if a <= 0:  # no fixed cost: proportional to work alone
        r = works.clip(min=1.0) / ms
        a, b = 1e-6, float(r.sum() / (r**2).sum())
    return float(a), float(b)


def _block_feats(block: float, density: float, macs: float) -> list[float]:
    """Block height and the work a sparse kernel does: MACs x density (what 1xN kernels scale with)."""
    return [block, math.log(macs * density + 1)]


class _FlatBoost:
    """A fitted GradientBoostingRegressor flattened into arrays and evaluated for all trees at once.

    sklearn's predict costs ~1 ms per call in input validation alone; a search predicts thousands of
    policies, each touching a few new kernel configurations, so this keeps a prediction well under 1 ms.
    """

    def __init__(self, model: Any):
        trees = [est.tree_ for est in model.estimators_[:, 0]]
        width = max(t.node_count for t in trees)
        n = len(trees)
        self.feature = np.zeros((n, width), dtype=np.intp)
        self.threshold = np.full((n, width), np.inf)
        self.left = np.tile(np.arange(width), (n, 1))
        self.right = self.left.copy()
        self.value = np.zeros((n, width))
        for i, t in enumerate(trees):
            c = t.node_count
            internal = t.children_left[:c] >= 0
            idx = np.arange(c)
            self.feature[i, :c] = np.where(internal, t.feature[:c], 0)
            self.threshold[i, :c] = np.where(internal, t.threshold[:c], np.inf)
            self.left[i, :c] = np.where(internal, t.children_left[:c], idx)
            self.right[i, :c] = np.where(internal, t.children_right[:c], idx)
            self.value[i, :c] = t.value[:c, 0, 0]
        self.depth = max(t.max_depth for t in trees)
        self.scale = float(model.learning_rate)
        self.init = float(np.ravel(model.init_.constant_)[0])
        # flat views: node ids become offsets into one array per field (1-D `take` is the fast path)
        offset = (np.arange(n) * width)[:, None]
        self.f_feature = self.feature.ravel()
        self.f_threshold = self.threshold.ravel()
        self.f_left = (self.left + offset).ravel()
        self.f_right = (self.right + offset).ravel()
        self.f_value = self.value.ravel()
        self.roots = offset[:, 0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        n_samples, n_features = X.shape
        flat_x = X.ravel()
        node = np.repeat(self.roots[:, None], n_samples, axis=1)
        base = (np.arange(n_samples) * n_features)[None, :]
        for _ in range(self.depth):
            go_left = flat_x.take(base + self.f_feature.take(node)) <= self.f_threshold.take(node)
            node = np.where(go_left, self.f_left.take(node), self.f_right.take(node))
        return self.init + self.scale * self.f_value.take(node).sum(axis=0)


class KernelPredictor(LatencyPredictor):
    """One gradient-boosted regressor per kernel type on log(ms); memoizes per-kernel predictions."""

    def __init__(self, n_estimators: int = 300, max_depth: int = 4, learning_rate: float = 0.05, seed: int = 0,
                 block_features: bool = False, relative: bool = False):
        self.params = {"n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate,
                       "subsample": 0.8, "min_samples_leaf": 2, "random_state": seed}
        #: conv/linear features include the weight's block structure (see `features`); set by the profile
        #: from its runtime before fitting
        self.block_features = block_features
        #: regress latency relative to a per-type linear cost (see the module docstring); set by the profile
        self.relative = relative
        self.linear_cost: dict[str, tuple[float, float]] = {}
        self.models: dict[str, Any] = {}
        self.rel_err: dict[str, float] = {}
        self._memo: dict[tuple, tuple[float, float]] = {}

    def fit(self, samples: Sequence[Sample], cv: bool = True,
            known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Fit one regressor per kernel type; returns per type its sample count and cross-validated error.

        `known`: a report this fit returned before on the same samples (a saved profile's `fit_error`):
        a type with the same sample count takes its cross-validated error from it instead of running the
        5-fold cross-validation again (the fit is deterministic; the folds took 2/3 of a profile's load)."""
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.model_selection import KFold, cross_val_predict

        by_type: dict[str, list[Sample]] = {}
        for s in samples:
            if s.ms > 0:
                by_type.setdefault(s.kernel.type, []).append(s)
        report: dict[str, Any] = {}
        self.models, self.rel_err, self._memo, self.linear_cost = {}, {}, {}, {}
        for t, rows in sorted(by_type.items()):
            X = np.array([features(s.kernel, self.block_features) for s in rows])
            ms = np.array([s.ms for s in rows])
            y = np.log(ms)
            if self.relative:
                self.linear_cost[t] = fit_linear_cost(np.array([work(s.kernel) for s in rows]), ms)
                y = y - np.log(self._cost(t, rows))
            if len(rows) < 6:  # too few to learn a shape: a constant, honestly uncertain
                self.models[t] = float(np.median(y))
                self.rel_err[t] = 0.5
                report[t] = {"samples": len(rows), "cv_within_10pct": None, "cv_rel_rmse": 0.5}
                continue
            model = GradientBoostingRegressor(**self.params)
            before = (known or {}).get(t) or {}
            if before.get("samples") == len(rows) and before.get("cv_rel_rmse") is not None:
                rmse, within = float(before["cv_rel_rmse"]), before.get("cv_within_10pct")
            elif cv and len(rows) >= 20:
                pred = cross_val_predict(model, X, y, cv=KFold(5, shuffle=True, random_state=0))
                rel = np.exp(pred - y) - 1.0
                rmse = float(np.sqrt(np.mean(rel**2)))
                within = float(np.mean(np.abs(rel) <= 0.10))
            else:
                rmse, within = 0.25, None
            model.fit(X, y)
            flat = _FlatBoost(model)
            if not np.allclose(flat.predict(X[:8]), model.predict(X[:8]), atol=1e-6):
                flat = model  # an sklearn change broke the flattening: slower, still right
            self.models[t], self.rel_err[t] = flat, rmse
            report[t] = {"samples": len(rows), "cv_within_10pct": within, "cv_rel_rmse": rmse}
        return report

    def _cost(self, t: str, rows: Sequence[Any]) -> np.ndarray:
        """The linear cost of kernels (or samples) of type t."""
        a, b = self.linear_cost[t]
        return np.array([a + b * work(getattr(r, "kernel", r)) for r in rows])

    def predict_kernels(self, kernels: Sequence[Kernel]) -> tuple[np.ndarray, np.ndarray]:
        ms = np.zeros(len(kernels))
        std = np.zeros(len(kernels))
        todo: dict[str, list[int]] = {}
        keys = []
        for i, k in enumerate(kernels):
            key = (k.type, k.params)
            keys.append(key)
            hit = self._memo.get(key)
            if hit is None:
                todo.setdefault(k.type, []).append(i)
            else:
                ms[i], std[i] = hit
        for t, idx in todo.items():
            model = self.models.get(t)
            if model is None and t in OPTIONAL_TYPES:
                continue  # zeros
            if model is None:
                raise KeyError(f"the profile has no samples of '{t}' kernels; rebuild it (automl latency profile)")
            if isinstance(model, float):
                pred = np.full(len(idx), model)
            else:
                pred = model.predict(np.array([features(kernels[i], self.block_features) for i in idx]))
            if t in self.linear_cost:
                pred = pred + np.log(self._cost(t, [kernels[i] for i in idx]))
            for i, v in zip(idx, pred, strict=True):
                ms[i] = math.exp(float(v))
                std[i] = ms[i] * self.rel_err[t]
                if len(self._memo) < 200_000:
                    self._memo[keys[i]] = (ms[i], std[i])
        return ms, std

    def kernel_types(self) -> Iterable[str]:
        return self.models.keys()
