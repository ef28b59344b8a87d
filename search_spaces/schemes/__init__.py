"""Pruning schemes: a registry from the policy's scheme names to small `PruningScheme` classes."""

from __future__ import annotations

from search_spaces.schemes.base import PruningScheme, SchemeError, gemm_view, round_half_up
from search_spaces.schemes.simple import ChannelScheme, DenseScheme, UnstructuredScheme
from search_spaces.schemes.structured import (
    PATTERN_LIBRARY,
    PATTERN_SIZE,
    Block1xNScheme,
    BlockPunchedScheme,
    NMScheme,
    PatternScheme,
)

SCHEME_REGISTRY: dict[str, type[PruningScheme]] = {
    cls.name: cls
    for cls in (DenseScheme, UnstructuredScheme, ChannelScheme, NMScheme, Block1xNScheme, PatternScheme,
                BlockPunchedScheme)
}


def get_scheme(name: str) -> PruningScheme:
    """An instance of the scheme registered under `name` (schemes are stateless)."""
    try:
        return SCHEME_REGISTRY[name]()
    except KeyError:
        raise SchemeError(f"unknown scheme '{name}'; registered: {', '.join(SCHEME_REGISTRY)}",
                          field_name="scheme") from None


__all__ = ["PATTERN_LIBRARY", "PATTERN_SIZE", "SCHEME_REGISTRY", "Block1xNScheme", "BlockPunchedScheme",
           "ChannelScheme", "DenseScheme", "NMScheme", "PatternScheme", "PruningScheme", "SchemeError",
           "UnstructuredScheme", "get_scheme", "gemm_view", "round_half_up"]
