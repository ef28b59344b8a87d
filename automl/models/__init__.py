"""Model zoo and model introspection (prunable layers, MAC counts)."""

from automl.models.layers import LAYER_KINDS, LayerInfo, MacReport, count_macs, layer_kind, prunable_layers
from automl.models.zoo import ZOO, ModelError, ZooEntry, build_model, recipe_for, resolve_factory

__all__ = ["LAYER_KINDS", "ZOO", "LayerInfo", "MacReport", "ModelError", "ZooEntry", "build_model",
           "count_macs", "layer_kind", "prunable_layers", "recipe_for", "resolve_factory"]
