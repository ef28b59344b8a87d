"""Background searches started by the HTTP service: one `python -m automl search` subprocess each.

A subprocess, not a thread: a search starts Ray and trains models, and a crash or a hung worker must
not take the API down with it; it can also be terminated cleanly (its own process group) when the
service shuts down. The MLflow parent run is created here *before* the process starts, so the API
can answer POST /searches with the id at once and GET /searches/{id} works while Ray is starting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.search.config import SearchConfig

ROLE, SEARCH_ID, STATUS = "automl.role", "automl.search_id", "automl.status"
_SECRET_ENV = ("AUTOML_API_TOKEN",)


class TooManySearches(RuntimeError):
    """The service already runs its maximum number of searches."""


@dataclass
class Job:
    search_id: str
    process: subprocess.Popen
    workdir: Path
    cancelled: bool = False
    watcher: threading.Thread | None = None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


class SearchJobs:
    """Starts, tracks and stops the service's search subprocesses."""

    def __init__(self, tracking_uri: str, max_running: int = 1, python: str = sys.executable,
                 extra_env: dict[str, str] | None = None):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.max_running = max_running
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="automl-service-"))  # private: configs + logs in flight

    def running(self) -> list[str]:
        return [sid for sid, job in self.jobs.items() if job.returncode is None]

    def submit(self, config: SearchConfig) -> str:
        """Create the parent run (status queued), then start the search subprocess into it."""
        with self._lock:
            if len(self.running()) >= self.max_running:
                raise TooManySearches(f"{len(self.running())} search(es) already running (limit "
                                      f"{self.max_running}); wait for one to finish or cancel it")
            sid = self._create_parent(config)
            workdir = Path(tempfile.mkdtemp(prefix=f"search-{sid[:8]}-", dir=self._root))
            cfg_path = workdir / "config.yaml"
            cfg_path.write_text(config.to_yaml())
            env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
            env.update(self.extra_env)
            cmd = [self.python, "-m", "automl", "search", str(cfg_path), "--tracking-uri", self.tracking_uri,
                   "--parent-run-id", sid]
            log = open(workdir / "search.log", "wb")  # noqa: SIM115 - closed by the watcher thread
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=workdir, env=env, start_new_session=True)
            except OSError as exc:
                log.close()
                self._mark(sid, "failed", f"could not start the search process: {exc}")
                raise
            job = Job(sid, proc, workdir)
            self.jobs[sid] = job
        job.watcher = threading.Thread(target=self._watch, args=(job, log), name=f"watch-{sid[:8]}", daemon=True)
        job.watcher.start()
        return sid

    def _create_parent(self, config: SearchConfig) -> str:
        from automl.tracking import ensure_experiment

        exp_id = ensure_experiment(self.client, config.tracking.experiment)
        run = self.client.create_run(exp_id, run_name=config.name, tags={
            ROLE: "search", STATUS: "queued", "automl.search_name": config.name,
            "automl.model": config.model.name, "automl.dataset": config.dataset.name,
            "automl.agent": config.agent.name, "automl.runtime": config.latency.runtime,
            "automl.device": config.latency.device or "local", "automl.submitted_by": "service"})
        sid = run.info.run_id
        self.client.set_tag(sid, SEARCH_ID, sid)
        from mlflow.entities import Param

        params = [Param(k[:250], v) for k, v in config.flat_params().items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(sid, params=params[i:i + 100])
        self.client.log_text(sid, config.to_yaml(), "config.yaml")
        return sid

    def _watch(self, job: Job, log: Any) -> None:
        """When the process ends: keep its log in the run, and make sure the status tag is final."""
        rc = job.process.wait()
        log.close()
        log_path = job.workdir / "search.log"
        try:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
            if log_path.exists():
                self.client.log_artifact(job.search_id, str(log_path), "service")
            status = self.client.get_run(job.search_id).data.tags.get(STATUS)
            if status in ("queued", "running"):
                if job.cancelled:
                    self._mark(job.search_id, "interrupted", "cancelled through the HTTP API")
                elif rc != 0:
                    self._mark(job.search_id, "failed", f"search process exited with code {rc}: {tail[-1500:]}")
                else:
                    self._mark(job.search_id, "finished", None)
        except Exception:  # noqa: BLE001 - the store may be gone at shutdown; nothing left to report to
            pass
        finally:
            shutil.rmtree(job.workdir, ignore_errors=True)

    def _mark(self, sid: str, status: str, error: str | None) -> None:
        self.client.set_tag(sid, STATUS, status)
        if error:
            self.client.set_tag(sid, "automl.error", error[:4000])
        mlflow_status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[status]
        self.client.set_terminated(sid, status=mlflow_status)

    def cancel(self, sid: str, grace_s: float = 10.0) -> bool:
        """Stop one search (SIGTERM to its process group, SIGKILL after `grace_s`); False if not running."""
        job = self.jobs.get(sid)
        if job is None or job.returncode is not None:
            return False
        job.cancelled = True
        _stop_group(job.process, grace_s)
        return True

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Terminate every search still running (called from the app's lifespan on shutdown)."""
        for sid in self.running():
            self.cancel(sid, grace_s)
        for job in self.jobs.values():
            try:
                job.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            if job.watcher is not None:  # let it record the final status before the server exits
                job.watcher.join(timeout=grace_s)
        shutil.rmtree(self._root, ignore_errors=True)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group we created (start_new_session), then SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
