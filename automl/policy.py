"""The compression policy: the plain-data contract between every part of the project.

A policy maps each prunable layer (by its fully qualified module name) to a `LayerDecision`: which
pruning scheme, how sparse, the scheme's structural parameters, and the weight / activation
bit-widths. Agents produce policies, the engine applies them, latency models cost them, MLflow
stores them as JSON. Keeping it plain data (no torch, no project imports) is what lets every part
evolve on its own.

Field meanings per scheme (validated below):

==============  ==========================================================================
scheme          parameters
==============  ==========================================================================
dense           none; sparsity must be 0
unstructured    ``sparsity``: fraction of weights zeroed by magnitude
channel         ``sparsity``: fraction of output channels removed; ``align``: kept channel
                count is rounded to a multiple of ``align`` (1, 2, 4, 8, 16, 32)
nm              ``n``, ``m``: at most ``n`` non-zeros in every group of ``m`` consecutive
                weights along the input dimension (``sparsity`` is implied: 1 - n/m)
block1xn        ``n``: block length along output channels; ``sparsity``: fraction of
                (n output kernels x 1 input channel) blocks removed
pattern         3x3 convs only; each kept kernel keeps ``pattern_size`` entries (a library
                pattern); ``sparsity``: connectivity pruning, fraction of whole kernels removed
block_punched   ``block``: (rows, cols) of a block in the GEMM view (out, in*kh*kw);
                ``sparsity``: fraction of columns punched inside every block
==============  ==========================================================================

``weight_bits`` / ``act_bits``: 2..8, or ``None`` for float.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMES = ("dense", "unstructured", "channel", "nm", "block1xn", "pattern", "block_punched")
CHANNEL_ALIGNS = (1, 2, 4, 8, 16, 32)
MIN_BITS, MAX_BITS = 2, 8


class PolicyError(ValueError):
    """A policy is malformed or does not fit the model; the message names the layer and field."""

    def __init__(self, message: str, layer: str | None = None, field_name: str | None = None):
        where = []
        if layer is not None:
            where.append(f"layer '{layer}'")
        if field_name is not None:
            where.append(f"field '{field_name}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.layer = layer
        self.field_name = field_name


@dataclass(frozen=True)
class LayerShape:
    """What the policy needs to know about a layer to validate a decision against it.

    The model zoo's introspection (`automl.models.layers`) produces these; a policy never imports torch.
    """

    name: str
    kind: str  # conv3x3 | conv1x1 | depthwise | conv | linear | attention
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def gemm_cols(self) -> int:
        """Columns of the GEMM view (out, in/groups*kh*kw)."""
        return (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]


@dataclass(frozen=True)
class LayerDecision:
    """One layer's compression choice. Immutable so a policy can be shared between workers safely."""

    scheme: str = "dense"
    sparsity: float = 0.0
    n: int | None = None
    m: int | None = None
    block: tuple[int, int] | None = None
    align: int = 1
    pattern_size: int = 4
    weight_bits: int | None = None
    act_bits: int | None = None

    # ---------------------------------------------------------------- validation
    def check(self, layer: str) -> None:
        """Structural checks that need no model; raises PolicyError naming `layer` and the field."""
        if self.scheme not in SCHEMES:
            raise PolicyError(f"unknown scheme '{self.scheme}'; choose one of {', '.join(SCHEMES)}", layer, "scheme")
        if not isinstance(self.sparsity, (int, float)) or math.isnan(self.sparsity):
            raise PolicyError(f"sparsity must be a number, got {self.sparsity!r}", layer, "sparsity")
        if not 0.0 <= self.sparsity < 1.0:
            raise PolicyError(f"sparsity must lie in [0, 1), got {self.sparsity}", layer, "sparsity")
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if bits is not None and (not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS):
                raise PolicyError(
                    f"bit-width must be an integer in {MIN_BITS}..{MAX_BITS} or null (float), got {bits!r}", layer, name
                )
        if self.scheme == "dense" and self.sparsity != 0.0:
            raise PolicyError("the dense scheme takes no sparsity; pick a pruning scheme", layer, "sparsity")
        if self.scheme == "nm":
            if self.n is None or self.m is None:
                raise PolicyError("the nm scheme needs both n and m", layer, "n" if self.n is None else "m")
            if not (isinstance(self.n, int) and isinstance(self.m, int)) or self.n < 1 or self.m < 2:
                raise PolicyError(f"n and m must be integers with n >= 1, m >= 2 (got {self.n}:{self.m})", layer, "n")
            if self.n >= self.m:
                raise PolicyError(f"N:M needs n < m, got {self.n}:{self.m}", layer, "n")
        if self.scheme == "block1xn":
            if not isinstance(self.n, int) or self.n < 2:
                raise PolicyError(f"block1xn needs a block length n >= 2, got {self.n!r}", layer, "n")
        if self.scheme == "block_punched":
            if not isinstance(self.block, (tuple, list)) or len(self.block) != 2 or any((not isinstance(b, int)) or b < 1 for b in self.block):
                raise PolicyError(f"block_punched needs block = (rows, cols) of positive ints, got {self.block!r}",
                                  layer, "block")
        if self.scheme == "channel" and self.align not in CHANNEL_ALIGNS:
            raise PolicyError(f"align must be one of {CHANNEL_ALIGNS}, got {self.align!r}", layer, "align")
        if self.scheme == "pattern" and self.pattern_size not in (1, 2, 3, 4, 5, 6, 7, 8):
            raise PolicyError(f"pattern_size must be 1..8 entries of a 3x3 kernel, got {self.pattern_size!r}",
                              layer, "pattern_size")

    def check_against(self, shape: LayerShape) -> None:
        """Checks that need the layer's shape: divisibility of blocks and groups, kernel size."""
        self.check(shape.name)
        layer = shape.name
        if self.scheme == "nm" and shape.gemm_cols % self.m != 0:
            raise PolicyError(
                f"m={self.m} does not divide the layer's input dimension {shape.gemm_cols} "
                f"(in_channels/groups*kh*kw)", layer, "m")
        if self.scheme == "block1xn" and shape.out_channels % self.n != 0:
            raise PolicyError(
                f"block length n={self.n} does not divide out_channels={shape.out_channels}", layer, "n")
        if self.scheme == "block_punched":
            rows, cols = self.block
            if shape.out_channels % rows != 0:
                raise PolicyError(f"block rows {rows} do not divide out_channels={shape.out_channels}", layer, "block")
            if shape.gemm_cols % cols != 0:
                raise PolicyError(f"block cols {cols} do not divide the input dimension {shape.gemm_cols}",
                                  layer, "block")
        if self.scheme == "pattern" and tuple(shape.kernel_size) != (3, 3):
            raise PolicyError(f"pattern pruning needs a 3x3 kernel, layer has {tuple(shape.kernel_size)}",
                              layer, "scheme")

    # ---------------------------------------------------------------- derived
    @property
    def weight_density(self) -> float:
        """Fraction of weights kept by the pruning scheme alone (for cost estimates)."""
        if self.scheme == "dense":
            return 1.0
        if self.scheme == "nm":
            return self.n / self.m
        if self.scheme == "pattern":
            return (1.0 - self.sparsity) * self.pattern_size / 9.0
        return 1.0 - self.sparsity

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the default, so policy JSON stays readable."""
        out: dict[str, Any] = {}
        default = LayerDecision()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "scheme" or value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], layer: str = "?") -> LayerDecision:
        if not isinstance(data, Mapping):
            raise PolicyError(f"a layer decision must be an object, got {type(data).__name__}", layer)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown field(s) {unknown}; allowed: {sorted(known)}", layer, unknown[0])
        values = dict(data)
        if values.get("block") is not None:
            if not isinstance(values["block"], (list, tuple)):
                raise PolicyError("block must be [rows, cols]", layer, "block")
            values["block"] = tuple(values["block"])
        if "sparsity" in values and isinstance(values["sparsity"], int):
            values["sparsity"] = float(values["sparsity"])
        decision = cls(**values)
        decision.check(layer)
        return decision


@dataclass(frozen=True)
class CompressionPolicy:
    """Per-layer decisions for one model, plus a default for layers not named.

    Round-trips to JSON with a schema version; loading refuses unknown fields and versions so a
    policy written by a newer release is never silently misread.
    """

    model: str
    layers: Mapping[str, LayerDecision] = field(default_factory=dict)
    default: LayerDecision = field(default_factory=LayerDecision)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise PolicyError("policy needs a non-empty model name", field_name="model")
        for name, decision in self.layers.items():
            if not isinstance(decision, LayerDecision):
                raise PolicyError(f"expected a LayerDecision, got {type(decision).__name__}", name)
            decision.check(name)
        self.default.check("<default>")

    def decision(self, layer: str) -> LayerDecision:
        return self.layers.get(layer, self.default)

    def __iter__(self) -> Iterator[tuple[str, LayerDecision]]:
        return iter(self.layers.items())

    def with_layer(self, layer: str, decision: LayerDecision) -> CompressionPolicy:
        new_layers = dict(self.layers)
        new_layers[layer] = decision
        return replace(self, layers=new_layers)

    def validate(self, shapes: Mapping[str, LayerShape] | list[LayerShape]) -> None:
        """Check every decision against the model's prunable layers; unknown layers are errors."""
        if not isinstance(shapes, Mapping):
            shapes = {s.name: s for s in shapes}
        for name, decision in self.layers.items():
            if name not in shapes:
                close = [s for s in shapes if s.endswith(name) or name.endswith(s)][:3]
                hint = f" Did you mean {close}?" if close else f" Prunable layers: {list(shapes)[:8]}..."
                raise PolicyError(f"unknown layer for model '{self.model}'.{hint}", name)
            decision.check_against(shapes[name])
        if self.default.scheme != "dense" or self.default.weight_bits is not None or self.default.act_bits is not None:
            for name, shape in shapes.items():
                if name not in self.layers:
                    self.default.check_against(replace(shape, name=f"{name} (from default)"))

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "default": self.default.to_dict(),
            "layers": {name: d.to_dict() for name, d in self.layers.items()},
            "metadata": dict(self.metadata),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPolicy:
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy must be a JSON object, got {type(data).__name__}")
        allowed = {"schema_version", "model", "default", "layers", "metadata"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PolicyError(f"unknown top-level field(s) {unknown}; allowed: {sorted(allowed)}", field_name=unknown[0])
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PolicyError(
                f"schema_version {version!r} is not supported (this release reads {SCHEMA_VERSION})",
                field_name="schema_version")
        if "model" not in data:
            raise PolicyError("missing", field_name="model")
        layers_raw = data.get("layers", {})
        if not isinstance(layers_raw, Mapping):
            raise PolicyError("layers must be an object of layer name -> decision", field_name="layers")
        layers = {name: LayerDecision.from_dict(d, name) for name, d in layers_raw.items()}
        default = LayerDecision.from_dict(data.get("default", {"scheme": "dense"}), "<default>")
        metadata = data.get("metadata", {})
        if not isinstance(metadata, Mapping):
            raise PolicyError(f"metadata must be an object, got {type(metadata).__name__}", field_name="metadata")
        return cls(model=data["model"], layers=layers, default=default, metadata=dict(metadata))

    @classmethod
    def from_json(cls, text: str) -> CompressionPolicy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> CompressionPolicy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file '{path}' does not exist")
        return cls.from_json(path.read_text())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def summary(self) -> dict[str, Any]:
        """A flat, human-readable summary (for MLflow params and tables)."""
        counts: dict[str, int] = {}
        for _, d in self.layers.items():
            counts[d.scheme] = counts.get(d.scheme, 0) + 1
        return {"model": self.model, "n_layers": len(self.layers), **{f"n_{k}": v for k, v in sorted(counts.items())}}


def decision_asdict(decision: LayerDecision) -> dict[str, Any]:
    """Full dict including defaults (for tables)."""
    return asdict(decision)
