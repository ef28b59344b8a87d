"""Where the MLflow tracking store lives, decided in one place.

`automl search`, `automl best`, `automl compare` and `automl serve` must all read and write the same
store unless told otherwise; if each picked its own default, a search would land in one database and
`automl best` would look in another and report "nothing fits". Importing this module has no side
effects: the directory for the default sqlite file is created only when the default is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "compress-search"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set, else ``sqlite:///$AUTOML_HOME/mlflow.db``.

    sqlite, not a ``./mlruns`` folder: MLflow 3.17 refuses plain file stores unless
    MLFLOW_ALLOW_FILE_STORE=true, and a file store's layout races when trials write concurrently.
    """
    uri = os.environ.get(ENV_TRACKING_URI, "").strip()
    if uri:
        return uri
    # Same rule as automl.training.default_home, repeated so `automl best` never imports torch.
    home = Path(os.environ.get("AUTOML_HOME") or Path.home() / ".cache" / "compress-search")
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home.resolve() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    """An explicit URI (flag, config) wins; otherwise the shared default."""
    return uri.strip() if uri and uri.strip() else default_tracking_uri()
