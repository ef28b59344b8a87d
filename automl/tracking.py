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


def artifact_location_for(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts should go: beside a sqlite database, else the server's default.

    Without this MLflow puts artifacts of a sqlite store in ``./mlruns`` of whatever directory the
    process happens to run in, so a search started from two places splits its files (and tests litter
    the repository).
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent.resolve() / "mlartifacts").as_uri()
    return None


def ensure_experiment(client, name: str = DEFAULT_EXPERIMENT) -> str:
    """Id of experiment `name` in the client's store, created (with `artifact_location_for`) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location_for(client.tracking_uri))
    except MlflowException:  # another process created it between our look-up and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
