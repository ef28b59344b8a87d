"""Device profiles: a fitted kernel predictor bound to the machine, runtime and settings it was measured on.

A profile is versioned JSON holding the *measured samples* (the honest data) plus what was learnt from
them; loading refits the regressors (seconds; the cross-validated errors saved with the profile are reused
rather than recomputed), so no pickle crosses versions. It records the
device fingerprint (cpu model, cores, SIMD flags, library versions) and refuses to load on another
machine or library set unless forced: a profile measured on one machine must not pretend to hold on
another. `get_or_build_profile` is the quickstart path: build a small one on first use, cache it under
$AUTOML_HOME/profiles/<fingerprint>/.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latency_models.estimate import LatencyEstimate, device_fingerprint, device_info, summarize
from latency_models.kernels import Kernel, compressed_kernels, kernels_for_model, skeleton, weight_bytes
from latency_models.predictors import KernelPredictor, Sample

PROFILE_FORMAT = "compress-search/latency-profile"
#: the first format: kernel samples and whole networks fitted on their fastest decile (p10)
PROFILE_VERSION = 1
#: profiles of runtimes with block-sparse kernels (sparse-cpu) built with structured samples: their conv /
#: linear samples may carry the block height (`latency_models.kernels`). Fastest decile, as version 1.
STRUCTURED_PROFILE_VERSION = 2
#: profiles of the other runtimes (onnxruntime, torch) since issue 10: kernel samples and whole networks are
#: fitted on their *median*, what `measure_latency` reports as measured, the networks timed with its
#: protocol (`latency_models.measure`) against a no-op baseline; every timing process also times
#: `REFERENCE_KERNELS` and is divided by the speed they show; glue ops are sampled; the regressors fit
#: latency relative to a linear cost per type (`KernelPredictor.relative`); the context fit adds a
#: call cost per kernel type and a cold-weights term (`_fit_context`). A cached profile of an older
#: version is rebuilt by `get_or_build_profile` (it predicted another statistic); all three versions load.
MEDIAN_PROFILE_VERSION = 3
READABLE_VERSIONS = (PROFILE_VERSION, STRUCTURED_PROFILE_VERSION, MEDIAN_PROFILE_VERSION)
#: the side-file key of structured samples, so a rebuild never mixes in random-mask samples of an older build
STRUCTURED_SAMPLING = "structured-1"
#: the side-file key of MEDIAN_PROFILE_VERSION samples (never mixed with fastest-decile ones)
MEDIAN_SAMPLING = "median-3"
#: the same for int8 profiles whose whole networks are exported as deployed (`Runtime.export_network`);
#: earlier int8 builds timed onnxruntime networks with a third to two thirds of their convs left in fp32
#: (cross-validated context fit: 31% of networks within 10%), so their samples and profiles are not reused
INT8_SAMPLING = "median-3/int8-networks-as-deployed"
#: MEDIAN_PROFILE_VERSION samples of a runtime that rewrites convs into a blocked layout (onnxruntime fp32):
#: the whole networks' kernels carry their dataflow (`Kernel.inputs`), from which the context fit learns
#: what the runtime's reorders and fused adds cost (`latency_models.layouts`); earlier builds had none
DATAFLOW_SAMPLING = "median-3/networks-with-dataflow"
KERNEL_MIX = (("conv", 0.45), ("dwconv", 0.12), ("linear", 0.15), ("eltwise", 0.08), ("pool", 0.04),
              ("norm", 0.04), ("softmax", 0.03), ("matmul", 0.05), ("transpose", 0.04))
#: MEDIAN_PROFILE_VERSION samples glue ops too (a few suffice: they cost about the same whatever their size)
MEDIAN_KERNEL_MIX = KERNEL_MIX + (("glue", 0.03),)


@dataclass(frozen=True)
class Protocol:
    """How a profile times its samples: the statistic fitted and the worker's timing parameters."""

    statistic: str  # "p10" or "median" (keys of `latency_models.estimate.summarize`)
    kernel_rounds: int
    kernel_target_ms: float
    network_repeats: int
    network_rounds: int
    network_target_ms: float
    #: the per-call baseline runs no op (`sampling.baseline_module`), so samples keep their ops' cost
    identity_baseline: bool = False
    #: every timing process also times `REFERENCE_KERNELS`, and the fit divides out the speed they show
    references: bool = False


#: versions 1-2: fastest decile, few rounds; version 3: the median, networks in many interleaved slices, for
#: ~0.4 s each (each chunk of 6 spans ~2.5 s, as `measure_latency`'s ~1 s per model does)
PROTOCOLS = {PROFILE_VERSION: Protocol("p10", 3, 40.0, 30, 3, 60.0),
             STRUCTURED_PROFILE_VERSION: Protocol("p10", 3, 40.0, 30, 3, 60.0),
             MEDIAN_PROFILE_VERSION: Protocol("median", 10, 40.0, 30, 10, 400.0, identity_baseline=True,
                                              references=True)}
#: timed in every timing process of a version 3 build (a conv, a linear, an add: compute-, mixed- and
#: call-bound): the shared machine's speed moves by ~10% from one process / few seconds to the next
#: (whole batches of random networks measured 1.2-1.6x slower than the same kinds in other batches), so
#: each sample and network is divided by its process's reference time relative to the build's median
REFERENCE_KERNELS = (Kernel("conv", (32.0, 32.0, 3.0, 1.0, 14.0, 14.0, 1.0, 1.0, 1.0, 0.0, 32.0, 32.0)),
                     Kernel("linear", (50.0, 64.0, 64.0, 0.0, 1.0, 0.0, 32.0, 32.0)),
                     Kernel("eltwise", (3136.0, 2.0, 1.0)))
ProgressFn = Callable[[str], None]
MIN_KERNEL_MS = 5e-4  # no runtime node costs less than ~0.5 us; below that a difference is timer noise


class ProfileError(ValueError):
    """A profile is missing, malformed, of another version, or from another machine; the message says how to fix."""


def current_version(runtime: str) -> int:
    """The profile version `build_profile` writes for `runtime` (and `get_or_build_profile` accepts)."""
    return STRUCTURED_PROFILE_VERSION if structured_runtime(runtime) else MEDIAN_PROFILE_VERSION


def structured_runtime(runtime: str) -> bool:
    """Whether `runtime` has block-sparse kernels (`Runtime.structured_sparsity`), so that its profile samples
    structured masks and its predictor sees the block height. Unknown names count as plain runtimes."""
    from latency_models.runtimes.base import RuntimeError_, get_runtime

    try:
        return bool(get_runtime(runtime).structured_sparsity)
    except RuntimeError_:
        return False


@dataclass
class DeviceProfile:
    """What one device + runtime + batch + threads + precision does with each kernel type."""

    device: str
    runtime: str
    batch: int
    threads: int
    precision: str
    versions: dict[str, str]
    fingerprint: str
    samples: list[Sample]
    overhead_ms: float
    fit_error: dict[str, Any] = field(default_factory=dict)
    calibration: tuple[float, float] = (1.0, 0.0)  # measured ~ a * predicted + b, refitted from pairs
    device_url: str | None = None
    created: str = ""
    predictor: KernelPredictor = field(default_factory=KernelPredictor, repr=False)
    preferred_align: int = 1
    align_gain: dict[str, float] = field(default_factory=dict)
    #: whole random networks measured once: (their kernels, measured ms[, reference ms]) for the context
    #: calibration (the reference as `Sample.ref`)
    composites: list[tuple] = field(default_factory=list)
    type_scale: dict[str, float] = field(default_factory=dict)
    context_fit: dict[str, Any] = field(default_factory=dict)
    #: STRUCTURED_PROFILE_VERSION when built with structured samples (see `build_profile`), else PROFILE_VERSION
    format_version: int = PROFILE_VERSION
    #: sd of log reference time across the build's timing processes (how much the machine's speed moved)
    speed_spread: float | None = None
    #: how the samples were taken (`sampling_key`); profiles saved before it was recorded read as their
    #: version's sampling
    sampling: str | None = None
    #: the channel block of the runtime's blocked layout on the profiled device (`Runtime.layout_block`):
    #: when set, kernels are priced as the runtime runs them, with its reorders and fused adds
    #: (`latency_models.layouts.nchwc_kernels`); 0 for runtimes without one and for earlier builds
    layout_block: int = 0
    #: how slow the machine runs now against the build (`at_speed`: measured / predicted of a model timed
    #: now, as a search does with its dense model): predictions are at the build's speed and multiplied
    #: by it. A state of the moment, never saved with the profile
    speed: float = 1.0

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def structured(self) -> bool:
        """The runtime has block-sparse kernels: the predictor's conv/linear features include the blocks."""
        return structured_runtime(self.runtime)

    @property
    def statistic(self) -> str:
        """What the profile predicts: "median" (version 3, what `measure_latency` reports) or "p10"."""
        return PROTOCOLS.get(self.format_version, PROTOCOLS[PROFILE_VERSION]).statistic

    # ------------------------------------------------------------------ fitting
    def speed_reference(self) -> float | None:
        """The build's median reference time (samples and networks alike), None without references."""
        refs = [s.ref for s in self.samples if s.ref] + [c[2] for c in self.composites if len(c) > 2 and c[2]]
        return _median(refs) if refs else None

    def fit_samples(self) -> list[Sample]:
        """The samples as fitted: each divided by its timing process's speed (reference / the median)."""
        ref = self.speed_reference()
        if ref is None:
            return list(self.samples)
        return [Sample(s.kernel, s.ms * ref / s.ref, s.ref) if s.ref else s for s in self.samples]

    def fit_composites(self) -> list[tuple[list[Kernel], float]]:
        """(kernels, ms) of the whole networks as fitted, divided by their process's speed as samples are."""
        ref = self.speed_reference()
        return [(c[0], c[1] * ref / c[2] if ref and len(c) > 2 and c[2] else c[1]) for c in self.composites]

    def fit(self, known_error: dict[str, Any] | None = None) -> DeviceProfile:
        """Fit the regressors and the context; `known_error`: the saved `fit_error` of these samples (its
        cross-validated errors are reused, see `KernelPredictor.fit`)."""
        self.predictor.block_features = self.structured
        self.predictor.relative = self.format_version == MEDIAN_PROFILE_VERSION
        self.fit_error = self.predictor.fit(self.fit_samples(), known=known_error)
        if "conv" in self.fit_error:
            self.preferred_align, self.align_gain = _preferred_align(self.predictor)
        self.type_scale, self.context_fit = {}, {}
        if len(self.composites) >= 8:
            self.type_scale, self.context_fit = _fit_context(self)
        refs = [s.ref for s in self.samples if s.ref] + [c[2] for c in self.composites if len(c) > 2 and c[2]]
        if len(refs) >= 2:  # how much the machine's speed moved between timing processes (sd of log)
            logs = [math.log(r) for r in refs]
            mean = sum(logs) / len(logs)
            self.speed_spread = round(math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1)), 4)
        return self

    def as_run(self, kernels: Sequence[Kernel]) -> list[Kernel]:
        """`kernels` as the profiled runtime runs them: with the reorders and fused adds of its blocked
        layout (`layout_block`), else as they are."""
        if not self.layout_block:
            return list(kernels)
        from latency_models.layouts import nchwc_kernels

        return nchwc_kernels(kernels, self.layout_block)

    def _sum(self, kernels: Sequence[Kernel]) -> tuple[float, float]:
        import numpy as np

        kernels = self.as_run(kernels)
        ms, std = self.predictor.predict_kernels(kernels)
        keys = [context_key(k) for k in kernels] if self.type_scale or self.context_fit else []
        if self.type_scale:
            scale = np.array([self.type_scale.get(key, 1.0) for key in keys])
            ms, std = ms * scale, std * scale
        total = float(ms.sum())
        call_ms = self.context_fit.get("call_ms") or {}
        io_ms = self.context_fit.get("io_ms_per_melem") or {}
        if call_ms or io_ms:
            extra = sum(call_ms.get(key, 0.0) for key in keys)
            if io_ms:
                extra += sum(io_ms[key] * io_melems(k) for key, k in zip(keys, kernels, strict=True) if key in io_ms)
            total = max(0.5 * total, total + extra)
        cold = float(self.context_fit.get("cold_ms_per_mb", 0.0))
        if cold and self.context_fit.get("cache_mb") is not None:
            total += cold * cold_weight_mb(kernels, float(self.context_fit["cache_mb"]),
                                           self.context_fit.get("cold_form") or "beyond")
        rel = float(self.context_fit.get("cv_rel_rmse", 0.03))
        return total, math.sqrt(float((std**2).sum()) + (rel * total) ** 2)

    def at_speed(self, factor: float) -> DeviceProfile:
        """This profile predicting for a machine running `factor` x slower than at the build (below 1:
        faster), e.g. measured / predicted latency of a model timed now. Shares the fitted predictor; the
        profile itself is unchanged."""
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"a speed factor must be a positive number, got {factor!r}")
        from dataclasses import replace

        return replace(self, speed=float(factor))

    def predict_kernels(self, kernels: Sequence[Kernel]) -> LatencyEstimate:
        """Predicted latency of a model given as kernels: overhead + context-scaled sum, times the speed
        factor (`at_speed`), then the pair calibration."""
        raw, std = self._sum(kernels)
        a, b = self.calibration
        ms = a * self.speed * (raw + self.overhead_ms) + b
        return LatencyEstimate(ms=ms, std_ms=abs(a) * self.speed * std, source="predicted", device=self.device,
                               runtime=self.runtime, batch=self.batch, threads=self.threads,
                               precision=self.precision)

    def raw_ms(self, kernels: Sequence[Kernel]) -> float:
        """The prediction at the build's speed, before the pair calibration (what refit regresses measured
        latency on)."""
        return self._sum(kernels)[0] + self.overhead_ms

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, "schema_version": self.format_version, "device": self.device,
                "fingerprint": self.fingerprint, "device_url": self.device_url, "runtime": self.runtime,
                "batch": self.batch, "threads": self.threads, "precision": self.precision,
                "versions": self.versions, "created": self.created, "n_samples": self.n_samples,
                "overhead_ms": self.overhead_ms, "calibration": list(self.calibration),
                "statistic": self.statistic, "preferred_align": self.preferred_align, "align_gain": self.align_gain,
                "fit_error": self.fit_error, "type_scale": self.type_scale, "context_fit": self.context_fit,
                "speed_spread": self.speed_spread, "sampling": self.sampling, "layout_block": self.layout_block,
                "samples": [s.to_list() for s in self.samples],
                "composites": [_composite_row(c) for c in self.composites]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, force: bool = False, source: str = "profile") -> DeviceProfile:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source} is not a latency profile (build one with 'automl latency profile')")
        if data.get("schema_version") not in READABLE_VERSIONS:
            raise ProfileError(f"{source} has profile version {data.get('schema_version')!r}; this release reads "
                               f"{' and '.join(map(str, READABLE_VERSIONS))}: rebuild it with "
                               "'automl latency profile'")
        if not data.get("device_url"):  # a local profile: it must have been measured on this machine
            here = device_info()
            if data.get("fingerprint") != device_fingerprint(here) and not force:
                theirs = data.get("versions", {})
                diff = [f"{k} {theirs.get(k)} vs {v} here" for k, v in here["versions"].items() if theirs.get(k) != v]
                why = (f"it was measured on '{data.get('device')}', this is '{here['device']}'"
                       if data.get("device") != here["device"] else
                       "library versions differ: " + ", ".join(diff) if diff else "the device fingerprint differs")
                raise ProfileError(f"{source} does not hold on this machine ({why}). Build a profile here with "
                                   "'automl latency profile', or pass force=True / --force to use it anyway")
        profile = cls(device=data["device"], runtime=data["runtime"], batch=int(data["batch"]),
                      threads=int(data["threads"]), precision=data["precision"], versions=data.get("versions", {}),
                      fingerprint=data.get("fingerprint", ""), samples=[Sample.from_list(r) for r in data["samples"]],
                      overhead_ms=float(data["overhead_ms"]), calibration=tuple(data.get("calibration", (1.0, 0.0))),
                      device_url=data.get("device_url"), created=data.get("created", ""),
                      composites=_composites_from(data.get("composites", [])),
                      format_version=int(data["schema_version"]),
                      sampling=data.get("sampling", _SAMPLING_OF_VERSION.get(int(data["schema_version"]))),
                      layout_block=int(data.get("layout_block") or 0))
        saved = data.get("fit_error")
        profile.fit(known_error=saved if isinstance(saved, dict) else None)
        return profile

    @classmethod
    def load(cls, path: str | Path, *, force: bool = False) -> DeviceProfile:
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"profile '{path}' does not exist; build one with 'automl latency profile --out {path}'")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile '{path}' is not valid JSON: {exc}") from exc
        return cls.from_dict(data, force=force, source=f"profile '{path}'")

    def summary(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "batch": self.batch, "threads": self.threads,
                "precision": self.precision, "version": self.format_version, "statistic": self.statistic,
                "n_samples": self.n_samples, "overhead_ms": round(self.overhead_ms, 4),
                "preferred_align": self.preferred_align, "calibration": list(self.calibration),
                "composites": len(self.composites), "context_fit": self.context_fit,
                "speed_spread": self.speed_spread, "sampling": self.sampling, "layout_block": self.layout_block,
                "fit_error": {t: {"samples": r["samples"], "cv_within_10pct": r["cv_within_10pct"]}
                              for t, r in self.fit_error.items()}}


def context_key(k: Kernel) -> str:
    """The context group of a kernel: its type, split by 8-alignment for convs (in a chain of aligned
    convs onnxruntime keeps the blocked NCHWc layout between them, so they lose the reorders an
    isolated sample pays; unaligned ones do not), and for depthwise convs by 16 and 8: onnxruntime's
    int8 depthwise kernel runs ~1.7x slower per MAC at 8 mod 16 channels than at multiples of 16, and
    one group for both had the int8 profile predict MobileNetV2 pruned to multiples of 8 15-17% low
    (within 1% with the split; fp32 profiles fit as well either way). A blocked layout's reorders are
    grouped by direction and the adds it fuses into a conv apart from the others
    (`latency_models.layouts`)."""
    if k.type == "reorder":
        return "reorder/in" if k.params[1] == 0 else "reorder/out"
    if k.role == "fused":
        return f"{k.type}/fused"
    if k.type == "conv":
        return "conv/a8" if k.params[0] % 8 == 0 and k.params[1] % 8 == 0 else "conv/u"
    if k.type == "dwconv":
        c = k.params[0]
        return "dwconv/a16" if c % 16 == 0 else "dwconv/a8" if c % 8 == 0 else "dwconv/u"
    return k.type


def _composites_from(rows: Sequence[Any]) -> list[tuple]:
    out: list[tuple] = []
    for row in rows:  # each kernel [type, params] or, with its dataflow, [type, params, inputs]
        ks = [Kernel(k[0], tuple(float(v) for v in k[1]), inputs=tuple(int(i) for i in k[2]) if len(k) > 2 else ())
              for k in row[0]]
        out.append((ks, float(row[1])) + ((float(row[2]),) if len(row) > 2 and row[2] is not None else ()))
    return out


def _composite_row(c: tuple) -> list[Any]:
    return [[[k.type, list(k.params)] + ([list(k.inputs)] if k.inputs else []) for k in c[0]], c[1], *c[2:]]


#: ridge strengths tried by the context fit (picked by 5-fold cross-validation on the networks)
CONTEXT_LAMBDAS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
#: cache sizes (MiB) tried for the cold-weights term (picked with the ridge strength, against none), each
#: only when at least CONTEXT_MIN_COLD networks' weights exceed it
CONTEXT_CACHE_MB = (0.5, 1.0, 2.0, 4.0)
CONTEXT_MIN_COLD = 8
#: how the cold-weights term reads a network's weights (see `cold_weight_mb`); picked by cross-validation
COLD_FORMS = ("beyond", "spilled")


#: which kernel families get a term per element of activation traffic (`io_melems`), picked by
#: cross-validation with the cache size: none, the convs (onnxruntime's layout reorders), every type
CONTEXT_IO_SETS = {"none": (), "convs": ("conv", "dwconv"), "all": None}
#: a larger io set is taken only when its cross-validated relative RMSE is lower by this much (0.2
#: points; the onnxruntime b1 profile here: 6.73% none, 6.66% convs, 6.34% all)
CONTEXT_IO_MARGIN = 0.002


def io_melems(k: Kernel) -> float:
    """Millions of activation elements a kernel reads and writes (input + output, per sample).

    Timed alone, a conv of onnxruntime's blocked layout pays a reorder of its input and output;
    in a chain of such convs the layout is kept, so the saving grows with the activations, not with
    the MACs: one scale per kernel type over-corrected the small, weight-heavy 7x7 convs of the
    zoo's last stages and under-corrected the 28x28 ones.
    """
    p = k.params
    if k.type == "conv":
        return (p[0] * p[4] * p[5] + p[1] * math.ceil(p[4] / p[3]) * math.ceil(p[5] / p[3])) / 1e6
    if k.type == "dwconv":
        return p[0] * (p[3] * p[4] + math.ceil(p[3] / p[2]) * math.ceil(p[4] / p[2])) / 1e6
    if k.type == "linear":
        return p[0] * (p[1] + p[2]) / 1e6
    if k.type == "matmul":
        return p[0] * (p[1] * p[2] + p[2] * p[3] + p[1] * p[3]) / 1e6
    return p[0] / 1e6  # the other types' first parameter is their elements


def cold_weight_mb(kernels: Sequence[Kernel], cache_mb: float, form: str = "beyond") -> float:
    """MiB of a network's weights that are read from farther away than in the kernel samples.

    A sample kernel timed alone reuses its weights from cache on every call; in a network whose weights
    do not fit, each kernel reads them from farther away (onnxruntime's node profile: the 64-channel convs
    of resnet56, 2.6 MiB of them, take 12% longer than the same convs in resnet20). Two readings:
    "beyond" counts the weights beyond `cache_mb` (all of them minus the cache); "spilled" counts, once
    the network's weights exceed the cache, every kernel's weights that fit it alone (at most `cache_mb`
    of each), i.e. what its sample had cached and the network has not: a deep resnet of small convs
    loses all of them, a vgg whose big layers did not fit the cache even alone loses little more.
    """
    return _cold_mb([weight_bytes(k) / 2**20 for k in kernels], cache_mb, form)


def _cold_mb(sizes: Sequence[float], cache_mb: float, form: str) -> float:
    """`cold_weight_mb` on the kernels' weight sizes in MiB."""
    total = sum(sizes)
    if form == "spilled":
        return sum(min(w, cache_mb) for w in sizes) if total > cache_mb else 0.0
    return max(0.0, total - cache_mb)


def _context_design(profile: DeviceProfile) -> tuple[list[str], Any, Any, Any, Any, list[list[Kernel]]]:
    """Per network: predicted ms summed per context key, its kernel count and activation traffic
    (`io_melems`) per context key, measured ms (minus the overhead) and its kernels."""
    import numpy as np

    composites = [(profile.as_run(ks), ms) for ks, ms in profile.fit_composites()]
    types = sorted({context_key(k) for ks, _ in composites for k in ks})
    col = {t: i for i, t in enumerate(types)}
    rows, counts, ios, ys, kept = [], [], [], [], []
    for ks, ms in composites:
        y = ms - profile.overhead_ms
        if y <= 0:
            continue
        pred, _ = profile.predictor.predict_kernels(ks)
        row, count, io = np.zeros(len(types)), np.zeros(len(types)), np.zeros(len(types))
        for p, k in zip(pred, ks, strict=True):
            c = col[context_key(k)]
            row[c] += p
            count[c] += 1
            io[c] += io_melems(k)
        rows.append(row)
        counts.append(count)
        ios.append(io)
        ys.append(y)
        kept.append(ks)
    return types, np.array(rows), np.array(counts), np.array(ios), np.array(ys), kept


def _fit_context(profile: DeviceProfile) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-kernel-type scale factors, call costs and activation-traffic costs and a cold-weights term
    so that overhead + sum_t(scale_t * kernels_t) + sum_t(call_ms_t * count_t) + sum_t(io_ms_t * io_t)
    + cold_ms_per_mb * cold_weight_mb(kernels, cache_mb, cold_form) matches whole networks.

    Kernels in a network cost more or less than alone (another layout between them, the framework's
    calls around each, weights that no longer stay cached). A type's call cost carries what scales with
    the number of its calls rather than with their sizes: torch eager dispatches every op (a pool or an
    add costs its dispatch, whatever its size), onnxruntime reorders layouts around some nodes; one
    shared per-kernel term (the earlier fit) mispredicted vgg8 by 12-22% in torch eager, whose pools and
    linears pay other per-call costs than its convs. A type's io cost carries what scales with its
    activations (`io_melems`): the layout reorders an isolated conv pays and a chain of convs does not
    (one scale per type over-corrected small-image, weight-heavy convs and under-corrected the large
    images); which types get one (`CONTEXT_IO_SETS`) is picked with the cache size. Relative least
    squares, ridge-regularised towards scale 1 and no extra terms (a type the networks barely exercise
    keeps its isolated prediction), the ridge strength, cache size, cold-weights form and io set picked
    by 5-fold cross-validation; scales clipped to [0.25, 4], the cold-weights cost to >= 0. The report
    holds the cross-validated error of the chosen fit (`cv_within_10pct`, `cv_rel_rmse`), `call_ms` per
    type, `per_kernel_ms` (the networks' median call cost per kernel, glue excluded), `io_set`,
    `io_ms_per_melem` per type, `cold_ms_per_mb`, `cache_mb` and `cold_form`.
    """
    import numpy as np

    types, S, C, IO, y, nets = _context_design(profile)
    if len(y) < 8:
        return {}, {}
    n_types = len(types)
    calls = C.sum(axis=1)
    unit = float(np.median(y / np.maximum(calls, 1.0)))  # ms per kernel: the call terms' natural scale
    unit_io = float(np.median(y / np.maximum(IO.sum(axis=1), 1e-6)))  # ms per M elements: the io terms'
    sizes = [[weight_bytes(k) / 2**20 for k in ks] for ks in nets]
    mb = np.array([sum(ws) for ws in sizes])
    unit_mb = float(np.median(y / np.maximum(mb, 1e-3)))  # ms per MiB of weights: the cold term's
    prior = np.concatenate([np.ones(n_types), np.zeros(2 * n_types + 1)])  # scales, calls, io, cold
    lo = np.concatenate([np.full(n_types, 0.25), np.full(2 * n_types, -0.5), [0.0]])
    hi = np.concatenate([np.full(n_types, 4.0), np.full(2 * n_types, 2.0), [2.0]])
    everything = np.arange(len(y))
    order = np.random.default_rng(0).permutation(len(y))
    folds = [order[f::5] for f in range(5)]

    def io_mask(io_set: str) -> np.ndarray:  # a layout's reorders are nothing but activation traffic
        families = CONTEXT_IO_SETS[io_set]
        return np.array([families is None or t.split("/")[0] in families or t.startswith("reorder")
                         for t in types], dtype=float)

    def design(cache_mb: float, form: str, io_set: str) -> np.ndarray:
        cold = np.array([_cold_mb(ws, cache_mb, form) if math.isfinite(cache_mb) else 0.0 for ws in sizes])
        # the io columns outside the set are zero: ridge keeps their terms at 0
        return np.hstack([S, C * unit, IO * unit_io * io_mask(io_set), (cold * unit_mb)[:, None]])

    def solve(X: np.ndarray, idx: np.ndarray, lam: float) -> np.ndarray:
        A = X[idx] / y[idx, None]
        r = math.sqrt(lam * len(idx))
        A = np.vstack([A, r * np.eye(X.shape[1])])
        b = np.concatenate([np.ones(len(idx)), r * prior])
        return np.clip(np.linalg.lstsq(A, b, rcond=None)[0], lo, hi)

    def cv(X: np.ndarray, lam: float) -> np.ndarray:
        err = np.zeros(len(y))
        for test in folds:
            err[test] = (X[test] @ solve(X, np.setdiff1d(everything, test), lam)) / y[test] - 1
        return err

    # no cold-weights term (an infinite cache), or a cache size that enough networks exceed to tell a
    # cold-weights cost from one network's noise, in either reading; each with every io set (fewest
    # terms first, so a tie keeps the simpler fit)
    colds = [(math.inf, "beyond")] + [(c, f) for c in CONTEXT_CACHE_MB if int(np.sum(mb > c)) >= CONTEXT_MIN_COLD
                                      for f in COLD_FORMS]
    shapes = [(c, f, io) for io in CONTEXT_IO_SETS for c, f in colds]
    designs = {shape: design(*shape) for shape in shapes}
    errs = {(shape, lam): cv(designs[shape], lam) for shape in shapes for lam in CONTEXT_LAMBDAS}
    rank = {shape: i for i, shape in enumerate(shapes)}
    mse = {v: round(float(np.mean(e**2)), 12) for v, e in errs.items()}
    best = {io: min((v for v in errs if v[0][2] == io), key=lambda v: (mse[v], -v[1], rank[v[0]]))
            for io in CONTEXT_IO_SETS}
    # more io terms only when they cross-validate clearly better: extra, nearly collinear columns
    # lower a ridge fit's error a little by sharing its penalty, not by modelling anything
    floor = min(math.sqrt(mse[v]) for v in best.values())
    (cache_mb, form, io_set), lam = next(best[io] for io in CONTEXT_IO_SETS
                                         if math.sqrt(mse[best[io]]) <= floor + CONTEXT_IO_MARGIN)
    err = errs[((cache_mb, form, io_set), lam)]
    coef = solve(designs[(cache_mb, form, io_set)], everything, lam)
    call_ms = {t: round(float(a * unit), 6) for t, a in zip(types, coef[n_types:2 * n_types], strict=True)}
    real = np.array([t != "glue" for t in types])  # per_kernel_ms: the non-glue kernels' call costs
    per_call = (C[:, real] * unit) @ coef[n_types:2 * n_types][real]
    real_calls = C[:, real].sum(axis=1)
    raw_err = S.sum(axis=1) / y - 1
    cold = math.isfinite(cache_mb)
    report = {"networks": len(y), "raw_within_10pct": float(np.mean(np.abs(raw_err) <= 0.1)),
              "cv_within_10pct": float(np.mean(np.abs(err) <= 0.1)),
              "cv_within_20pct": float(np.mean(np.abs(err) <= 0.2)),
              "cv_rel_rmse": float(np.sqrt(np.mean(err**2))), "ridge": lam, "call_ms": call_ms,
              "per_kernel_ms": round(float(np.median(per_call / np.maximum(real_calls, 1.0))), 6),
              "io_set": io_set,
              "io_ms_per_melem": {t: round(float(a * unit_io), 6) for t, a, on
                                  in zip(types, coef[2 * n_types:3 * n_types], io_mask(io_set), strict=True)
                                  if on},
              "cold_ms_per_mb": round(float(coef[-1] * unit_mb), 6) if cold else 0.0,
              "cache_mb": cache_mb if cold else None, "cold_form": form if cold else None}
    return {t: round(float(a), 4) for t, a in zip(types, coef[:n_types], strict=True)}, report


def _preferred_align(pred: KernelPredictor) -> tuple[int, dict[str, float]]:
    """Which multiple to round kept channels *up* to: the mean predicted time ratio ceil_a(c) vs c."""
    gains: dict[str, float] = {}
    cs = [c for c in range(9, 129) if c % 16]
    for a in (1, 2, 4, 8, 16):
        ratios = []
        for hw in (7, 14, 28):
            exact = [Kernel("conv", (c, c, 3, 1, hw, hw, 1, 1, 1, 0, 32, 32)) for c in cs]
            up = [Kernel("conv", (math.ceil(c / a) * a,) * 2 + (3, 1, hw, hw, 1, 1, 1, 0, 32, 32)) for c in cs]
            e, _ = pred.predict_kernels(exact)
            u, _ = pred.predict_kernels(up)
            ratios.extend(u / e)
        gains[str(a)] = round(float(sum(ratios) / len(ratios)), 4)
    best = min(gains, key=lambda k: (round(gains[k], 2), int(k)))
    return int(best), gains


# ------------------------------------------------------------------------------ building
#: the sampling of profiles saved before `DeviceProfile.sampling` was recorded
_SAMPLING_OF_VERSION = {STRUCTURED_PROFILE_VERSION: STRUCTURED_SAMPLING, MEDIAN_PROFILE_VERSION: MEDIAN_SAMPLING}


def sampling_key(runtime: str, precision: str) -> str:
    """How this release samples a profile of `runtime` at `precision` (side-file rows and cached profiles
    of another sampling are not reused)."""
    if structured_runtime(runtime):
        return STRUCTURED_SAMPLING
    if precision == "int8":
        return INT8_SAMPLING
    return DATAFLOW_SAMPLING if precision in _blocked_layout_precisions(runtime) else MEDIAN_SAMPLING


def _blocked_layout_precisions(runtime: str) -> tuple[str, ...]:
    from latency_models.runtimes.base import RuntimeError_, get_runtime

    try:
        return tuple(get_runtime(runtime).blocked_layout_precisions)
    except RuntimeError_:
        return ()


def _key(runtime: str, batch: int, threads: int, precision: str, fingerprint: str) -> dict[str, Any]:
    return {"runtime": runtime, "batch": batch, "threads": threads, "precision": precision,
            "fingerprint": fingerprint, "sampling": sampling_key(runtime, precision)}


#: the summary statistics a side file keeps per timed item (raw, baseline not subtracted)
STATS = ("p10", "p25", "median", "p75")


def _timed(results: Sequence[dict[str, Any]], statistic: str) -> tuple[list[float | None], list[list[float] | None]]:
    """Each item's `statistic` and its `STATS` from worker results (or an agent's summaries)."""
    values: list[float | None] = []
    stats: list[list[float] | None] = []
    for r in results:
        if "times_ms" in r:
            s = summarize(r["times_ms"])
        elif "median" in r and r.get("median") is not None:
            s = {k: r.get(k) if r.get(k) is not None else r["median"] for k in STATS}
        else:
            values.append(None)
            stats.append(None)
            continue
        values.append(float(s[statistic]))
        stats.append([round(float(s[k]), 6) for k in STATS])
    return values, stats


def measure_kernels(kernels: Sequence[Kernel], *, runtime: str, batch: int, threads: int, precision: str,
                    device: str | None = None, seed: int = 0, repeats: int = 25,
                    structured: bool | None = None, protocol: Protocol | None = None,
                    stats_out: list | None = None) -> tuple[list[Sample], float]:
    """Measure kernels in isolation (one timing process, interleaved) minus the runtime's per-call overhead.

    Each kernel's figure is the protocol's statistic (default: the runtime's current profile version's):
    the median, what a measured model reports, or (versions 1-2) the fastest decile. `structured`
    (default: whether the runtime has block-sparse kernels) gives conv/linear samples the engine's masks
    for their scheme and block height (`sampling.sample_module`). With the protocol's `references`, the
    process also times `REFERENCE_KERNELS` and each sample records their geometric mean (`Sample.ref`).
    `stats_out` receives the baseline's, the references' and each measured sample's `STATS` (side file).
    """
    from latency_models.measure import run_worker
    from latency_models.runtimes.base import get_runtime
    from latency_models.sampling import baseline_module, measured_params, sample_module

    rt = get_runtime(runtime)
    protocol = protocol or PROTOCOLS[current_version(rt.name)]
    rng = random.Random(seed)
    import torch

    if structured is None:
        structured = bool(rt.structured_sparsity)
    torch.manual_seed(seed)
    refs = reference_modules(batch) if protocol.references else []
    mods = ([baseline_module(batch, protocol.identity_baseline)] + refs
            + [sample_module(k, batch, rng, structured) for k in kernels])
    artifacts, shapes = [], []
    for module, shape in mods:
        artifacts.append(rt.export_kernel(module.eval(), torch.randn(*shape), precision))
        shapes.append(shape)
    if device:
        from latency_models.agent import AgentClient

        results = AgentClient(device).measure_many(artifacts, shapes, runtime=rt.name, threads=threads,
                                                   precision=precision, warmup=5, repeats=repeats)
    else:
        results = run_worker(rt.name, artifacts, shapes, threads=threads, warmup=5, repeats=repeats,
                             rounds=protocol.kernel_rounds, target_ms=protocol.kernel_target_ms)
    values, stats = _timed(results, protocol.statistic)
    if values[0] is None:
        raise RuntimeError(f"the baseline model failed on {rt.name}: {results[0].get('error')}")
    base = values[0]
    ref = reference_time(values[1:1 + len(refs)]) if refs else None
    out = []
    if stats_out is not None:
        stats_out.extend(stats[:1 + len(refs)])
    skip = 1 + len(refs)
    for (module, shape), k, m, st in zip(mods[skip:], kernels, values[skip:], stats[skip:], strict=True):
        if m is not None:
            out.append(Sample(measured_params(k, module, shape), max(MIN_KERNEL_MS, m - base), ref))
            if stats_out is not None:
                stats_out.append(st)
    return out, base


def reference_modules(batch: int) -> list[tuple[Any, tuple[int, ...]]]:
    """The sample modules of `REFERENCE_KERNELS` (fixed weights: the same modules in every process).

    Public so that a measurement can time them beside its models and tell how fast its timing process ran
    against a profile's build (`DeviceProfile.speed_reference`), as the latency benchmark reports."""
    import torch

    from latency_models.sampling import sample_module

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        rng = random.Random(0)
        return [sample_module(k, batch, rng) for k in REFERENCE_KERNELS]
    finally:
        torch.random.set_rng_state(state)


def reference_artifacts(rt: Any, batch: int, precision: str = "fp32",
                        modules: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
                        ) -> tuple[list[bytes], list[tuple[int, ...]]]:
    """The reference kernels exported for runtime `rt` (`modules`: `reference_modules(batch)` already
    built), with their input shapes: what a timing process adds to tell its speed."""
    import torch

    artifacts, shapes = [], []
    for module, shape in modules if modules is not None else reference_modules(batch):
        artifacts.append(rt.export_kernel(module.eval(), torch.randn(*shape), precision))
        shapes.append(shape)
    return artifacts, shapes


def reference_time(values: Sequence[float | None]) -> float | None:
    """The geometric mean of the reference kernels' times in one process (None if one failed)."""
    if not values or any(v is None or v <= 0 for v in values):
        return None
    return round(math.exp(sum(math.log(v) for v in values) / len(values)), 6)


def measure_networks(rng: random.Random, n: int, *, runtime: str, batch: int, threads: int, precision: str,
                     device: str | None = None, protocol: Protocol | None = None,
                     stats_out: list | None = None,
                     families: list | None = None) -> tuple[list[tuple], float]:
    """Measure `n` random whole networks (interleaved, one timing process) with their kernels.

    Timed with the protocol's network settings (version 3: `measure_latency`'s, many interleaved slices)
    and fitted on its statistic; kernels as `kernels_for_model` reads them (masked layers' density).
    With the protocol's `references` each network carries the process's reference time as a third element.
    `stats_out` / `families` receive the baseline's, the references' and each network's `STATS` / model
    class name.
    """
    import torch

    from latency_models.measure import run_worker
    from latency_models.runtimes.base import get_runtime
    from latency_models.sampling import baseline_module, random_network

    rt = get_runtime(runtime)
    protocol = protocol or PROTOCOLS[current_version(rt.name)]
    nets = [random_network(rng) for _ in range(n)]
    base_mod, base_shape = baseline_module(batch, protocol.identity_baseline)
    artifacts = [rt.export_kernel(base_mod, torch.randn(*base_shape), precision)]
    shapes: list[tuple[int, ...]] = [base_shape]
    refs = reference_modules(batch) if protocol.references else []
    ref_artifacts, ref_shapes = reference_artifacts(rt, batch, precision, refs)
    artifacts += ref_artifacts
    shapes += ref_shapes
    for model, shape in nets:
        artifacts.append(rt.export_network(model, torch.randn(batch, *shape), precision))
        shapes.append((batch, *shape))
    if device:
        from latency_models.agent import AgentClient

        results = AgentClient(device).measure_many(artifacts, shapes, runtime=rt.name, threads=threads,
                                                   precision=precision, warmup=5, repeats=protocol.network_repeats)
    else:
        results = run_worker(rt.name, artifacts, shapes, threads=threads, warmup=5, repeats=protocol.network_repeats,
                             rounds=protocol.network_rounds, target_ms=protocol.network_target_ms)
    values, stats = _timed(results, protocol.statistic)
    if stats_out is not None:
        stats_out.extend(stats[:1 + len(refs)])
    ref = reference_time(values[1:1 + len(refs)]) if refs else None
    out = []
    skip = 1 + len(refs)
    for (model, shape), m, st in zip(nets, values[skip:], stats[skip:], strict=True):
        if m is not None:
            out.append((kernels_for_model(model, shape), m) + ((ref,) if ref else ()))
            if stats_out is not None:
                stats_out.append(st)
            if families is not None:
                families.append(type(model).__name__)
    return out, values[0] or 0.0


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def build_profile(runtime: str = "onnxruntime", *, minutes: float = 1.5, batch: int = 1, threads: int = 1,
                  precision: str = "fp32", device: str | None = None, samples_path: str | Path | None = None,
                  progress: ProgressFn | None = None, seed: int = 0, chunk: int | None = None,
                  max_samples: int | None = None, composite_share: float = 0.35,
                  composite_chunk: int = 6) -> DeviceProfile:
    """Sample kernel configurations, measure them within a time budget, fit, return the profile.

    Resumable: every measured chunk is appended to `samples_path` (JSON lines, with each item's p10 /
    quartiles) and reused by the next call with the same device/runtime/settings/sampling, so an
    interrupted or repeated build only adds samples. `composite_share` of the time goes to whole
    random networks (the context calibration). `chunk`: kernels per timing process (default 24; version
    3 profiles 48, as their processes are normalised by their reference kernels and a torch process
    takes ~2 s to start).
    """
    from latency_models.sampling import random_kernel, zoo_prior

    if device:
        from latency_models.agent import AgentClient

        info = AgentClient(device).info()
        fingerprint = info["fingerprint"]
    else:
        info = device_info()
        fingerprint = device_fingerprint(info)
    key = _key(runtime, batch, threads, precision, fingerprint)
    version = current_version(runtime)
    protocol = PROTOCOLS[version]
    chunk = chunk or (48 if protocol.references else 24)
    samples: list[Sample] = []
    baselines: list[float] = []
    composites: list[tuple] = []
    side = Path(samples_path) if samples_path else None
    if side and side.is_file():
        for line in side.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupt
            if row.get("key") == key:
                samples.extend(Sample.from_list(r) for r in row.get("samples", []))
                composites.extend(_composites_from(row.get("composites", [])))
                baselines.append(row["baseline_ms"])
        if samples and progress:
            progress(f"profile: reusing {len(samples)} measured samples from {side}")
    rng = random.Random(seed * 7919 + len(samples) + 104729 * len(composites))
    prior = zoo_prior()
    structured = structured_runtime(runtime)
    types, weights = zip(*(KERNEL_MIX if version != MEDIAN_PROFILE_VERSION else MEDIAN_KERNEL_MIX), strict=True)
    start = time.monotonic()
    deadline = start + minutes * 60.0
    kernel_deadline = start + minutes * 60.0 * (1.0 - composite_share)

    def append(row: dict[str, Any]) -> None:
        if side:
            side.parent.mkdir(parents=True, exist_ok=True)
            with side.open("a") as f:
                f.write(json.dumps({"key": key, **row}) + "\n")

    while time.monotonic() < kernel_deadline and (max_samples is None or len(samples) < max_samples):
        ks = [random_kernel(rng, prior, [rng.choices(types, weights)[0]], structured=structured)
              for _ in range(chunk)]
        stats: list = []
        got, base = measure_kernels(ks, runtime=runtime, batch=batch, threads=threads, precision=precision,
                                    device=device, seed=rng.randrange(1 << 30), structured=structured,
                                    protocol=protocol, stats_out=stats)
        samples.extend(got)
        baselines.append(base)
        append({"baseline_ms": base, "samples": [s.to_list() for s in got], "stats": stats,
                "references": len(REFERENCE_KERNELS) if protocol.references else 0})
        if progress:
            left = max(0.0, deadline - time.monotonic())
            progress(f"profile: {len(samples)} kernel samples measured on {runtime} (batch {batch}, "
                     f"{threads} thread(s)); {left:.0f} s left")
    while time.monotonic() < deadline and composite_share > 0:
        stats, families = [], []
        got_c, base = measure_networks(rng, composite_chunk, runtime=runtime, batch=batch, threads=threads,
                                       precision=precision, device=device, protocol=protocol,
                                       stats_out=stats, families=families)
        composites.extend(got_c)
        baselines.append(base)
        append({"baseline_ms": base, "composites": [_composite_row(c) for c in got_c], "stats": stats,
                "families": families, "references": len(REFERENCE_KERNELS) if protocol.references else 0})
        if progress:
            left = max(0.0, deadline - time.monotonic())
            progress(f"profile: {len(composites)} whole random networks measured for the context calibration; "
                     f"{left:.0f} s left")
    if not samples:
        raise ProfileError("no kernel was measured: give the profiler more time (--minutes)")
    if progress:
        progress(f"profile: fitting {len(samples)} samples")
    from latency_models.runtimes.base import get_runtime

    layout = (get_runtime(runtime).layout_block(precision, info.get("cpu_flags") or (), info.get("machine", ""))
              if key["sampling"] == DATAFLOW_SAMPLING else 0)
    profile = DeviceProfile(device=info["device"], runtime=runtime, batch=batch, threads=threads,
                            precision=precision, versions=info["versions"], fingerprint=fingerprint,
                            samples=samples, overhead_ms=_median(baselines), device_url=device,
                            created=time.strftime("%Y-%m-%dT%H:%M:%S"), composites=composites,
                            format_version=version, sampling=key["sampling"], layout_block=layout)
    return profile.fit()


def default_profile_path(runtime: str, batch: int, threads: int, precision: str,
                         cache_dir: str | Path | None = None, fingerprint: str | None = None) -> Path:
    from automl.training import default_home

    root = Path(cache_dir) if cache_dir else default_home() / "profiles"
    return root / (fingerprint or device_fingerprint()) / f"{runtime}-b{batch}-t{threads}-{precision}.json"


def get_or_build_profile(runtime: str = "onnxruntime", *, minutes: float = 1.5, batch: int = 1, threads: int = 1,
                         precision: str = "fp32", cache_dir: str | Path | None = None,
                         progress: ProgressFn | None = None, device: str | None = None) -> DeviceProfile:
    """The cached profile for this machine (or agent) and settings; built in about `minutes` on first use."""
    fingerprint = None
    if device:
        from latency_models.agent import AgentClient

        fingerprint = AgentClient(device).info()["fingerprint"]
    path = default_profile_path(runtime, batch, threads, precision, cache_dir, fingerprint)
    if path.is_file():
        try:
            cached = DeviceProfile.load(path)
            want = sampling_key(runtime, precision)
            if cached.format_version == current_version(runtime) and cached.sampling == want:
                return cached
            if progress and cached.format_version != current_version(runtime):
                # sparse-cpu: random masks only, it cannot know what blocks gain; others: fitted on the
                # fastest decile, not the median a measurement reports
                progress(f"profile: cached {path} is of version {cached.format_version}, this release builds "
                         f"version {current_version(runtime)} for {runtime}; rebuilding")
            elif progress:
                progress(f"profile: cached {path} was sampled as '{cached.sampling}', this release samples "
                         f"'{want}' (int8: whole networks exported as deployed; onnxruntime fp32: networks "
                         "with their dataflow, for the NCHWc layout's reorders); rebuilding")
        except ProfileError as exc:
            if progress:
                progress(f"profile: cached {path} unusable ({exc}); rebuilding")
    profile = build_profile(runtime, minutes=minutes, batch=batch, threads=threads, precision=precision,
                            device=device, samples_path=path.with_suffix(".samples.jsonl"), progress=progress)
    profile.save(path)
    if progress:
        progress(f"profile: saved {path}")
    return profile


# ------------------------------------------------------------------------------ predicting
_SKELETONS: dict[tuple, Any] = {}


def _skeleton_for(space: Any):
    layers = getattr(space, "layers", [])
    num_classes = 10
    if layers and getattr(layers[-1].layer, "kind", "") == "linear":
        num_classes = layers[-1].layer.out_channels
    shape = tuple(space.input_shape)
    key = (space.model_name, shape, num_classes)
    if key not in _SKELETONS:
        from automl.models import build_model

        model = build_model(space.model_name, shape[0], num_classes, shape[1])
        _SKELETONS[key] = skeleton(model, shape)
    return _SKELETONS[key]


def policy_kernels(space: Any, policy: Any) -> list[Kernel]:
    """Kernels of `policy` applied to `space`'s model, from the cached dense trace (no re-tracing)."""
    return compressed_kernels(_skeleton_for(space), space.compressed_layers(policy))


def predict_policy(profile: DeviceProfile, space: Any, policy: Any) -> LatencyEstimate:
    """Predicted latency of `policy` on `space`'s model: sum of kernel predictions + the runtime's overhead."""
    return profile.predict_kernels(policy_kernels(space, policy))


def predict_model(profile: DeviceProfile, model: Any, input_shape: Sequence[int]) -> LatencyEstimate:
    """Predicted latency of a concrete (possibly pruned) torch model; traces it once (~10 ms)."""
    return profile.predict_kernels(kernels_for_model(model, input_shape))


# ------------------------------------------------------------------------------ deploy-verified pairs
class PairStore:
    """Predicted-vs-measured pairs (JSON lines): the evidence a profile is refitted from."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def add(self, predicted: LatencyEstimate, measured: LatencyEstimate, *, raw_predicted_ms: float | None = None,
            model: str = "", policy: dict[str, Any] | None = None) -> None:
        if predicted.source != "predicted" or measured.source != "measured":
            raise ValueError("a pair is one predicted and one measured estimate")
        row = {"model": model, "predicted": predicted.to_dict(), "measured": measured.to_dict(),
               "raw_predicted_ms": raw_predicted_ms if raw_predicted_ms is not None else predicted.ms,
               "policy": policy, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def refit_from_pairs(profile: DeviceProfile, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fit measured ~ a * raw_predicted + b on pairs that match the profile's runtime/batch/threads/precision."""
    xs, ys = [], []
    for p in pairs:
        m = p["measured"]
        if (m["runtime"], m["batch"], m["threads"], m["precision"]) != (profile.runtime, profile.batch,
                                                                         profile.threads, profile.precision):
            continue
        xs.append(float(p["raw_predicted_ms"]))
        ys.append(float(m["ms"]))
    if not xs:
        raise ProfileError("no pair matches the profile's runtime, batch, threads and precision")
    before = [abs(profile.calibration[0] * x + profile.calibration[1] - y) / y for x, y in zip(xs, ys, strict=True)]
    if len(xs) >= 3 and max(xs) > min(xs) * 1.05:
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        b = my - a * mx
    else:
        a, b = _median([y / x for x, y in zip(xs, ys, strict=True)]), 0.0
    profile.calibration = (float(a), float(b))
    after = [abs(a * x + b - y) / y for x, y in zip(xs, ys, strict=True)]
    return {"pairs": len(xs), "calibration": [a, b],
            "within_10pct_before": sum(e <= 0.1 for e in before) / len(xs),
            "within_10pct_after": sum(e <= 0.1 for e in after) / len(xs)}
