"""The on-device agent: a small HTTP server a target device runs, and the client the search uses.

The real target is often another machine (a board, a phone), so measurement must be possible where
the model will run: the agent receives an exported model (ONNX for onnxruntime), times it with the
same harness as local measurement (separate process, pinned threads, median + IQR) and answers JSON.

Protocol (plain HTTP, stdlib only on the device side):
- ``GET /info`` -> device description, fingerprint, runtimes;
- ``POST /measure?runtime=onnxruntime&shape=1,3,28,28&threads=1&precision=fp32&warmup=20&repeats=100``
  with the artifact as the body -> a `LatencyEstimate` as JSON; a malformed model or bad parameter
  answers 400 with ``{"error": "..."}``.
The client bounds every call by a timeout: an unreachable agent is a clear error, never a hang.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from latency_models.estimate import LatencyEstimate, device_fingerprint, device_info
from latency_models.runtimes.base import RUNTIMES, RuntimeError_, get_runtime

MAX_BODY = 512 * 1024 * 1024
MAX_REPEATS = 10_000


class AgentError(RuntimeError):
    """The device agent could not be reached or refused the request; the message says which and why."""


class _Handler(BaseHTTPRequestHandler):
    server_version = "automl-device-agent/1"
    lock = threading.Lock()  # one measurement at a time: concurrent timings would disturb each other

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default; the CLI prints one line per call
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urlparse(self.path).path != "/info":
            self._reply(404, {"error": f"unknown path {self.path}; use GET /info or POST /measure"})
            return
        info = device_info()
        self._reply(200, {**info, "fingerprint": device_fingerprint(info), "runtimes": list(RUNTIMES)})

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path != "/measure":
            self._reply(404, {"error": f"unknown path {url.path}; use POST /measure"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length <= 0:
            self._reply(400, {"error": "send the model as the request body (Content-Length > 0)"})
            return
        if length > MAX_BODY:
            self._reply(413, {"error": f"model of {length} bytes exceeds the agent's limit of {MAX_BODY}"})
            return
        body = self.rfile.read(length)
        try:
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            runtime = q.get("runtime", "onnxruntime")
            if runtime not in RUNTIMES:
                raise ValueError(f"unknown runtime '{runtime}'; this agent has {', '.join(RUNTIMES)}")
            shape = [int(s) for s in q.get("shape", "").split(",") if s]
            if not shape or any(s <= 0 for s in shape):
                raise ValueError("shape must be the full input shape, e.g. shape=1,3,28,28")
            threads = int(q.get("threads", 1))
            warmup = int(q.get("warmup", 20))
            repeats = int(q.get("repeats", 100))
            if not (1 <= threads <= 256 and 0 <= warmup <= MAX_REPEATS and 1 <= repeats <= MAX_REPEATS):
                raise ValueError(f"threads 1..256, warmup 0..{MAX_REPEATS}, repeats 1..{MAX_REPEATS}")
            precision = q.get("precision", "fp32")
        except ValueError as exc:
            self._reply(400, {"error": f"bad parameter: {exc}"})
            return
        from latency_models.measure import MeasurementError, run_worker, to_estimate

        try:
            with self.lock:
                result = run_worker(runtime, [body], [shape], threads=threads, warmup=warmup, repeats=repeats)[0]
            est = to_estimate(result, device=info_device(), runtime=runtime, batch=shape[0], threads=threads,
                              precision=precision)
        except (MeasurementError, RuntimeError_) as exc:
            self._reply(400, {"error": f"the model could not be measured: {exc}"})
            return
        self._reply(200, est.to_dict())


def info_device() -> str:
    from latency_models.estimate import device_name

    return device_name()


def make_server(host: str = "127.0.0.1", port: int = 8765, verbose: bool = False) -> ThreadingHTTPServer:
    """A ready-to-serve agent (call `serve_forever()`); port 0 picks a free port (see `server_address`)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


class AgentClient:
    """Talks to a device agent; every call is bounded by `timeout_s`."""

    def __init__(self, url: str, timeout_s: float = 60.0, connect_timeout_s: float = 5.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AgentError(f"device must be an agent URL like http://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    def _call(self, method: str, path: str, data: bytes | None = None, timeout: float | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except Exception:
                message = exc.reason
            raise AgentError(f"device agent {self.url} refused the request ({exc.code}): {message}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentError(f"device agent {self.url} is unreachable ({reason}); start it on the device with "
                             f"'automl device-agent --host HOST --port PORT' and check the address") from exc

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info", timeout=self.connect_timeout_s)

    def measure(self, artifact: bytes, shape: Sequence[int], *, runtime: str = "onnxruntime", batch: int = 1,
                threads: int = 1, precision: str = "fp32", warmup: int = 20, repeats: int = 100) -> LatencyEstimate:
        get_runtime(runtime)
        query = urlencode({"runtime": runtime, "shape": ",".join(str(int(s)) for s in shape), "threads": threads,
                           "precision": precision, "warmup": warmup, "repeats": repeats})
        return LatencyEstimate.from_dict(self._call("POST", f"/measure?{query}", data=artifact))

    def measure_many(self, artifacts: list[bytes], shapes: list[Sequence[int]], **kwargs: Any) -> list[dict]:
        """Per-item results in the worker's format (the profiler's interface), errors kept per item."""
        out = []
        for art, shape in zip(artifacts, shapes, strict=True):
            try:
                est = self.measure(art, shape, **kwargs)
                out.append({"median": est.ms, "p25": est.p25_ms, "p75": est.p75_ms, "p10": est.p10_ms})
            except AgentError as exc:
                if "unreachable" in str(exc):
                    raise
                out.append({"error": str(exc)})
        return out
