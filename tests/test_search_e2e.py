"""End-to-end searches with real Ray and a real sqlite MLflow store, driven through the CLI.

Covers: the logged runs/metrics/artifacts, a worker killed mid-trial (retried), a killed and then an
interrupted driver (resumed with --resume, no candidate lost or evaluated twice), and a separate Ray head node on
127.0.0.1 used through --address. Every process a test starts is stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from automl.search.progress import proxy_ranking_warning

pytestmark = pytest.mark.slow

TINY = {
    "model": {"name": "resnet20", "train_epochs": 1, "train_limit": 600},
    "dataset": {"name": "fashion-mnist", "limit": 1000, "test_limit": 200},
    "agent": {"name": "random"},
    "budget": {"max_mac_ratio": 0.7},
    "objectives": ["accuracy", "mac_ratio"],
    "evaluation": {"proxy_val_images": 100, "calib_batches": 1, "finetune_top_k": 1, "finetune_epochs": 0.2},
    "latency": {"measure_top_k": 0},
    "candidates": 4,
    "ray": {"workers": 2, "cpus_per_trial": 1, "object_store_mb": 100},
}


def _write_config(tmp_path: Path, name: str, **overrides) -> Path:
    cfg = {**TINY, "name": name, **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _short_tmp() -> str:
    # Ray's unix sockets live under the temp dir: keep the path short.
    return tempfile.mkdtemp(prefix="r", dir="/tmp")


def _kill_leftovers(marker: str) -> None:
    """Kill any process whose command line mentions `marker` (a test's private Ray temp dir)."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _env(ray_tmp: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"AUTOML_RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1", **extra})
    return env


def _automl(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _children(client: MlflowClient, search_id: str, stage: str):
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, filter_string=f"tags.`automl.search_id` = '{search_id}' and "
                                                     f"tags.`automl.role` = 'candidate' and "
                                                     f"tags.`automl.stage` = '{stage}'")


def _parents(client: MlflowClient, name: str):
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, filter_string=f"tags.`automl.role` = 'search' and "
                                                     f"tags.`automl.search_name` = '{name}'")


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def test_tiny_search_logs_expected_runs_and_retries_a_killed_worker(tmp_path, store):
    """One search checks both what is logged and that a worker killed mid-trial (the process evaluating
    proposal 1 exits hard, once) is retried: every candidate still ends 'ok' (one search instead of two keeps
    the suite short)."""
    uri, client = store
    ray_tmp, fault_dir = _short_tmp(), tmp_path / "faults"
    fault_dir.mkdir()
    try:
        proc = _automl("search", str(_write_config(tmp_path, "tiny")), "--tracking-uri", uri,
                       env=_env(ray_tmp, AUTOML_TEST_KILL_PROPOSAL="1", AUTOML_TEST_FAULT_DIR=str(fault_dir)))
    finally:
        _kill_leftovers(ray_tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (fault_dir / "killed-1").exists(), "the fault was not injected: the test would prove nothing"
    assert "best policy" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    # per-layer decisions print short numbers (no float noise such as sparsity=0.09999999999999998)
    assert "per-layer decisions:" in proc.stdout and not re.search(r"=\d\.\d{7,}", proc.stdout)
    assert "[4/4]" in proc.stderr  # live progress lines

    (parent,) = _parents(client, "tiny")
    search_id = parent.info.run_id
    assert parent.data.tags["automl.status"] == "finished"
    assert parent.data.tags["automl.model"] == "resnet20"
    assert parent.data.params["agent.name"] == "random"
    parent_files = {f.path for f in client.list_artifacts(search_id)}
    assert {"config.yaml", "search_space.json", "pareto.csv", "pareto.png", "best_policy.json"} <= parent_files
    assert 0 < parent.data.metrics["best_accuracy"] <= 1

    proxies = _children(client, search_id, "proxy")
    assert sorted(int(r.data.tags["automl.candidate"]) for r in proxies) == [0, 1, 2, 3]
    for run in proxies:
        assert run.data.tags["mlflow.parentRunId"] == search_id
        assert run.data.tags["automl.status"] == "ok"  # including the retried one
        m = run.data.metrics
        assert 0 <= m["accuracy"] <= 1 and 0 < m["mac_ratio"] <= 0.7 + 1e-9
        assert m["size_bytes"] > 0 and m["params"] > 0
        assert "policy.json" in {f.path for f in client.list_artifacts(run.info.run_id)}
    # the uniform channel baseline is evaluated first, at the budget, and ranked with the agent's candidates
    origins = sorted(r.data.tags["automl.origin"] for r in proxies)
    assert origins == ["agent", "agent", "agent", "baseline:uniform_channel"], origins
    (uniform_run,) = [r for r in proxies if r.data.tags["automl.origin"] == "baseline:uniform_channel"]
    assert 0.4 < uniform_run.data.metrics["mac_ratio"] <= 0.7 + 1e-9  # kept channels rounded to 8: 0.447
    assert "baseline candidate uniform_channel: MAC ratio" in proc.stderr
    # the near-chance warning follows from the logged proxy accuracies: printed and tagged exactly when due
    due = proxy_ranking_warning([r.data.metrics["accuracy"] for r in proxies], 10,
                                parent.data.metrics["dense_accuracy"], 0)
    assert (due is not None) == ("automl.warning" in parent.data.tags) == ("proxy ranking" in proc.stderr)
    if due is not None:
        assert due in proc.stderr and parent.data.tags["automl.warning"] == due[len("warning: "):]
    (tuned,) = _children(client, search_id, "finetuned")
    assert "finetuned_accuracy" in tuned.data.metrics and 0 <= tuned.data.metrics["val_accuracy"] <= 1
    # the best policy is the fine-tuned one, chosen on validation and reported on test accuracy
    assert "chosen on validation accuracy" in proc.stdout
    assert parent.data.tags["automl.best_run_id"] == tuned.info.run_id
    assert "model.onnx" in {f.path for f in client.list_artifacts(tuned.info.run_id)}, tuned.data.tags.get(
        "automl.onnx_error")


def _start_driver(cfg: Path, uri: str, ray_tmp: str, log: Path, *extra: str) -> subprocess.Popen:
    env = _env(ray_tmp, AUTOML_TEST_SLEEP_S="1.5")
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "automl", "search", str(cfg), "--tracking-uri", uri, *extra],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _signal_after(driver: subprocess.Popen, client: MlflowClient, name: str, n: int, sig: int) -> int:
    """Wait until search `name` has logged `n` candidates completely (their runs terminated), send `sig` to the
    driver's process group (as a terminal does for Ctrl-C), and return its exit code."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        parents = _parents(client, name)
        if parents and len([r for r in _children(client, parents[0].info.run_id, "proxy")
                            if r.info.status != "RUNNING"]) >= n:
            break
        assert driver.poll() is None, "the driver ended before it could be stopped"
        time.sleep(0.5)
    else:
        pytest.fail(f"the search logged fewer than {n} candidates in 300 s")
    os.killpg(driver.pid, sig)
    return driver.wait(timeout=120)


def test_killed_then_interrupted_driver_resumes_without_loss_or_duplicates(tmp_path, store):
    """SIGKILL (the parent stays 'running'), then a resumed driver stopped with Ctrl-C (SIGINT to the process
    group: Ray Tune stops early and returns, and the search must be marked interrupted, not finished), then a
    second resume that finishes: every candidate exactly once, none re-evaluated."""
    uri, client = store
    cfg = _write_config(tmp_path, "resumable", candidates=6, ray={**TINY["ray"], "workers": 1},
                        evaluation={**TINY["evaluation"], "finetune_top_k": 0})
    tmps = [_short_tmp() for _ in range(3)]
    drivers: list[subprocess.Popen] = []
    try:
        drivers.append(_start_driver(cfg, uri, tmps[0], tmp_path / "run1.log"))
        _signal_after(drivers[0], client, "resumable", 2, signal.SIGKILL)
        (parent,) = _parents(client, "resumable")
        # a SIGKILL can land while a child is being written: such a run stays RUNNING and the resume
        # discards it, so only terminated children count as evaluated
        first = {int(r.data.tags["automl.candidate"]): r.info.run_id
                 for r in _children(client, parent.info.run_id, "proxy") if r.info.status != "RUNNING"}
        assert 2 <= len(first) < 6

        drivers.append(_start_driver(cfg, uri, tmps[1], tmp_path / "run2.log", "--resume"))
        code = _signal_after(drivers[1], client, "resumable", len(first) + 1, signal.SIGINT)
        assert code != 0
        assert f"{len(first)} candidate(s) already evaluated" in (tmp_path / "run2.log").read_text()
        (parent,) = _parents(client, "resumable")
        assert parent.data.tags["automl.status"] == "interrupted"
        before = {int(r.data.tags["automl.candidate"]): r.info.run_id
                  for r in _children(client, parent.info.run_id, "proxy")}
        assert len(first) < len(before) < 6 and all(before[i] == first[i] for i in first)

        proc = _automl("search", str(cfg), "--tracking-uri", uri, "--resume", env=_env(tmps[2]))
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)
        for t in tmps:
            _kill_leftovers(t)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(before)} candidate(s) already evaluated" in proc.stderr
    (parent_after,) = _parents(client, "resumable")
    assert parent_after.info.run_id == parent.info.run_id
    assert parent_after.data.tags["automl.status"] == "finished"
    after = _children(client, parent.info.run_id, "proxy")
    indices = sorted(int(r.data.tags["automl.candidate"]) for r in after)
    assert indices == list(range(6)), indices  # none lost, none twice
    kept = {int(r.data.tags["automl.candidate"]): r.info.run_id for r in after}
    assert all(kept[i] == before[i] for i in before)  # earlier candidates were not re-evaluated
    # the baseline candidate is evaluated once, not again by each resumed driver
    assert sum(r.data.tags["automl.origin"] == "baseline:uniform_channel" for r in after) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_on_a_separate_ray_head_node(tmp_path, store):
    uri, client = store
    ray_tmp = _short_tmp()
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--temp-dir", ray_tmp, "--include-dashboard", "false", "--block",
                             "--disable-usage-stats"],
                            env=_env(ray_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        cfg = _write_config(tmp_path, "cluster", evaluation={**TINY["evaluation"], "finetune_top_k": 0})
        proc = None
        for _ in range(40):  # the head node needs a few seconds to accept drivers
            proc = _automl("search", str(cfg), "--tracking-uri", uri, "--address", f"127.0.0.1:{port}",
                           env=_env(ray_tmp))
            if proc.returncode == 0 or "Could not" not in proc.stderr + proc.stdout:
                break
            time.sleep(1)
        assert proc is not None and proc.returncode == 0, (proc.stderr if proc else "")[-3000:]
        assert f"connecting to cluster at 127.0.0.1:{port}" in proc.stderr
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _kill_leftovers(ray_tmp)
    (parent,) = _parents(client, "cluster")
    assert len(_children(client, parent.info.run_id, "proxy")) == 4


def test_ctrl_c_works_again_after_a_tune_run():
    """Ray Tune's own SIGINT handler (installed by every `Tuner.fit()`, removed only when a signal arrives)
    is taken back out after the run, so a Ctrl+C during the fine-tune that follows a search still stops it."""
    from ray.tune import tune as tune_module

    from automl.search.runner import _tune_signal_handlers_restored

    # start from Python's own Ctrl+C handler, whatever earlier tests (or libraries) installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _tune_signal_handlers_restored():
            tune_module._setup_signal_catching()  # what Tuner.fit() runs before its trials
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_in_loop_latency_is_calibrated_at_the_measured_dense_model():
    """The runner scales the profile's predictions by the dense model's measured / predicted latency (a
    profile predicts at its build's machine speed); a ratio budget is then of the measured dense latency.
    A profile more than 2x off is left as it is, with a warning; `latency.calibrate: false` keeps the
    profile's own scale."""
    from test_latency_profile import _synthetic_other_kernels, fixture_samples, here_profile

    from automl.models import build_model
    from automl.search.config import SearchConfig
    from automl.search.runner import SearchRunner
    from latency_models import predict_policy
    from search_spaces import SearchSpace

    profile = here_profile(fixture_samples() + _synthetic_other_kernels())
    space = SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28))
    predicted = predict_policy(profile, space, space.dense_policy()).ms
    said: list[str] = []
    cfg = SearchConfig.from_dict({"budget": {"max_latency_ratio": 0.5}}, source="test")
    assert cfg.latency.calibrate
    runner = SearchRunner(cfg, printer=said.append)
    dense = {"dense_latency_ms_predicted": predicted, "dense_latency_ms": 1.08 * predicted}
    calibrated = runner._calibrated(profile, dense)
    assert dense["latency_calibration"] == pytest.approx(1.08)
    assert predict_policy(calibrated, space, space.dense_policy()).ms == pytest.approx(1.08 * predicted)
    policy = space.decode({lc.layer.name: {"scheme": "channel", "sparsity": 0.5, "align": 8}
                           for lc in space.layers if "channel" in lc.schemes})
    assert predict_policy(calibrated, space, policy).ms == pytest.approx(1.08 * predict_policy(profile, space, policy).ms)
    assert profile.speed == 1.0  # the loaded profile itself is unchanged
    assert runner._budget(dense["dense_latency_ms"]).max_latency_ms == pytest.approx(0.54 * predicted)
    assert "x1.080" in said[-1]
    wild = {"dense_latency_ms_predicted": predicted, "dense_latency_ms": 3 * predicted}
    assert runner._calibrated(profile, wild) is profile and "rebuild it" in said[-1]
    assert not SearchConfig.from_dict({"latency": {"calibrate": False}}, source="test").latency.calibrate


def test_a_fine_tuned_pick_is_timed_beside_the_dense_model():
    """The reported speedup is a ratio of two models timed interleaved in one process (real onnxruntime),
    with the dense model exported once per search."""
    import torch

    from automl.models import build_model
    from automl.search.config import SearchConfig
    from automl.search.runner import SearchRunner

    torch.manual_seed(0)
    dense = build_model("resnet20", 1, 10, 28).eval()
    thin = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    runner = SearchRunner(SearchConfig.from_dict({"budget": {"max_latency_ratio": 0.5}}, source="test"))
    d1, small = runner._measure_beside_dense(dense, thin, (1, 28, 28))
    artifact = runner._dense_artifact
    assert isinstance(artifact, bytes) and d1.ms > 0 and small.ms > 0
    assert d1.ms > small.ms  # a ResNet-20 against a one-conv net: no timing noise flips that
    d2, _ = runner._measure_beside_dense(dense, thin, (1, 28, 28))
    assert runner._dense_artifact is artifact and d2.ms > 0
