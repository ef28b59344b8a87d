"""The pruning-scheme extension point: one small class per scheme, four things to fill in.

A scheme says which layer kinds it supports, checks a decision against a layer, builds a boolean
keep-mask for a weight tensor, and states the density (fraction of weights kept) its mask will have
for a given shape *without* touching weights. `density` and `mask` must agree exactly: the cost
model (`search_spaces.costs`) uses `density` for thousands of policies, the engine uses `mask` once,
and the conformance suite (tests/test_schemes.py) holds them to the same number.

Every mask works on the GEMM view of the weight, (out, in/groups * kh * kw), which is the matrix a
CPU kernel multiplies; "input dimension" in the scheme definitions means that view's columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from automl.models.layers import LAYER_KINDS, LayerInfo
from automl.policy import LayerDecision, LayerShape, PolicyError


class SchemeError(PolicyError):
    """A scheme does not fit a layer (unsupported kind, impossible parameter); names layer and field."""


def bare_message(exc: PolicyError) -> str:
    """The message of a PolicyError without its "layer 'x', field 'y': " prefix (to re-raise it)."""
    where = []
    if exc.layer is not None:
        where.append(f"layer '{exc.layer}'")
    if exc.field_name is not None:
        where.append(f"field '{exc.field_name}'")
    prefix = (", ".join(where) + ": ") if where else ""
    text = str(exc)
    return text[len(prefix):] if text.startswith(prefix) else text


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """(out, in/groups*kh*kw): the matrix the runtime multiplies; shares storage with `weight`."""
    return weight.reshape(weight.shape[0], -1)


def round_half_up(x: float) -> int:
    """Deterministic rounding (Python's round() is half-to-even, which surprises in cost tables)."""
    return int(x + 0.5)


class PruningScheme(ABC):
    """Base class: subclasses set `name`, `supported_kinds` and implement `mask` and `density`."""

    name: ClassVar[str]
    supported_kinds: ClassVar[frozenset[str]] = frozenset(LAYER_KINDS)
    physical: ClassVar[bool] = False  # True only for "channel": the model shrinks, no mask

    def check(self, layer: LayerShape, decision: LayerDecision) -> None:
        """Unsupported kind or a parameter that cannot fit the layer -> SchemeError naming both."""
        if decision.scheme != self.name:
            raise SchemeError(f"decision is for scheme '{decision.scheme}', not '{self.name}'", layer.name, "scheme")
        if layer.kind not in self.supported_kinds:
            raise SchemeError(
                f"scheme '{self.name}' does not support {layer.kind} layers; it supports "
                f"{', '.join(sorted(self.supported_kinds))}", layer.name, "scheme")
        try:
            decision.check_against(layer)
        except SchemeError:
            raise
        except PolicyError as exc:
            raise SchemeError(bare_message(exc), layer.name, exc.field_name) from exc
        self._check_params(layer, decision)

    def _check_params(self, layer: LayerShape, decision: LayerDecision) -> None:
        """Scheme-specific checks beyond `LayerDecision.check_against` (override when needed)."""
        return None

    @abstractmethod
    def mask(self, weight: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        """Boolean keep-mask with the weight's shape (True = kept)."""

    @abstractmethod
    def density(self, out_channels: int, gemm_cols: int, kernel_size: tuple[int, int],
                decision: LayerDecision) -> float:
        """Exact fraction of weights `mask` keeps for a weight of this shape (no weights needed)."""


def layer_shape_of(info: LayerInfo | LayerShape) -> LayerShape:
    """LayerInfo is a LayerShape; this keeps call sites explicit about needing only the shape."""
    return info if type(info) is LayerShape else LayerShape(info.name, info.kind, info.in_channels,
                                                            info.out_channels, tuple(info.kernel_size), info.groups)
