"""Compression engine: pruning schemes, the search space, applying policies to models, and costs.

Import direction: this package imports `automl.policy`, `automl.models` and Torch-Pruning, never
agents or the search loop.
"""

from search_spaces.apply import CompressedModel, apply_policy
from search_spaces.channel import ChannelGroup, Importance, kept_channels, l1_importance, resolve_kept
from search_spaces.costs import CostReport, LayerCost, cost_report
from search_spaces.rearrange import rearrange_filters
from search_spaces.schemes import (
    PATTERN_LIBRARY,
    SCHEME_REGISTRY,
    PruningScheme,
    SchemeError,
    get_scheme,
)
from search_spaces.space import CompressedLayer, Dimension, LayerChoices, SearchSpace, SpaceConfig

__all__ = ["PATTERN_LIBRARY", "SCHEME_REGISTRY", "ChannelGroup", "CompressedLayer", "CompressedModel",
           "CostReport", "Dimension", "Importance", "LayerChoices", "LayerCost", "PruningScheme", "SchemeError",
           "SearchSpace", "SpaceConfig", "apply_policy", "cost_report", "get_scheme", "kept_channels",
           "l1_importance", "rearrange_filters", "resolve_kept"]
