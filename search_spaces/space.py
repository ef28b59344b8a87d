"""The search space: per-layer allowed choices, and the decoding of agent choices into valid policies.

Default scheme support per layer kind (`SpaceConfig.schemes`) and why:

* conv3x3 -> unstructured, channel, nm, block1xn, pattern, block_punched: every scheme applies; pattern
  pruning exists for 3x3 kernels only.
* conv1x1 / conv (other kernels) -> unstructured, channel, nm, block1xn, block_punched: no 3x3 kernel
  for a pattern.
* depthwise -> unstructured, channel: a depthwise GEMM row holds kh*kw (9) weights, too few for N:M
  groups, 1xN blocks (each output kernel sees a different input channel) or punched blocks; its
  channels are coupled to its producer (pruning them follows the group's leader).
* linear / attention -> unstructured, channel (never the classifier's outputs; attention projections in
  whole heads), nm, block1xn, block_punched.
"dense" is always allowed. A scheme is offered on a layer only with the parameters that fit the
layer's shape (m divides the GEMM columns, n divides the output channels, block sides divide both).

Channel pruning of one layer changes its neighbours' shapes (see `search_spaces.channel` for the
coupled-channel rule), so a structural parameter that fit the dense layer may not fit the shrunk one.
`decode` repairs that (nearest fitting option of the same scheme, else unstructured at the same
density) and records each repair in `policy.metadata["repairs"]`; `validate` checks the shrunk shapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from automl.models.layers import LayerInfo, prunable_layers
from automl.policy import CompressionPolicy, LayerDecision, LayerShape, PolicyError
from search_spaces.channel import ChannelGroup, find_channel_groups, resolve_kept
from search_spaces.schemes import SCHEME_REGISTRY, SchemeError, get_scheme
from search_spaces.schemes.base import bare_message

SPACE_VERSION = 1

DEFAULT_SCHEMES: dict[str, tuple[str, ...]] = {
    "conv3x3": ("unstructured", "channel", "nm", "block1xn", "pattern", "block_punched"),
    "conv1x1": ("unstructured", "channel", "nm", "block1xn", "block_punched"),
    "conv": ("unstructured", "channel", "nm", "block1xn", "block_punched"),
    "depthwise": ("unstructured", "channel"),
    "linear": ("unstructured", "channel", "nm", "block1xn", "block_punched"),
    "attention": ("unstructured", "channel", "nm", "block1xn", "block_punched"),
}
_SPARSE_SCHEMES = ("unstructured", "channel", "block1xn", "pattern", "block_punched")  # take `sparsity`


@dataclass(frozen=True)
class SpaceConfig:
    """What the space offers; the defaults are the project's standard space."""

    schemes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SCHEMES))
    sparsities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    nm: tuple[tuple[int, int], ...] = ((2, 4), (1, 4), (4, 8), (2, 8))
    block_n: tuple[int, ...] = (2, 4, 8, 16)
    blocks: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (16, 16), (4, 9))
    aligns: tuple[int, ...] = (1, 4, 8, 16)
    weight_bits: tuple[int | None, ...] = (None, 8, 6, 4)
    act_bits: tuple[int | None, ...] = (None, 8)

    def __post_init__(self) -> None:
        for kind, names in self.schemes.items():
            for name in names:
                if name not in SCHEME_REGISTRY:
                    raise SchemeError(f"unknown scheme '{name}' for kind '{kind}' in the space config; "
                                      f"registered: {', '.join(SCHEME_REGISTRY)}", field_name="schemes")
        if not self.sparsities or any(not 0.0 <= s < 1.0 for s in self.sparsities):
            raise SchemeError(f"sparsities must be a non-empty grid in [0, 1), got {self.sparsities}",
                              field_name="sparsities")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schemes"] = {k: list(v) for k, v in self.schemes.items()}
        return json.loads(json.dumps(d))  # plain lists, equal to what from_json reads back

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpaceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SchemeError(f"unknown space config field(s) {unknown}; allowed: {sorted(known)}",
                              field_name=unknown[0])
        v = dict(data)
        if "schemes" in v:
            v["schemes"] = {k: tuple(s) for k, s in v["schemes"].items()}
        for key in ("sparsities", "block_n", "aligns", "weight_bits", "act_bits"):
            if key in v:
                v[key] = tuple(v[key])
        for key in ("nm", "blocks"):
            if key in v:
                v[key] = tuple(tuple(int(i) for i in p) for p in v[key])
        return cls(**v)


@dataclass(frozen=True)
class LayerChoices:
    """One layer's allowed choices (already filtered to those that fit its dense shape)."""

    layer: LayerInfo
    schemes: tuple[str, ...]
    sparsities: tuple[float, ...]
    nm: tuple[tuple[int, int], ...]
    block_n: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]
    aligns: tuple[int, ...]
    weight_bits: tuple[int | None, ...]
    act_bits: tuple[int | None, ...]
    channel_group: int | None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layer"}
        d["layer"] = asdict(self.layer)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerChoices:
        info = dict(d["layer"])
        for key in ("kernel_size", "stride", "input_hw", "output_hw"):
            info[key] = tuple(info[key])
        return cls(layer=LayerInfo(**info), schemes=tuple(d["schemes"]), sparsities=tuple(d["sparsities"]),
                   nm=tuple(tuple(p) for p in d["nm"]), block_n=tuple(d["block_n"]),
                   blocks=tuple(tuple(p) for p in d["blocks"]), aligns=tuple(d["aligns"]),
                   weight_bits=tuple(d["weight_bits"]), act_bits=tuple(d["act_bits"]),
                   channel_group=d["channel_group"])


@dataclass(frozen=True)
class Dimension:
    """One flat search dimension for agents / Optuna: `name` is "<layer>:<param>"."""

    name: str
    layer: str
    param: str  # scheme | sparsity | nm | block_n | block | align | weight_bits | act_bits
    type: str  # categorical | float
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class CompressedLayer:
    """A layer after a policy: resolved shapes and the scheme's exact density. Latency-model input."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    tokens: int
    scheme: str
    sparsity: float
    density: float  # fraction of the (shrunk) layer's weights kept
    n: int | None
    m: int | None
    block: tuple[int, int] | None
    weight_bits: int | None
    act_bits: int | None
    macs: int  # dense MACs of the shrunk layer, per sample
    effective_macs: float  # macs * density: what a kernel exploiting the sparsity would execute

    @property
    def gemm_cols(self) -> int:
        return (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    @property
    def weights(self) -> int:
        return self.out_channels * self.gemm_cols


def _fits(shape: LayerShape, decision: LayerDecision) -> bool:
    try:
        decision.check_against(shape)
        return True
    except PolicyError:
        return False


def _parse_pair(value: Any, sep: str, what: str, layer: str) -> tuple[int, int]:
    if isinstance(value, str) and sep in value:
        a, b = value.split(sep, 1)
        return int(a), int(b)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise SchemeError(f"expected {what} as 'a{sep}b' or [a, b], got {value!r}", layer, what)


class SearchSpace:
    """Per-layer choices for one model at one input shape, plus its coupled channel groups."""

    def __init__(self, model_name: str, input_shape: tuple[int, int, int], layers: list[LayerChoices],
                 groups: list[ChannelGroup], config: SpaceConfig | None = None, other_params: int = 0):
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.layers = layers
        self.groups = groups
        self.config = config or SpaceConfig()
        self.other_params = other_params  # parameters outside prunable layers (norms, embeddings)
        self._by_name = {lc.layer.name: lc for lc in layers}
        self._out_group = {name: g.id for g in groups for name in g.out_members}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, model_name: str, input_shape: tuple[int, int, int],
                   config: SpaceConfig | None = None) -> SearchSpace:
        config = config or SpaceConfig()
        infos = prunable_layers(model, tuple(input_shape))
        groups = find_channel_groups(model, torch.zeros(1, *input_shape), infos)
        out_group = {name: g.id for g in groups for name in g.out_members}
        layers = [cls._choices_for(info, config, out_group.get(info.name)) for info in infos]
        other = sum(p.numel() for p in model.parameters()) - sum(i.params for i in infos)
        return cls(model_name, tuple(input_shape), layers, groups, config, other_params=other)

    @staticmethod
    def _choices_for(info: LayerInfo, config: SpaceConfig, group: int | None) -> LayerChoices:
        shape = info.shape()
        nm = tuple(p for p in config.nm if _fits(shape, LayerDecision("nm", n=p[0], m=p[1])))
        block_n = tuple(n for n in config.block_n if _fits(shape, LayerDecision("block1xn", n=n)))
        blocks = tuple(b for b in config.blocks if _fits(shape, LayerDecision("block_punched", block=b)))
        schemes = ["dense"]
        for name in config.schemes.get(info.kind, ()):
            if info.kind not in SCHEME_REGISTRY[name].supported_kinds or name in schemes:
                continue
            if ((name == "channel" and group is None) or (name == "nm" and not nm)
                    or (name == "block1xn" and not block_n) or (name == "block_punched" and not blocks)
                    or (name == "pattern" and tuple(info.kernel_size) != (3, 3))):
                continue
            schemes.append(name)
        return LayerChoices(info, tuple(schemes), tuple(config.sparsities), nm, block_n, blocks,
                            tuple(config.aligns), tuple(config.weight_bits), tuple(config.act_bits), group)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"space_version": SPACE_VERSION, "model_name": self.model_name,
                "input_shape": list(self.input_shape), "config": self.config.to_dict(),
                "other_params": self.other_params, "groups": [g.to_dict() for g in self.groups],
                "layers": [lc.to_dict() for lc in self.layers]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        if data.get("space_version") != SPACE_VERSION:
            raise SchemeError(f"space_version {data.get('space_version')!r} is not supported "
                              f"(this release reads {SPACE_VERSION})", field_name="space_version")
        return cls(data["model_name"], tuple(data["input_shape"]),
                   [LayerChoices.from_dict(d) for d in data["layers"]],
                   [ChannelGroup.from_dict(g) for g in data["groups"]],
                   SpaceConfig.from_dict(data.get("config", {})), int(data.get("other_params", 0)))

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ queries
    def layer_names(self) -> list[str]:
        return [lc.layer.name for lc in self.layers]

    def choices(self, layer: str) -> LayerChoices:
        try:
            return self._by_name[layer]
        except KeyError:
            close = [n for n in self._by_name if n.endswith(layer) or layer.endswith(n)][:3]
            hint = f" Did you mean {close}?" if close else f" Layers: {self.layer_names()[:8]}..."
            raise SchemeError(f"unknown layer for model '{self.model_name}'.{hint}", layer) from None

    def dense_policy(self) -> CompressionPolicy:
        return CompressionPolicy(model=self.model_name)

    def effective_decision(self, policy: CompressionPolicy, layer: str) -> LayerDecision:
        """The decision that is applied: a `channel` default on a layer whose outputs cannot be pruned
        (the classifier, a transformer's residual stream) means dense for that layer."""
        d = policy.decision(layer)
        if d.scheme == "channel" and layer not in self._out_group and layer not in policy.layers:
            return replace(d, scheme="dense", sparsity=0.0, align=1)
        return d

    # ------------------------------------------------------------------ flat dimensions
    def dimensions(self) -> list[Dimension]:
        """Flat dimensions (only those with more than one option); `decode_vector` reads them in order."""
        dims: list[Dimension] = []
        for lc in self.layers:
            name = lc.layer.name

            def cat(param: str, options: Sequence[Any], name: str = name) -> None:
                if len(options) > 1:
                    dims.append(Dimension(f"{name}:{param}", name, param, "categorical", tuple(options)))

            cat("scheme", lc.schemes)
            if any(s in lc.schemes for s in _SPARSE_SCHEMES) and len(lc.sparsities) > 1:
                dims.append(Dimension(f"{name}:sparsity", name, "sparsity", "float", tuple(lc.sparsities),
                                      min(lc.sparsities), max(lc.sparsities)))
            if "nm" in lc.schemes:
                cat("nm", [f"{n}:{m}" for n, m in lc.nm])
            if "block1xn" in lc.schemes:
                cat("block_n", lc.block_n)
            if "block_punched" in lc.schemes:
                cat("block", [f"{r}x{c}" for r, c in lc.blocks])
            if "channel" in lc.schemes:
                cat("align", lc.aligns)
            cat("weight_bits", lc.weight_bits)
            cat("act_bits", lc.act_bits)
        return dims

    def decode_vector(self, x: Sequence[float]) -> CompressionPolicy:
        """Each entry in [0, 1] (clipped) -> one option of the matching dimension; always a valid policy."""
        dims = self.dimensions()
        if len(x) != len(dims):
            raise SchemeError(f"vector has {len(x)} entries, the space has {len(dims)} dimensions "
                              "(see SearchSpace.dimensions())", field_name="vector")
        choices: dict[str, dict[str, Any]] = {}
        for dim, value in zip(dims, x, strict=True):
            v = min(1.0, max(0.0, float(value)))
            if dim.type == "float":
                chosen: Any = dim.low + v * (dim.high - dim.low)
            else:
                chosen = dim.choices[min(int(v * len(dim.choices)), len(dim.choices) - 1)]
            choices.setdefault(dim.layer, {})[dim.param] = chosen
        return self.decode(choices)

    # ------------------------------------------------------------------ decode
    def decode(self, choices: Mapping[str, Mapping[str, Any]]) -> CompressionPolicy:
        """Per-layer choices -> a validated policy. Keys: scheme, sparsity, nm ("n:m" or [n, m]), block_n,
        block ("RxC" or [r, c]), align, weight_bits, act_bits; missing keys take the first option.
        Choices outside the layer's options raise SchemeError; shape conflicts created by coupled
        channel pruning are repaired (see the module docstring)."""
        decisions: dict[str, LayerDecision] = {}
        for layer, c in choices.items():
            lc = self.choices(layer)
            decisions[layer] = self._decision_from(lc, c)
        policy = CompressionPolicy(model=self.model_name, layers=decisions)
        policy = self._repair(policy)
        self.validate(policy)
        return policy

    def _decision_from(self, lc: LayerChoices, c: Mapping[str, Any]) -> LayerDecision:
        layer = lc.layer.name
        allowed = {"scheme", "sparsity", "nm", "n", "m", "block_n", "block", "align", "weight_bits", "act_bits"}
        unknown = sorted(set(c) - allowed)
        if unknown:
            raise SchemeError(f"unknown choice key(s) {unknown}; allowed: {sorted(allowed)}", layer, unknown[0])
        scheme = c.get("scheme", "dense")
        if scheme not in lc.schemes:
            kind_ok = scheme in SCHEME_REGISTRY and lc.layer.kind in SCHEME_REGISTRY[scheme].supported_kinds
            why = ("its shape admits no option of it or it is not channel-prunable" if kind_ok
                   else f"a {lc.layer.kind} layer does not support it")
            raise SchemeError(f"scheme '{scheme}' is not available here ({why}); choose one of {list(lc.schemes)}",
                              layer, "scheme")
        wb, ab = c.get("weight_bits", lc.weight_bits[0]), c.get("act_bits", lc.act_bits[0])
        for key, value, options in (("weight_bits", wb, lc.weight_bits), ("act_bits", ab, lc.act_bits)):
            if value not in options:
                raise SchemeError(f"{value!r} is not an option; choose one of {list(options)}", layer, key)
        bits = {"weight_bits": wb, "act_bits": ab}
        if scheme == "dense":
            return LayerDecision("dense", **bits)
        sparsity = float(c.get("sparsity", lc.sparsities[0]))
        lo, hi = min(lc.sparsities), max(lc.sparsities)
        if scheme in _SPARSE_SCHEMES and not lo - 1e-9 <= sparsity <= hi + 1e-9:
            raise SchemeError(f"sparsity {sparsity} outside the space's range [{lo}, {hi}]", layer, "sparsity")
        sparsity = min(max(sparsity, lo), hi)
        if scheme == "nm":
            pair = (_parse_pair(c["nm"], ":", "nm", layer) if "nm" in c
                    else (int(c["n"]), int(c["m"])) if "n" in c and "m" in c else lc.nm[0])
            if pair not in lc.nm:
                raise SchemeError(f"N:M {pair[0]}:{pair[1]} is not an option; choose one of {list(lc.nm)}",
                                  layer, "nm")
            return LayerDecision("nm", n=pair[0], m=pair[1], **bits)
        if scheme == "block1xn":
            n = int(c.get("block_n", c.get("n", lc.block_n[0])))
            if n not in lc.block_n:
                raise SchemeError(f"block length {n} is not an option; choose one of {list(lc.block_n)}",
                                  layer, "block_n")
            return LayerDecision("block1xn", sparsity=sparsity, n=n, **bits)
        if scheme == "block_punched":
            block = _parse_pair(c["block"], "x", "block", layer) if "block" in c else lc.blocks[0]
            if block not in lc.blocks:
                raise SchemeError(f"block {block} is not an option; choose one of {list(lc.blocks)}",
                                  layer, "block")
            return LayerDecision("block_punched", sparsity=sparsity, block=block, **bits)
        if scheme == "channel":
            align = int(c.get("align", lc.aligns[0]))
            if align not in lc.aligns:
                raise SchemeError(f"align {align} is not an option; choose one of {list(lc.aligns)}",
                                  layer, "align")
            return LayerDecision("channel", sparsity=sparsity, align=align, **bits)
        return LayerDecision(scheme, sparsity=sparsity, **bits)

    def _repair(self, policy: CompressionPolicy) -> CompressionPolicy:
        shapes = {cl.name: cl for cl in self.compressed_layers(policy, _shapes_only=True)}
        repairs: list[str] = []
        new = dict(policy.layers)
        for name, d in policy.layers.items():
            shape = _shape_of(shapes[name])
            if d.scheme in ("dense", "channel", "unstructured", "pattern") or _fits(shape, d):
                continue
            lc = self._by_name[name]
            if d.scheme == "nm":
                options = [LayerDecision("nm", n=n, m=m, weight_bits=d.weight_bits, act_bits=d.act_bits)
                           for n, m in lc.nm]
            elif d.scheme == "block1xn":
                options = [replace(d, n=n) for n in lc.block_n]
            else:
                options = [replace(d, block=b) for b in lc.blocks]
            fitting = sorted((o for o in options if _fits(shape, o)), key=lambda o, d=d: _distance(o, d))
            fixed = fitting[0] if fitting else LayerDecision(
                "unstructured", sparsity=min(1.0 - d.weight_density, max(self.config.sparsities)),
                weight_bits=d.weight_bits, act_bits=d.act_bits)
            repairs.append(f"{name}: {d.to_dict()} -> {fixed.to_dict()} (shape after channel pruning "
                           f"{shape.out_channels}x{shape.gemm_cols})")
            new[name] = fixed
        if not repairs:
            return policy
        meta = dict(policy.metadata)
        meta["repairs"] = repairs
        return CompressionPolicy(model=policy.model, layers=new, default=policy.default, metadata=meta)

    # ------------------------------------------------------------------ analytic shapes
    def compressed_layers(self, policy: CompressionPolicy, *, _shapes_only: bool = False) -> list[CompressedLayer]:
        """Every prunable layer after `policy`, computed from shapes only (no weights, fast).

        Uses `search_spaces.channel.resolve_kept`, the rule the physical pruning uses, so these shapes
        equal those of `apply_policy`'s model."""
        decision_of = lambda name: self.effective_decision(policy, name)  # noqa: E731
        kept = resolve_kept(self.groups, decision_of)
        shrink_in: dict[str, int] = {}
        for g in self.groups:
            for name, factor in g.in_members:
                shrink_in[name] = shrink_in.get(name, 0) + factor * (g.width - kept[g.id])
        group_of = {name: g for g in self.groups for name in g.out_members}
        out: list[CompressedLayer] = []
        for lc in self.layers:
            info, d = lc.layer, decision_of(lc.layer.name)
            g = group_of.get(info.name)
            out_c = kept[g.id] if g is not None else info.out_channels
            in_c, groups = info.in_channels - shrink_in.get(info.name, 0), info.groups
            if info.kind == "depthwise" and g is not None:
                in_c = groups = out_c
            kh, kw = info.kernel_size
            cols = (in_c // groups) * kh * kw
            if info.kind in ("linear", "attention"):
                macs = info.tokens * in_c * out_c
            else:
                macs = info.output_hw[0] * info.output_hw[1] * out_c * cols
            sparsity = d.sparsity
            if d.scheme == "channel":
                sparsity = 1.0 - out_c / info.out_channels
            density = 1.0
            if not _shapes_only and d.scheme not in ("dense", "channel"):
                density = get_scheme(d.scheme).density(out_c, cols, (kh, kw), d)
            if d.scheme == "nm":
                sparsity = 1.0 - density
            out.append(CompressedLayer(
                name=info.name, kind=info.kind, in_channels=in_c, out_channels=out_c, kernel_size=(kh, kw),
                stride=tuple(info.stride), groups=groups, input_hw=tuple(info.input_hw),
                output_hw=tuple(info.output_hw), tokens=info.tokens, scheme=d.scheme, sparsity=sparsity,
                density=density, n=d.n, m=d.m, block=d.block, weight_bits=d.weight_bits, act_bits=d.act_bits,
                macs=macs, effective_macs=macs * density))
        return out

    # ------------------------------------------------------------------ validation
    def validate(self, policy: CompressionPolicy) -> None:
        """Shapes, kind support and coupled-shape fit; raises PolicyError/SchemeError naming layer + field."""
        if policy.model != self.model_name:
            raise SchemeError(f"policy is for model '{policy.model}', the space for '{self.model_name}'",
                              field_name="model")
        shapes = {lc.layer.name: lc.layer.shape() for lc in self.layers}
        try:
            policy.validate(shapes)
        except SchemeError:
            raise
        except PolicyError as exc:  # one error type for callers of the space
            raise SchemeError(bare_message(exc), exc.layer, exc.field_name) from exc
        for name, d in policy.layers.items():
            shape = shapes[name]
            get_scheme(d.scheme).check(shape, d)
            if d.scheme == "channel" and name not in self._out_group:
                raise SchemeError("the output channels of this layer cannot be pruned (it feeds the model "
                                  "output or a residual stream the engine cannot follow); choose another scheme",
                                  name, "scheme")
        for cl in self.compressed_layers(policy, _shapes_only=True):
            d = self.effective_decision(policy, cl.name)
            if d.scheme in ("dense", "channel"):
                continue
            if shapes[cl.name].kind not in SCHEME_REGISTRY[d.scheme].supported_kinds:
                raise SchemeError(f"scheme '{d.scheme}' (from the policy default) does not support "
                                  f"{cl.kind} layers", cl.name, "scheme")
            try:
                d.check_against(_shape_of(cl))
            except PolicyError as exc:
                raise SchemeError(f"after channel pruning of coupled layers the layer is "
                                  f"{cl.out_channels}x{cl.gemm_cols} (out x GEMM columns): "
                                  f"{bare_message(exc)}", cl.name, exc.field_name) from exc


def _distance(option: LayerDecision, wanted: LayerDecision) -> tuple[float, float]:
    """How far a repair option is from what was asked (density first, then the structural parameter)."""
    if wanted.scheme == "nm":
        return abs(option.n / option.m - wanted.n / wanted.m), option.m
    if wanted.scheme == "block1xn":
        return abs(option.n - wanted.n), option.n
    return abs(option.block[0] - wanted.block[0]) + abs(option.block[1] - wanted.block[1]), option.block[1]


def _shape_of(cl: CompressedLayer) -> LayerShape:
    return LayerShape(cl.name, cl.kind, cl.in_channels, cl.out_channels, cl.kernel_size, cl.groups)
