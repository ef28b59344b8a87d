"""The search: Ray Tune trials driven by an agent, tracked in MLflow (the only package touching either)."""

from automl.search.config import ConfigError, SearchConfig
from automl.search.runner import SearchError, SearchResult, SearchRunner, run_search

__all__ = ["ConfigError", "SearchConfig", "SearchError", "SearchResult", "SearchRunner", "run_search"]
