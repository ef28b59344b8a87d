"""compress-search: per-layer compression search ranked by latency measured on the target runtime.

Importing this package has no side effects (no Ray, no MLflow, no directories created).
"""

from automl.policy import SCHEMA_VERSION, CompressionPolicy, LayerDecision, LayerShape, PolicyError

__version__ = "0.1.0"
__all__ = ["SCHEMA_VERSION", "CompressionPolicy", "LayerDecision", "LayerShape", "PolicyError", "__version__"]
