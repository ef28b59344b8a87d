"""Simulated (fake) quantization per layer, driven by a CompressionPolicy.

Why fake-quant: bit-widths below 8 have no fast CPU kernel here, yet a search must see the accuracy they
cost. Fake-quant rounds weights and activations to the integer grid and back to float, so the forward pass
computes exactly what an integer kernel of that width would (up to accumulation order), and the straight-
through estimator (STE) lets the model fine-tune with the rounding in place. 8-bit layers additionally have
a real int8 path (`search_spaces.export.quantize_onnx_int8`).

Design (torchao-style): a config object says *what* (`WeightQuantConfig`, `ActQuantConfig`), a handler
registered for the config type says *how*, and one verb, `quantize_(model, {fqn: [configs]})`, applies it.
`attach_fake_quant(model, policy, calib)` is the entry point `apply_policy` calls: it turns the policy's
per-layer `weight_bits` / `act_bits` into configs, runs `quantize_`, then calibrates activation ranges.

Numerics:
- weights: per-output-channel symmetric, integer grid [-(2^(b-1)-1), 2^(b-1)-1], scale = max|w| / qmax,
  recomputed from the live weights on every forward (so fine-tuning moves the grid with the weights).
  Zero maps to zero exactly, so pruning masks stay intact.
- activations (the layer's *input*): per-tensor affine, unsigned grid [0, 2^b - 1] with a zero point, range
  from calibration batches (observer registry: ``minmax`` or ``percentile``), then frozen. Unsigned with a
  zero point is what onnxruntime's U8 activations use, so 8-bit fake-quant predicts the int8 model.
- gradients: torch's fake_quantize ops implement the STE (identity inside the clamp range, zero outside).

A quantized layer keeps its qualified name, its parameters (same Parameter objects, so optimizers and masks
still reference them) and its hooks: the module's class is swapped for a subclass whose forward quantizes
(the technique torch's own parametrize uses). `strip_fake_quant` swaps it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from automl.policy import MAX_BITS, MIN_BITS, CompressionPolicy, PolicyError

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class QuantizationError(PolicyError):
    """A quantization request that cannot be honoured (bad bits, missing calibration data, unknown layer)."""


# ------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class WeightQuantConfig:
    """Per-output-channel symmetric fake-quant of a layer's weight."""

    bits: int

    def __post_init__(self) -> None:
        _check_bits(self.bits, "weight_bits")


@dataclass(frozen=True)
class ActQuantConfig:
    """Per-tensor affine (unsigned, zero point) fake-quant of a layer's input, calibrated then frozen."""

    bits: int
    observer: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        _check_bits(self.bits, "act_bits")
        if self.observer not in OBSERVERS:
            raise QuantizationError(f"unknown observer '{self.observer}'; choose one of {sorted(OBSERVERS)}",
                                    field_name="observer")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizationError(f"percentile must lie in (50, 100], got {self.percentile}",
                                    field_name="percentile")


def _check_bits(bits: int, name: str) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizationError(f"bit-width must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}",
                                field_name=name)


# ------------------------------------------------------------------------------ observers
class Observer(nn.Module):
    """Collects an activation range over calibration batches; `range()` gives the frozen (lo, hi)."""

    def __init__(self, config: ActQuantConfig):
        super().__init__()
        self.config = config
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0))

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Global min / max: never clips calibration data; what onnxruntime's MinMax calibrator does."""

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        self.lo = torch.minimum(self.lo, x.min().float())
        self.hi = torch.maximum(self.hi, x.max().float())
        self.batches += 1


class PercentileObserver(Observer):
    """Mean over batches of the low/high percentiles: clips rare outliers, which helps at low bit-widths."""

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().float().flatten()
        if flat.numel() > 1 << 20:  # torch.quantile has an input-size limit; a strided sample is plenty
            flat = flat[:: flat.numel() // (1 << 20) + 1]
        q = self.config.percentile / 100.0
        lo, hi = torch.quantile(flat, torch.tensor([1.0 - q, q]))
        n = self.batches.float()
        if self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = (self.lo * n + lo) / (n + 1)
            self.hi = (self.hi * n + hi) / (n + 1)
        self.batches += 1


OBSERVERS: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "percentile": PercentileObserver}


# ------------------------------------------------------------------------------ fake-quant modules
def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake-quant (axis 0) with the STE; zeros stay exactly zero."""
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


def affine_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of an unsigned grid [0, 2^b-1] covering [min(lo,0), max(hi,0)] (0 exact)."""
    qmax = 2**bits - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / qmax, 1e-8)
    zero_point = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zero_point


class ActFakeQuant(nn.Module):
    """Observes its input while `calibrating`, then fake-quantizes it with the frozen range."""

    def __init__(self, config: ActQuantConfig):
        super().__init__()
        self.config = config
        self.observer = OBSERVERS[config.observer](config)
        self.calibrating = False
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("ready", torch.tensor(False))

    def freeze(self) -> None:
        if self.observer.batches == 0:
            raise QuantizationError("activation observer saw no data: the layer was not reached by the "
                                    "calibration batches")
        scale, zp = affine_qparams(float(self.observer.lo), float(self.observer.hi), self.config.bits)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        self.ready.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.observe(x)
            return x
        if not bool(self.ready):
            raise QuantizationError("activation fake-quant used before calibration; pass calib batches to "
                                    "attach_fake_quant (or call calibrate_fake_quant)")
        return torch.fake_quantize_per_tensor_affine(x, float(self.scale), int(self.zero_point), 0,
                                                     2**self.config.bits - 1)


class _FakeQuantMixin:
    """Forward of a quantized Conv2d / Linear; mixed in front of the layer's own class."""

    weight_quant: WeightQuantConfig | None
    act_fake_quant: ActFakeQuant | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fake_quant is not None:
            x = self.act_fake_quant(x)
        weight = self.weight
        if self.weight_quant is not None:
            weight = fake_quant_weight(weight, self.weight_quant.bits)
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(x, weight, self.bias)
        return F.linear(x, weight, self.bias)


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    _fq_original_class = nn.Conv2d


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    _fq_original_class = nn.Linear


# Named module-level classes for the common cases keep `torch.save(model)` picklable; subclasses of
# Conv2d / Linear get a class made on the fly.
_CLASS_CACHE: dict[type, type] = {nn.Conv2d: FakeQuantConv2d, nn.Linear: FakeQuantLinear}


def _fake_quant_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        _CLASS_CACHE[cls] = type(f"FakeQuant{cls.__name__}", (_FakeQuantMixin, cls), {"_fq_original_class": cls})
    return _CLASS_CACHE[cls]


def is_fake_quantized(module: nn.Module) -> bool:
    return isinstance(module, _FakeQuantMixin)


def _ensure_swapped(module: nn.Module) -> None:
    if not is_fake_quantized(module):
        if not isinstance(module, QUANTIZABLE):
            raise QuantizationError(f"cannot fake-quantize a {type(module).__name__}; only Conv2d and Linear")
        module.__class__ = _fake_quant_class(type(module))
        module.weight_quant = None
        module.act_fake_quant = None


# ------------------------------------------------------------------------------ handler registry + the verb
QuantConfig = WeightQuantConfig | ActQuantConfig
HANDLERS: dict[type, Callable[[nn.Module, object], None]] = {}


def register_handler(config_type: type) -> Callable:
    """Register how a config type is applied to one module (torchao's handler idea)."""

    def deco(fn: Callable[[nn.Module, object], None]) -> Callable[[nn.Module, object], None]:
        HANDLERS[config_type] = fn
        return fn

    return deco


@register_handler(WeightQuantConfig)
def _apply_weight_quant(module: nn.Module, config: WeightQuantConfig) -> None:
    _ensure_swapped(module)
    module.weight_quant = config


@register_handler(ActQuantConfig)
def _apply_act_quant(module: nn.Module, config: ActQuantConfig) -> None:
    _ensure_swapped(module)
    module.act_fake_quant = ActFakeQuant(config).to(module.weight.device)


def quantize_(model: nn.Module, configs: Mapping[str, Iterable[QuantConfig]]) -> nn.Module:
    """Apply quantization configs to modules by fully qualified name, in place."""
    modules = dict(model.named_modules())
    for name, layer_configs in configs.items():
        if name not in modules:
            raise QuantizationError(f"no module named '{name}' in {type(model).__name__}", layer=name)
        for config in layer_configs:
            handler = HANDLERS.get(type(config))
            if handler is None:
                raise QuantizationError(f"no quantization handler for {type(config).__name__}; registered: "
                                        f"{[t.__name__ for t in HANDLERS]}", layer=name)
            handler(modules[name], config)
    return model


# ------------------------------------------------------------------------------ policy entry points
def policy_configs(model: nn.Module, policy: CompressionPolicy, *, observer: str = "minmax",
                   percentile: float = 99.99) -> dict[str, list[QuantConfig]]:
    """Turn a policy's per-layer bit-widths into quantization configs (None bits = stays float)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    unknown = [name for name in policy.layers if name not in layers]
    if unknown:
        raise QuantizationError(f"policy names layer(s) {unknown[:3]} that are not Conv2d/Linear modules of "
                                f"the model; quantizable layers: {list(layers)[:6]}...", layer=unknown[0])
    configs: dict[str, list[QuantConfig]] = {}
    for name in layers:
        decision = policy.decision(name)
        layer_configs: list[QuantConfig] = []
        if decision.weight_bits is not None:
            layer_configs.append(WeightQuantConfig(decision.weight_bits))
        if decision.act_bits is not None:
            layer_configs.append(ActQuantConfig(decision.act_bits, observer, percentile))
        if layer_configs:
            configs[name] = layer_configs
    return configs


@torch.no_grad()
def calibrate_fake_quant(model: nn.Module, calib: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Run calibration batches through the model in eval mode, then freeze every activation range."""
    quants = [m.act_fake_quant for m in model.modules() if is_fake_quantized(m) and m.act_fake_quant is not None]
    if not quants:
        return model
    was_training = model.training
    model.eval()
    for q in quants:
        q.calibrating = True
    try:
        for i in range(0, len(calib), batch_size):
            model(calib[i:i + batch_size])
    finally:
        for q in quants:
            q.calibrating = False
        model.train(was_training)
    for q in quants:
        q.freeze()
    return model


def attach_fake_quant(model: nn.Module, policy: CompressionPolicy, calib: torch.Tensor | None, *,
                      observer: str = "minmax", percentile: float = 99.99) -> nn.Module:
    """Fake-quantize the layers whose policy decision has weight_bits / act_bits (in place; returns model).

    Activation ranges are calibrated on `calib` (a batch of model inputs, a few hundred images is plenty)
    and frozen; weights are quantized on the fly so the model can be fine-tuned with the STE, and pruning
    masks (zeros) are preserved because zero is on every symmetric grid.
    """
    configs = policy_configs(model, policy, observer=observer, percentile=percentile)
    needs_calib = any(isinstance(c, ActQuantConfig) for cs in configs.values() for c in cs)
    if needs_calib and (calib is None or len(calib) == 0):
        raise QuantizationError("the policy quantizes activations (act_bits), which needs calibration data: "
                                "pass calib= a tensor of model inputs (e.g. 256 training images)",
                                field_name="act_bits")
    quantize_(model, configs)
    if needs_calib:
        calibrate_fake_quant(model, calib)
    return model


@torch.no_grad()
def strip_fake_quant(model: nn.Module, *, bake_weights: bool = False) -> nn.Module:
    """Remove fake-quant in place and return the float model (for ONNX export or a real int8 quantizer).

    With `bake_weights` the weights are replaced by their quantized values, so the float model computes
    what the fake-quant weights did (activation rounding is dropped either way).
    """
    for module in model.modules():
        if is_fake_quantized(module):
            if bake_weights and module.weight_quant is not None:
                module.weight.copy_(fake_quant_weight(module.weight, module.weight_quant.bits))
            original = type(module)._fq_original_class
            del module.weight_quant
            del module.act_fake_quant
            module.__class__ = original
    return model


def quantized_layers(model: nn.Module) -> dict[str, dict[str, int | None]]:
    """Which layers are fake-quantized and at which widths (for reports)."""
    out = {}
    for name, module in model.named_modules():
        if is_fake_quantized(module):
            out[name] = {"weight_bits": module.weight_quant.bits if module.weight_quant else None,
                         "act_bits": module.act_fake_quant.config.bits if module.act_fake_quant else None}
    return out
