"""FastAPI app factory for `automl serve`.

Reads go through `automl.query` (the same code as `automl best` / `automl compare`), writes start
`automl search` subprocesses (`automl.service.jobs`). The app touches no file outside the tracking
store: ids are validated as MLflow run ids, model names against a strict pattern, and submitted
configs may not name files, remote clusters or code to import (those options are for the CLI).
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoint annotations at runtime, and
# some name closure-local objects (the bearer scheme).
import os
import secrets
import sys
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from automl.query import Constraints, QueryError, TrackingReader
from automl.search.config import SearchConfig
from automl.service.jobs import SearchJobs, TooManySearches

TOKEN_ENV = "AUTOML_API_TOKEN"
RUN_ID = Annotated[str, Path(description="MLflow run id (32 hex characters)")]
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"

# Config fields that name a file, a remote endpoint or importable code: fine on your own command line,
# not from an HTTP client (the service would read/write/connect where the caller says).
_FORBIDDEN_OVER_HTTP = {
    ("model", "checkpoint"): "a checkpoint path",
    ("dataset", "data_dir"): "a data folder",
    ("latency", "profile"): "a device profile path",
    ("latency", "device"): "a remote device agent URL",
    ("tracking", "uri"): "a tracking URI (the service writes to its own store)",
    ("ray", "address"): "a Ray cluster address",
}


def _error(status: int, message: str, loc: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": message}
    if loc is not None:
        body = {"detail": [{"loc": loc, "msg": message, "type": "value_error"}],
                "message": f"{'.'.join(loc[1:])}: {message}"}
    return JSONResponse(status_code=status, content=body)


def _http_checks(config: SearchConfig) -> list[tuple[list[str], str]]:
    """Problems with a config submitted over HTTP, as (location, message) pairs."""
    problems = []
    for (section, key), what in _FORBIDDEN_OVER_HTTP.items():
        if getattr(getattr(config, section), key) is not None:
            problems.append((["body", section, key], f"{what} is not accepted over HTTP; leave it out "
                                                     "(run `automl search` locally to use it)"))
    from automl.data import DATASETS
    from automl.models import ZOO

    if config.model.name not in ZOO:
        problems.append((["body", "model", "name"], f"unknown model '{config.model.name}'; the service accepts "
                                                    f"zoo models only: {', '.join(ZOO)}"))
    if config.dataset.name not in DATASETS:
        problems.append((["body", "dataset", "name"], f"unknown dataset '{config.dataset.name}'; "
                                                      f"available: {', '.join(DATASETS)}"))
    return problems


def create_app(tracking_uri: str, token: str | None = None, *, max_running: int = 1,
               python: str = sys.executable) -> FastAPI:
    """Build the app. `token` (else $AUTOML_API_TOKEN) guards write endpoints; without one, writes are refused."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    reader = TrackingReader(tracking_uri)
    jobs = SearchJobs(tracking_uri, max_running=max_running, python=python)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.shutdown()

    app = FastAPI(title="compress-search", lifespan=lifespan,
                  description="Submit compression searches, follow them, and query the best policy for a model. "
                              "Write endpoints need `Authorization: Bearer <token>`.")
    app.state.jobs = jobs
    app.state.reader = reader
    bearer = HTTPBearer(auto_error=False, description="the server's AUTOML_API_TOKEN")

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not token:
            raise HTTPException(403, f"writes are disabled: start the server with {TOKEN_ENV} set (or --token)")
        if creds is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(403, "invalid token")

    @app.exception_handler(QueryError)
    async def _not_found(request: Request, exc: QueryError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors)
        return JSONResponse(status_code=422, content={"detail": errors, "message": message})

    # ------------------------------------------------------------------ searches
    @app.post("/searches", status_code=202, dependencies=[Depends(require_token)], tags=["searches"])
    def submit_search(config: SearchConfig) -> Any:
        """Start a search in the background; answers at once with its id (the MLflow parent run id)."""
        problems = _http_checks(config)
        if problems:
            errors = [{"loc": loc, "msg": msg, "type": "value_error"} for loc, msg in problems]
            return JSONResponse(status_code=422, content={
                "detail": errors, "message": "; ".join(f"{'.'.join(loc[1:])}: {msg}" for loc, msg in problems)})
        try:
            sid = jobs.submit(config)
        except TooManySearches as exc:
            return _error(429, str(exc))
        return {"id": sid, "status": "queued", "links": {"self": f"/searches/{sid}",
                                                         "pareto": f"/searches/{sid}/pareto"}}

    @app.get("/searches", tags=["searches"])
    def list_searches(model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                      dataset: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                      device: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None) -> list[dict[str, Any]]:
        """Tracked searches, newest first."""
        return [{"id": s.search_id, "name": s.name, "status": s.status, "model": s.model, "dataset": s.dataset,
                 "device": s.device, "candidates_total": s.candidates_total}
                for s in reader.searches(model, dataset, device)]

    @app.get("/searches/{search_id}", tags=["searches"])
    def get_search(search_id: RUN_ID) -> dict[str, Any]:
        """Status, progress (candidates done / total) and the best candidate so far."""
        out = reader.search_progress(search_id)
        job = jobs.jobs.get(search_id)
        if job is not None:
            rc = job.returncode
            out["process"] = {"running": rc is None, "returncode": rc, "pid": job.process.pid}
            if rc is not None and rc != 0 and out["status"] in ("queued", "running"):
                out["status"] = "failed"  # the watcher thread is about to write this to MLflow
        return out

    @app.delete("/searches/{search_id}", dependencies=[Depends(require_token)], tags=["searches"])
    def cancel_search(search_id: RUN_ID) -> dict[str, Any]:
        """Stop a search this server started; its finished candidates stay in MLflow."""
        reader.search(search_id)  # 404 for unknown ids
        if not jobs.cancel(search_id):
            return _error(409, f"search {search_id} is not running in this server")
        return {"id": search_id, "status": "interrupted"}

    @app.get("/searches/{search_id}/pareto", tags=["searches"])
    def get_pareto(search_id: RUN_ID,
                   x: Annotated[Literal["latency_ms", "mac_ratio", "size_bytes"] | None, Query(
                       description="cost axis; default latency_ms, else mac_ratio/size_bytes when the "
                                   "search has no latency")] = None) -> dict[str, Any]:
        """Accuracy-vs-cost front of a search (one point per policy, fine-tuned runs where present)."""
        reader.search(search_id)
        cmp = reader.compare([search_id], x)
        return {"id": search_id, "x": cmp.x, "y": "accuracy", "candidates": len(cmp.entries),
                "front": [c.to_dict() for c in cmp.front]}

    # ------------------------------------------------------------------ policies
    @app.get("/models/{name}/best-policy", tags=["policies"])
    def get_best_policy(
        name: Annotated[str, Path(pattern=NAME_PATTERN)],
        dataset: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
        device: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
        max_latency_ms: Annotated[float | None, Query(gt=0)] = None,
        max_mac_ratio: Annotated[float | None, Query(gt=0)] = None,
        max_size_mb: Annotated[float | None, Query(gt=0)] = None,
        min_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None,
    ) -> Any:
        """The same query as `automl best`: most accurate policy meeting every bound, fine-tuned preferred."""
        constraints = Constraints(max_latency_ms, max_mac_ratio, max_size_mb, min_accuracy)
        result, message = reader.best_policy(name, dataset, device, constraints)
        if result is None:
            return _error(404, message)
        return {**result.to_dict(), "policy": reader.load_policy(result.candidate.run_id).to_dict()}

    @app.get("/policies/{run_id}", tags=["policies"])
    def get_policy(run_id: RUN_ID) -> dict[str, Any]:
        """The policy JSON of a candidate run (or the best policy of a search)."""
        return reader.load_policy(run_id).to_dict()

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        return {"ok": True, "running_searches": len(jobs.running()), "writes_enabled": bool(token)}

    return app
