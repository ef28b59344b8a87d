"""The device agent as a real separate process on 127.0.0.1: round trip and its error cases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from latency_models import AgentClient, AgentError, measure_latency


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent_url():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "automl", "device-agent", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "device agent listening on http://127.0.0.1:PORT"
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()


def test_info_names_the_device(agent_url):
    info = AgentClient(agent_url).info()
    assert info["fingerprint"] and "onnxruntime" in info["runtimes"] and info["cores"] >= 1


def test_round_trip_measures_on_the_agent(agent_url):
    est = measure_latency(tiny(), (1, 6, 6), device=agent_url, batch=2, warmup=2, repeats=20)
    assert est.source == "measured" and est.runtime == "onnxruntime" and est.batch == 2
    assert est.ms > 0 and est.repeats == 20


def test_malformed_model_is_a_4xx_with_a_message(agent_url):
    with pytest.raises(AgentError, match=r"\(400\).*could not be measured"):
        AgentClient(agent_url).measure(b"this is not an onnx model", (1, 1, 6, 6))


def test_bad_parameters_are_rejected(agent_url):
    client = AgentClient(agent_url)
    with pytest.raises(AgentError, match=r"\(400\).*shape"):
        client.measure(b"x", ())
    with pytest.raises(AgentError, match=r"\(400\).*repeats"):
        client.measure(b"x", (1, 1, 6, 6), repeats=0)


def test_unreachable_agent_fails_fast_and_clearly():
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(AgentError, match="unreachable.*automl device-agent"):
        measure_latency(tiny(), (1, 6, 6), device=url, timeout_s=3)
    assert time.monotonic() - t0 < 30  # a bound against hanging, not a performance figure


def test_bad_url_is_rejected():
    with pytest.raises(AgentError, match="agent URL"):
        AgentClient("192.168.1.7:8765")
