"""Smoke test of the headline benchmark (experiments/benchmarks/headline.py) on a tiny setting.

Real parts end to end: a tiny ResNet-20 trained on 600 images, a device profile built in seconds, one agent
searching on embedded Ray with a sqlite MLflow store, real onnxruntime measurements, both baselines and the
fine-tune. It checks the structure of what the benchmark produces (cells, MLflow nesting, resume), not the
figures, which belong to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "headline.py"

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **over) -> Path:
    cfg = {
        "name": "headline-smoke",
        "models": [{"name": "resnet20", "train_epochs": 1, "train_limit": 600, "seeds": [0]}],
        "dataset": {"name": "fashion-mnist", "limit": 600, "test_limit": 200},
        "settings": ["fp32"],
        "agents": ["random"],  # one search keeps the smoke test short; the agents have their own tests
        "candidates": 3,
        # 70%, not the real 50%: a 6-second profile may predict that the space cannot reach half the dense
        # latency (the search then stops with a BudgetError, as it should); the smoke test checks structure
        "budget_ratio": 0.7,
        "proxy_val_images": 40,
        "calib_batches": 1,
        "measure_top_k": 2,
        "verify_processes": 2,
        "pick_processes": 2,  # a pick (and a uniform step) must hold the budget in the median of 2 processes
        "uniform_bisect_steps": 3,
        "latency": {"profile_minutes": 0.1},
        "finetune": {"epochs": 0.1, "calib_batches": 1},
        "threads": 1,
        "ray": {"workers": 1, "cpus_per_trial": 1},
        # the fp32 override the real benchmark uses, scaled down: channel pruning only, proxy SGD steps
        "per_setting": {"fp32": {"space": {"schemes": {"conv3x3": ["channel"], "conv1x1": ["channel"],
                                                       "linear": ["channel"]}, "aligns": [8]},
                                 "proxy_finetune_steps": 2}},
        **over,
    }
    path = tmp_path / "headline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(args: list[str], stdout, stderr) -> subprocess.Popen:
    """The benchmark in a session of its own (so the whole of it, Ray included, can be killed)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=stdout, stderr=stderr, text=True,
                            env=env, cwd=ROOT, start_new_session=True)


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the benchmark to its end; on a timeout the whole group (Ray included) is killed."""
    proc = _start(args, subprocess.PIPE, subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the benchmark ran past {timeout} s; its stderr ends with:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the benchmark's session (the benchmark, its Ray head and Ray's workers, which
    run in process groups of their own), reap the benchmark, and wait until none of them runs (a killed
    process can stay a zombie until its new parent reaps it: that one no longer runs)."""
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
    proc.wait()
    running: list[str] = []
    for _ in range(100):
        table = subprocess.run(["ps", "-e", "-o", "sid=,stat=,pid=,args="], capture_output=True, text=True).stdout
        running = [line for line in table.splitlines()
                   if line.split()[0] == str(proc.pid) and not line.split()[1].startswith("Z")]
        if not running:
            return
        time.sleep(0.1)
    pytest.fail("processes of the killed benchmark still run:\n" + "\n".join(running))


def _start_and_kill_mid_search(args: list[str], err: Path, progress: str) -> None:
    """Start the benchmark, wait for the search's `progress` line, then SIGKILL its whole session."""
    with err.open("w") as fh:
        proc = _start(args, subprocess.DEVNULL, fh)
    try:
        deadline = time.monotonic() + 600
        while progress not in err.read_text():
            assert proc.poll() is None, f"the benchmark ended before its search did:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {progress} in 600 s:\n{err.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        _kill_session(proc)


def test_headline_smoke_end_to_end(tmp_path):
    """The whole benchmark on a tiny setting, killed mid-search first (it runs across sessions): the next run
    resumes that search (candidates logged before the kill kept, none evaluated twice) and finishes every
    cell; a third run recomputes nothing; --reverify re-measures the kept policies only."""
    from mlflow import MlflowClient

    # one extra fine-tune seed of every fine-tuned row (`finetune_seeds`)
    config = _config(tmp_path, models=[{"name": "resnet20", "train_epochs": 1, "train_limit": 600, "seeds": [0],
                                        "finetune_seeds": [1]}])
    results = tmp_path / "results.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [str(config), "--results", str(results), "--tracking-uri", uri]
    _start_and_kill_mid_search(args, tmp_path / "first.err", "[2/3]")
    assert "resnet20/fp32/random/s0" not in json.loads(results.read_text())["cells"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("compress-search")
    (first,) = client.search_runs([exp.experiment_id], "tags.`automl.role` = 'search'")

    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming its search {first.info.run_id}" in proc.stderr
    assert "already evaluated" in proc.stderr  # the runner kept the candidates logged before the kill
    resumed = json.loads(results.read_text())["cells"]["resnet20/fp32/random/s0"]
    assert resumed["search_resumed"] is True and resumed["search_id"] == first.info.run_id
    proxies = client.search_runs([exp.experiment_id], f"tags.`automl.search_id` = '{first.info.run_id}' and "
                                                      "tags.`automl.stage` = 'proxy'")
    assert sorted(int(r.data.tags["automl.candidate"]) for r in proxies) == [0, 1, 2]

    saved = json.loads(results.read_text())
    assert saved["meta"]["host"]["fingerprint"]  # the machine the figures come from
    cells = saved["cells"]
    dense = cells["resnet20/dense-latency"]
    assert dense["latency_ms"] > 0 and 0 <= dense["test_acc"] <= 1
    for method in ("dense", "random", "uniform_channel", "global_magnitude", "dense_finetuned"):
        cell = cells[f"resnet20/fp32/{method}/s0"]
        assert cell["latency_ms"] > 0 and cell["speedup"] == pytest.approx(dense["latency_ms"] / cell["latency_ms"])
        assert isinstance(cell["within_budget"], bool)
        assert cell["budget_ms"] == pytest.approx(0.7 * dense["latency_ms"])
        assert 0.0 <= cell["test_acc"] <= 1.0 and 0.0 < cell["mac_ratio"] <= 1.0
        # the final interleaved re-measurement, against the dense model timed in the same process
        # (the median over 2 timing processes of dense / policy timed side by side)
        assert cell["verified_ms"] > 0 and len(cell["verified_speedups"]) == 2
        assert cell["verified_speedup"] == pytest.approx(cell["verified_dense_ms"] / cell["verified_ms"])
        assert min(cell["verified_speedups"]) <= cell["verified_speedup"] <= max(cell["verified_speedups"])
    for agent in ("random",):
        cell = cells[f"resnet20/fp32/{agent}/s0"]
        assert cell["candidates"] == 3 and cell["measured_for_pick"] >= 1
        assert cell["search_seconds"] > 0 and cell["predicted_ms"] > 0
        # the per-setting space reached the search: only channel pruning (or dense), aligned to 8
        for d in cell["policy"]["layers"].values():
            assert d["scheme"] in ("channel", "dense")
            assert d["scheme"] == "dense" or d["align"] == 8
    # uniform channel pruning really prunes channels, global magnitude really masks weights
    uni = cells["resnet20/fp32/uniform_channel/s0"]["policy"]["layers"]
    assert any(d["scheme"] == "channel" and d.get("sparsity", 0) > 0 for d in uni.values())
    glob = cells["resnet20/fp32/global_magnitude/s0"]
    assert glob["mac_ratio"] == pytest.approx(0.7, abs=0.02)  # masked to the budget ratio of MACs
    # the dense reference row: the dense model, fine-tuned with the same recipe, at the dense row's latency
    dft = cells["resnet20/fp32/dense_finetuned/s0"]
    assert dft["finetuned"] and dft["mac_ratio"] == 1.0
    assert all(d["scheme"] == "dense" for d in dft["policy"]["layers"].values())
    assert dft["latency_ms"] == cells["resnet20/fp32/dense/s0"]["latency_ms"]
    # every fine-tuned row was fine-tuned again with seed 1, the dense (no fine-tune) row was not
    for method in ("random", "uniform_channel", "global_magnitude", "dense_finetuned"):
        extra = cells[f"resnet20/fp32/{method}/s0"]["extra_finetunes"]
        assert list(extra) == ["1"] and 0.0 <= extra["1"]["test_acc"] <= 1.0 and extra["1"]["finetune_seconds"] > 0
    assert "extra_finetunes" not in cells["resnet20/fp32/dense/s0"]
    assert "| 0 (FT 0,1) |" in proc.stdout

    # the table is printed with one row per method
    for label in ("dense (no pruning)", "| random |", "uniform channel (baseline)",
                  "global magnitude (baseline)", "dense + the same fine-tune (reference)"):
        assert label in proc.stdout

    # MLflow: one benchmark parent, the searches nested under it, one result child per cell
    bench = client.search_runs([exp.experiment_id], "tags.`automl.role` = 'benchmark'")
    assert len(bench) == 1
    bench_id = bench[0].info.run_id
    searches = client.search_runs([exp.experiment_id], "tags.`automl.role` = 'search'")
    assert len(searches) == 1 and all(r.data.tags["mlflow.parentRunId"] == bench_id for r in searches)
    assert searches[0].data.params["evaluation.proxy_finetune_steps"] == "2"  # the fp32 override reached it
    res = client.search_runs([exp.experiment_id], "tags.`automl.role` = 'benchmark_result'")
    assert len(res) == 5 + 4 and all(r.data.tags["mlflow.parentRunId"] == bench_id for r in res)
    assert sum(r.data.tags.get("automl.finetune_seed") == "1" for r in res) == 4
    # each search holds its fine-tuned, measured pick, so `automl best` can answer from it
    for s in searches:
        ft = client.search_runs([exp.experiment_id], f"tags.`automl.search_id` = '{s.info.run_id}' and "
                                                     "tags.`automl.stage` = 'finetuned'")
        assert len(ft) == 1 and ft[0].data.tags["automl.latency_source"] == "measured"

    # a second invocation resumes: nothing is recomputed, no new runs
    again = _run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== resnet20" not in again.stderr and "verifying" not in again.stderr
    assert "extra fine-tune" not in again.stderr
    assert len(client.search_runs([exp.experiment_id], "tags.`automl.role` = 'search'")) == 1
    # --reverify re-measures every kept policy and nothing else
    before = json.loads(results.read_text())["cells"]
    third = _run([*args, "--reverify"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "--reverify: 5 rows to re-measure" in third.stderr and "verifying 6 models" in third.stderr
    assert "== resnet20" not in third.stderr
    after = json.loads(results.read_text())["cells"]
    for key, cell in after.items():
        if "policy" in cell:
            assert len(cell["verified_speedups"]) == 2
            assert cell["test_acc"] == before[key]["test_acc"] and cell["latency_ms"] == before[key]["latency_ms"]


def test_headline_rejects_bad_config(tmp_path):
    proc = _run([str(_config(tmp_path, agents=["random", "nope"]))], timeout=120)
    assert proc.returncode == 2
    assert "agents" in proc.stderr and "nope" in proc.stderr
    proc = _run([str(_config(tmp_path, space={"weight_bits": [4]}))], timeout=120)
    assert proc.returncode == 2 and "space" in proc.stderr
    proc = _run([str(_config(tmp_path)), "--models", "resnet20", "vgg99"], timeout=120)
    assert proc.returncode == 2 and "vgg99" in proc.stderr and "resnet20" in proc.stderr


def _headline_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("headline_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["headline_bench"] = module  # pydantic resolves the config's annotations through it
    spec.loader.exec_module(module)
    return module


def test_per_setting_override_recomputes_only_its_setting(tmp_path):
    """Adding a `per_setting` entry for fp32 leaves int8 cells (and the model-level ones) current."""
    h = _headline_module()
    plain = h.HeadlineConfig.from_yaml(_config(tmp_path, per_setting={}))
    spec = plain.models[0]
    sig = h.signature(plain, spec)
    assert h.setting_signature(plain, spec, "fp32") == h.setting_signature(plain, spec, "int8") == sig
    store = h.ResultStore(tmp_path / "r.json", plain.model_dump_json())
    for key in ("resnet20/dense-latency", "resnet20/budget/fp32", "resnet20/budget/int8",
                "resnet20/fp32/random/s0", "resnet20/int8/random/s0"):
        store.put(key, {"method": "random"}, sig)
    assert len(h.current_cells(plain, spec, store)) == 5

    override = h.HeadlineConfig.from_yaml(_config(tmp_path))  # the default smoke config has an fp32 override
    assert h.signature(override, spec) == sig  # the model-level recipe is unchanged
    assert h.setting_signature(override, spec, "fp32") != sig
    assert h.setting_signature(override, spec, "int8") == sig
    assert sorted(h.current_cells(override, spec, store)) == [
        "resnet20/budget/int8", "resnet20/dense-latency", "resnet20/int8/random/s0"]
    assert h.space_options(override, "fp32")["aligns"] == [8]
    assert h.space_options(override, "int8")["weight_bits"] == [8] and "aligns" not in h.space_options(override, "int8")
    assert h.setting_spec(override, "fp32").proxy_finetune_steps == 2
    assert h.setting_spec(override, "int8").proxy_finetune_steps == 0
    bad = _config(tmp_path, per_setting={"fp32": {"space": {"weight_bits": [4]}}})
    with pytest.raises(h.ConfigError, match="weight_bits"):
        h.HeadlineConfig.from_yaml(bad)


def test_per_model_finetune_override_and_signature(tmp_path):
    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    spec = cfg.models[0]
    assert h.finetune_recipe(cfg, spec) == (0.1, cfg.finetune.lr)
    tuned = spec.model_copy(update={"finetune_epochs": 2.0, "finetune_lr": 0.05})
    assert h.finetune_recipe(cfg, tuned) == (2.0, 0.05)
    # a model without the lr override keeps the signature it had before the field existed (finished cells
    # stay valid); setting it changes the signature (its cells are recomputed)
    assert h.signature(cfg, spec) == h.signature(cfg, spec.model_copy(update={"finetune_lr": None}))
    assert h.signature(cfg, spec) != h.signature(cfg, spec.model_copy(update={"finetune_lr": 0.05}))
    with pytest.raises(h.ConfigError, match="finetune_lr"):
        h.HeadlineConfig.from_yaml(_config(tmp_path, models=[{"name": "resnet20", "finetune_lr": -1}]))


def test_per_setting_uniform_align(tmp_path):
    """`per_setting.<s>.uniform_align` sets the uniform baseline's kept-channel multiple in that setting
    only; a setting entry without it keeps the signature it had before the field existed."""
    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    spec = cfg.models[0]
    assert h.uniform_align_for(cfg, "fp32") == h.uniform_align_for(cfg, "int8") == cfg.uniform_align
    fp32_sig = h.setting_signature(cfg, spec, "fp32")
    extra = {s: v.model_dump() for s, v in cfg.per_setting.items()} | {"int8": {"uniform_align": 16}}
    tuned = h.HeadlineConfig.from_yaml(_config(tmp_path, per_setting=extra, settings=["fp32", "int8"]))
    assert h.uniform_align_for(tuned, "int8") == 16 and h.uniform_align_for(tuned, "fp32") == cfg.uniform_align
    assert h.setting_signature(tuned, spec, "fp32") == fp32_sig  # None is left out of the signature
    assert h.setting_signature(tuned, spec, "int8") != h.setting_signature(cfg, spec, "int8")
    assert "int8: 16" in h.per_setting_text(tuned)
    with pytest.raises(h.ConfigError, match="uniform_align"):
        h.HeadlineConfig.from_yaml(_config(tmp_path, per_setting={"int8": {"uniform_align": 0}}))


def test_per_model_setting_entry_replaces_the_benchmarks(tmp_path):
    """A model's own `per_setting` entry replaces the benchmark's for that model only: its cells carry the
    signature that entry gives (the same as a benchmark-level entry equal to it, so moving an entry down to
    one model keeps that model's finished cells), other models keep the benchmark's entry, and the docs
    text names which model searched which space."""
    h = _headline_module()
    channel = {"space": {"schemes": {"conv3x3": ["channel"], "conv1x1": ["channel"]}, "aligns": [8]},
               "proxy_finetune_steps": 3}
    shared = h.HeadlineConfig.from_yaml(_config(tmp_path, per_setting={"int8": {"uniform_align": 16}},
                                                settings=["fp32", "int8"]))
    moved = h.HeadlineConfig.from_yaml(_config(
        tmp_path, settings=["fp32", "int8"], per_setting={"int8": channel},
        models=[{"name": "resnet20", "train_epochs": 1, "train_limit": 600,
                 "per_setting": {"int8": {"uniform_align": 16}}},
                {"name": "mobilenetv2", "train_epochs": 1}]))
    r20, mnv2 = moved.models
    assert h.signature(moved, r20) == h.signature(shared, shared.models[0])
    assert h.setting_signature(moved, r20, "int8") == h.setting_signature(shared, shared.models[0], "int8")
    assert h.setting_signature(moved, r20, "fp32") == h.signature(moved, r20)  # no fp32 entry anywhere
    assert h.setting_signature(moved, mnv2, "int8") != h.setting_signature(moved, r20, "int8")
    assert h.uniform_align_for(moved, "int8", r20) == 16 and h.uniform_align_for(moved, "int8", mnv2) == 8
    assert h.setting_spec(moved, "int8", r20).proxy_finetune_steps == 0
    assert h.setting_spec(moved, "int8", mnv2).proxy_finetune_steps == 3
    assert h.space_options(moved, "int8", mnv2)["aligns"] == [8] and "aligns" not in h.space_options(moved, "int8", r20)
    assert h.space_options(moved, "int8", mnv2)["weight_bits"] == [8]
    assert h.proxy_steps_text(moved) == ", then 3 SGD steps (int8 (mobilenetv2))"
    text = h.per_setting_text(moved)
    assert 'int8 (mobilenetv2): {' in text and '"conv3x3":["channel"]' in text
    assert "The standard space (every scheme): fp32; int8 (resnet20)." in text
    assert "except: int8 (resnet20): 16." in text
    both = moved.model_copy(update={"per_setting": {"int8": h.SettingSpec(uniform_align=16, **channel)}})
    assert "except: int8: 16." in h.per_setting_text(both)  # the same value for every model: one label
    with pytest.raises(h.ConfigError, match="weight_bits"):
        h.HeadlineConfig.from_yaml(_config(tmp_path, models=[
            {"name": "resnet20", "per_setting": {"int8": {"space": {"weight_bits": [4]}}}}]))


def test_verify_processes_text_names_each_models_count(tmp_path):
    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    store = h.ResultStore(tmp_path / "r.json", cfg.model_dump_json())
    assert h.verify_processes_text(store) == "none yet"
    store.data["meta"]["verified"] = {"resnet20": {"dense_ms": 0.4, "processes": 3}, "mobilenetv2": {"dense_ms": 0.5}}
    assert h.verify_processes_text(store) == "resnet20: 3, mobilenetv2: 1"  # before the count was recorded: one


def _scripted_measurer(h, cfg, script: dict[str, list[float]]):
    """A Measurer whose timing processes return scripted figures (per policy tag, one per process; the dense
    reference at 2.0 ms in every process, the reference 1.0 ms, so each figure is halved). The pick's rule
    is tested on figures chosen to sit at the budget's edge; the smoke test above runs it on real timings."""
    from types import SimpleNamespace

    class Scripted(h.Measurer):
        def __init__(self):
            super().__init__(cfg, "resnet20", None, None, (1, 28, 28))
            self.reference_ms, self.processes, self.timed = 1.0, 0, []
            self.left = {k: list(v) for k, v in script.items()}

        def export(self, policy, precision):
            return policy.metadata["tag"].encode()

        def dense_model(self):
            return b"dense"

        def time_models(self, items):
            self.processes += 1
            tags = [m.decode() for m, _ in items[1:]]
            self.timed.append(tags)
            return [SimpleNamespace(ms=2.0)] + [SimpleNamespace(ms=2.0 * self.left[t].pop(0)) for t in tags]

    return Scripted()


def test_pick_holds_the_budget_in_the_median_of_several_timing_processes(tmp_path):
    """With `pick_processes` > 1 the most accurate candidate one process timed within the budget must hold it
    in the median of that many processes, else the next is tried; with 1 (the default) the single timing
    decides. Extra processes time only the would-be pick; earlier figures are kept, not re-timed."""
    from automl.policy import CompressionPolicy

    h = _headline_module()
    assert h.HeadlineConfig.model_fields["pick_processes"].default == 1
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path, pick_processes=1))

    def cand(i, tag, acc):
        return {"index": i, "status": "ok", "metrics": {"accuracy": acc},
                "policy": CompressionPolicy("resnet20", metadata={"tag": tag})}

    cands = [cand(0, "A", 0.9), cand(1, "B", 0.8), cand(2, "C", 0.7), cand(3, "D", 0.6)]
    script = {"A": [0.99, 1.05, 1.04], "B": [0.97, 0.98, 1.20], "C": [1.50], "D": [0.90]}
    one = _scripted_measurer(h, cfg, script)
    c, ms, within, n = h.pick_by_measurement(cands, one, "fp32", 1.0, k=3)
    assert (c["index"], ms, within, n) == (0, pytest.approx(0.99), True, 3) and one.processes == 1

    three = _scripted_measurer(h, cfg, script)
    c, ms, within, n = h.pick_by_measurement(cands, three, "fp32", 1.0, k=3, processes=3)
    assert (c["index"], within, n) == (1, True, 3) and ms == pytest.approx(0.98)  # A's median 1.04 is over
    assert three.timed == [["A", "B", "C"], ["A"], ["A"], ["B"], ["B"]]
    assert three.measure([cands[0]["policy"]], "fp32", 3) == [pytest.approx(1.04)]  # kept, not re-timed
    assert three.processes == 5

    # nothing holds the budget in the first round: the next round's candidate is measured and confirmed
    script = {"A": [0.99, 1.05, 1.04], "B": [1.10], "C": [1.50], "D": [0.90, 0.95, 1.30]}
    c, ms, within, n = h.pick_by_measurement(cands, _scripted_measurer(h, cfg, script), "fp32", 1.0, k=3,
                                             processes=3)
    assert (c["index"], within, n) == (3, True, 4) and ms == pytest.approx(0.95)
    # nothing at all: the fastest measured, flagged
    script = {"A": [0.99, 1.05, 1.04], "B": [1.10], "C": [1.50], "D": [1.02]}
    c, ms, within, n = h.pick_by_measurement(cands, _scripted_measurer(h, cfg, script), "fp32", 1.0, k=3,
                                             processes=3)
    assert (c["index"], within, n) == (3, False, 4) and ms == pytest.approx(1.02)

    # the option enters the signature only when set (cells computed before it existed stay current)
    spec = cfg.models[0]
    assert h.signature(cfg, spec) == h.signature(cfg.model_copy(update={"pick_processes": 1}), spec)
    assert h.signature(cfg, spec) != h.signature(cfg.model_copy(update={"pick_processes": 3}), spec)
    assert "median over 3 timing processes" in h.pick_processes_text(cfg.model_copy(update={"pick_processes": 3}))


def test_pick_recalibrates_on_what_it_measured_when_the_most_accurate_are_all_over(tmp_path):
    """Where every candidate of the proxy-ordered rounds is over the budget, the next rounds measure the most
    accurate of the others whose predicted latency, scaled by the measured / predicted ratio seen so far,
    fits it; none fitting, the fastest measured is returned flagged."""
    from automl.policy import CompressionPolicy

    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))

    def cand(tag, acc, pred):
        return {"index": ord(tag) - 65, "status": "ok", "metrics": {"accuracy": acc, "latency_ms": pred},
                "policy": CompressionPolicy("resnet20", metadata={"tag": tag})}

    # A-C are over by 5% (measured / predicted 1.05); D predicted 0.97 -> 1.02: still over; E (0.94 -> 0.99)
    # fits, F (0.90) too but less accurate; G is fast but predicted over, so never measured
    cands = [cand("A", 0.9, 1.0), cand("B", 0.89, 1.0), cand("C", 0.88, 1.0), cand("D", 0.87, 0.97),
             cand("E", 0.86, 0.94), cand("F", 0.8, 0.90), cand("G", 0.95, 1.2)]
    cands.append({**cand("H", 0.99, 0.5), "status": "error"})
    script = {"A": [1.05], "B": [1.05], "C": [1.05], "G": [1.26], "E": [0.985], "F": [0.95]}
    m = _scripted_measurer(h, cfg, script)
    c, ms, within, n = h.pick_by_measurement(cands, m, "fp32", 1.0, k=2, rounds=2)
    # rounds 1-2 by proxy: G (1.26), A | B, C; then the recalibrated round: E and F (D: 0.97 x 1.05 > 1)
    assert m.timed == [["G", "A"], ["B", "C"], ["E", "F"]]
    assert (c["metrics"]["latency_ms"], within, n) == (0.94, True, 6) and ms == pytest.approx(0.985)

    script = {"A": [1.05], "B": [1.05], "C": [1.05], "G": [1.26], "E": [1.02], "F": [1.01]}
    m = _scripted_measurer(h, cfg, script)
    c, ms, within, n = h.pick_by_measurement(cands, m, "fp32", 1.0, k=2, rounds=2)
    assert m.timed == [["G", "A"], ["B", "C"], ["E", "F"]]  # after E and F no other fits: it stops there
    assert (c["metrics"]["latency_ms"], within, n) == (0.90, False, 6) and ms == pytest.approx(1.01)
    assert h.pick_by_measurement(cands, _scripted_measurer(h, cfg, script), "fp32", 1.0, k=2, rounds=2,
                                 recalibrated_rounds=0)[2:] == (False, 4)

    # a cell picked over the budget before these rounds existed is recomputed; one within it is not
    assert h.needs_repick({"within_budget": False}) and not h.needs_repick({"within_budget": True})
    assert not h.needs_repick({"within_budget": False, "pick_rule": h.PICK_RULE})


def test_budget_conversion_samples_policies_near_the_budget():
    """The budget's conversion measures policies drawn from the space whose predictions are nearest the
    budget: the n nearest of the pool, seeded (the same draw on every run), with the setting's bits."""
    from automl.models import build_model
    from search_spaces import SearchSpace, SpaceConfig, cost_report

    h = _headline_module()
    space = SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28),
                                   SpaceConfig.from_dict({"schemes": {"conv3x3": ["channel"], "conv1x1": ["channel"]},
                                                          "sparsities": [0.0, 0.3, 0.6]}))

    def mac_ratio(policy):
        return float(cost_report(space, policy).mac_ratio)

    drawn = h.sampled_near_budget(space, mac_ratio, 0.5, 5, None, pool=64)
    assert len(drawn) == 5 and all(pred == pytest.approx(mac_ratio(p)) for p, pred in drawn)
    gaps = [abs(pred - 0.5) for _, pred in drawn]
    assert gaps == sorted(gaps) and gaps[-1] < 0.1  # the nearest of 64 draws, nearest first
    pool = [abs(mac_ratio(p) - 0.5) for p, _ in h.sampled_near_budget(space, mac_ratio, 0.5, 64, None, pool=64)]
    assert sorted(pool)[:5] == pytest.approx(gaps)
    again = h.sampled_near_budget(space, mac_ratio, 0.5, 5, None, pool=64)
    assert [p.to_dict() for p, _ in again] == [p.to_dict() for p, _ in drawn]
    int8 = h.sampled_near_budget(space, mac_ratio, 0.5, 2, 8, pool=8)
    assert all(p.decision(name).weight_bits == 8 == p.decision(name).act_bits
               for p, _ in int8 for name in space.layer_names())


def test_fill_budget_moves_a_pick_to_the_budget_keeping_its_allocation(tmp_path):
    """A pick under the budget is pruned less, one over it more, by one factor on its channel layers'
    sparsities, until it sits just within the budget; the agent's per-layer allocation keeps its order. A
    budget the space's largest sparsities cannot reach leaves the pick as it was, flagged."""
    from automl.models import build_model
    from search_spaces import SearchSpace, SpaceConfig, cost_report

    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    space = SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28),
                                   SpaceConfig.from_dict({"schemes": {"conv3x3": ["channel"], "conv1x1": ["channel"]},
                                                          "sparsities": [0.0, 0.35, 0.7]}))
    names = space.layer_names()
    convs = [n for n in names if space.choices(n).schemes != ["dense"] and "channel" in space.choices(n).schemes]

    class MacMeter(h.Measurer):  # "latency" = MAC ratio: monotone in the pruning, like the real one
        def __init__(self):
            super().__init__(cfg, "resnet20", None, None, (1, 28, 28))
            self.calls = []

        def measure(self, policies, precision, processes=1):
            self.calls.append(processes)
            return [float(cost_report(space, p).mac_ratio) for p in policies]

    choices = {n: {"scheme": "channel", "sparsity": 0.2 + 0.3 * (i % 2), "align": 1} for i, n in enumerate(convs)}
    pick = space.decode(choices)
    pick_ms = float(cost_report(space, pick).mac_ratio)

    for target in (pick_ms * 1.15, pick_ms * 0.85):  # slack under the budget, then over it
        meter = MacMeter()
        policy, ms, within, t = h.fill_budget(pick, space, meter, "fp32", target, steps=8, processes=3)
        assert within and ms <= target and ms > 0.97 * target
        assert (t < 1) == (target > pick_ms) and ms == pytest.approx(float(cost_report(space, policy).mac_ratio))
        sp = [policy.decision(n).sparsity for n in convs]
        assert all(a > b for a, b in zip(sp[1::2], sp[0::2], strict=False))  # the allocation's shape is kept
        assert 3 in meter.calls  # a step within the budget confirmed in the median of 3 processes

    policy, ms, within, t = h.fill_budget(pick, space, MacMeter(), "fp32", 0.01, steps=4)
    assert (policy, ms, within, t) == (pick, pytest.approx(pick_ms), False, 1.0)
    dense = space.dense_policy()
    assert h.fill_budget(dense, space, MacMeter(), "fp32", 0.5, steps=4)[1:] == (1.0, False, 1.0)
    spec = cfg.models[0]
    assert h.signature(cfg, spec) != h.signature(cfg.model_copy(update={"fill_budget": True}), spec)


def test_results_file_keeps_to_one_machine(tmp_path):
    """A results file records the machine (and timed libraries) its figures come from; a run on another
    refuses to add to it, naming both and the way out. A file written before hosts were recorded is checked
    against the machine its verification names."""
    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    here = h.this_host()
    assert here["device"] and here["fingerprint"]

    store = h.ResultStore(tmp_path / "r.json", cfg.model_dump_json())
    h.claim_host(store, here)
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["host"] == here
    h.claim_host(h.ResultStore(tmp_path / "r.json", cfg.model_dump_json()), here)  # same machine: fine
    other = {"device": "Other CPU x2", "fingerprint": "other-cpu-x2-0123456789"}
    with pytest.raises(h.HostMismatch, match="Other CPU x2.*--results"):
        h.claim_host(h.ResultStore(tmp_path / "r.json", cfg.model_dump_json()), other)

    old = h.ResultStore(tmp_path / "old.json", cfg.model_dump_json())
    old.data["meta"]["verified"] = {"resnet20": {"dense_ms": 0.5, "device": "Other CPU x2", "processes": 3}}
    old.put("resnet20/dense-latency", {"latency_ms": 0.5}, "sig")
    with pytest.raises(h.HostMismatch, match="Other CPU x2"):
        h.claim_host(old, here)
    h.claim_host(old, other)  # the machine it names: recorded from now on
    assert old.data["meta"]["host"] == other


def test_a_fresh_machine_finds_the_committed_run_measured_on_it(tmp_path):
    """The committed `<name>_results*.json` whose recorded machine is this one is continued; another
    machine's file, a file naming no machine, another benchmark's file and an unreadable one are not."""
    h = _headline_module()
    here = h.this_host()
    other = {"device": "Other CPU x2", "fingerprint": "other-cpu-x2-0123456789"}

    def write(name: str, meta: dict) -> Path:
        (tmp_path / name).write_text(json.dumps({"config": {}, "cells": {}, "meta": meta}))
        return tmp_path / name

    write("headline_results_other.json", {"host": other})
    write("headline_results.json", {"verified": {"resnet20": {"device": here["device"]}}})
    (tmp_path / "headline_results_broken.json").write_text("{not json")
    write("quick_results_here.json", {"host": here})
    assert h.committed_results("headline", here, tmp_path) is None
    mine = write("headline_results_here.json", {"host": here})
    assert h.committed_results("headline", here, tmp_path) == mine
    assert h.committed_results("headline", other, tmp_path) == tmp_path / "headline_results_other.json"


def test_extra_finetune_seeds_order_and_report(tmp_path):
    """`finetune_seeds` fine-tunes every fine-tuned row again per seed, one seed across all rows first; the
    row's accuracy becomes the mean ± std over its fine-tunes, and the seeds column names them. The seeds
    stay out of the signature: adding them keeps every finished cell."""
    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    spec = cfg.models[0]
    seeded = spec.model_copy(update={"finetune_seeds": [1, 2]})
    assert h.signature(cfg, spec) == h.signature(cfg, seeded)
    cfg2 = cfg.model_copy(update={"models": [seeded]})
    sig = h.setting_signature(cfg, spec, "fp32")
    store = h.ResultStore(tmp_path / "r.json", cfg.model_dump_json())
    store.put("resnet20/dense-latency", {"latency_ms": 1.0, "test_acc": 0.9}, h.signature(cfg, spec))

    def row(method, acc, finetuned=True):
        return {"model": "resnet20", "setting": "fp32", "method": method, "seed": 0, "latency_ms": 0.5,
                "speedup": 2.0, "within_budget": True, "budget_ms": 0.5, "mac_ratio": 0.3, "size_bytes": 1e5,
                "brief": "b", "policy": {}, "test_acc": acc, "finetuned": finetuned}

    store.put("resnet20/fp32/dense/s0", row("dense", 0.9, finetuned=False), sig)
    store.put("resnet20/fp32/random/s0", row("random", 0.88), sig)
    store.put("resnet20/fp32/uniform_channel/s0", row("uniform_channel", 0.87), sig)
    assert h.extra_finetune_todo(cfg, spec, store) == []
    assert h.extra_finetune_todo(cfg2, seeded, store) == [
        (1, "resnet20/fp32/random/s0"), (1, "resnet20/fp32/uniform_channel/s0"),
        (2, "resnet20/fp32/random/s0"), (2, "resnet20/fp32/uniform_channel/s0")]

    cell = store.get("resnet20/fp32/random/s0")
    store.put("resnet20/fp32/random/s0", {**cell, "extra_finetunes": {
        "2": {"test_acc": 0.90, "finetune_seconds": 1.0}, "1": {"test_acc": 0.86, "finetune_seconds": 1.0}}}, sig)
    assert h.extra_finetune_todo(cfg2, seeded, store) == [(1, "resnet20/fp32/uniform_channel/s0"),
                                                          (2, "resnet20/fp32/uniform_channel/s0")]
    assert h.accuracies(store.get("resnet20/fp32/random/s0")) == [0.88, 0.86, 0.90]
    # a row with the same policy takes a finished row's result for that seed instead of fine-tuning again
    assert h.fine_tuned_twin(cfg2, seeded, store, "resnet20/fp32/uniform_channel/s0", 1) == "resnet20/fp32/random/s0"
    assert h.fine_tuned_twin(cfg2, seeded, store, "resnet20/fp32/random/s0", 1) is None  # none done by another
    store.put("resnet20/fp32/uniform_channel/s0", {**store.get("resnet20/fp32/uniform_channel/s0"),
                                                   "policy": {"model": "resnet20"}}, sig)
    assert h.fine_tuned_twin(cfg2, seeded, store, "resnet20/fp32/uniform_channel/s0", 1) is None  # another policy
    table = h.render(cfg2, store)
    line = next(x for x in table.splitlines() if x.startswith("| random |"))
    assert "| 88.00 ± 2.00% | -2.00 |" in line and "| 0 (FT 0,1,2) |" in line
    line = next(x for x in table.splitlines() if x.startswith("| uniform channel"))
    assert "| 87.00% |" in line and "| 0 |" in line


def test_fill_budget_widens_every_step_and_the_option_is_in_the_signature(tmp_path):
    """With a widener, every policy fill_budget measures has whole blocks where the widener finds them free
    (here: a cost counting channels in blocks of 16, as onnxruntime's NCHWc layout computes them);
    `widen_free_channels` changes the cells' signature but not the searches'."""
    import math

    from automl.models import build_model
    from search_spaces import SearchSpace, SpaceConfig, cost_report
    from search_spaces.widening import widen_free_channels

    h = _headline_module()
    cfg = h.HeadlineConfig.from_yaml(_config(tmp_path))
    space = SearchSpace.from_model(build_model("resnet20", 1, 10, 28), "resnet20", (1, 28, 28),
                                   SpaceConfig.from_dict({"schemes": {"conv3x3": ["channel"], "conv1x1": ["channel"]},
                                                          "sparsities": [0.0, 0.35, 0.7]}))

    def blocked_macs(p) -> float:
        pad = lambda c: math.ceil(c / 16) * 16  # noqa: E731
        return float(sum(pad(cl.out_channels) * pad(cl.in_channels) * cl.kernel_size[0] * cl.kernel_size[1]
                         * cl.output_hw[0] * cl.output_hw[1] for cl in space.compressed_layers(p)))

    measured = []

    class BlockedMeter(h.Measurer):  # "latency" = MACs counted in channel blocks of 16
        def __init__(self):
            super().__init__(cfg, "resnet20", None, None, (1, 28, 28))

        def measure(self, policies, precision, processes=1):
            measured.extend(policies)
            return [blocked_macs(p) for p in policies]

    widen = lambda p: widen_free_channels(p, space, blocked_macs, 16)[0]  # noqa: E731
    grouped = {n for g in space.groups for n in g.out_members}
    pick = space.decode({n: {"scheme": "channel", "sparsity": 0.35, "align": 8} for n in grouped})
    assert h.widened_groups(space, pick, widen(pick)) > 0
    target = 0.8 * blocked_macs(widen(pick))
    policy, ms, within, t = h.fill_budget(pick, space, BlockedMeter(), "fp32", target, steps=6, widen=widen)
    assert within and t > 1 and ms <= target
    for p in measured:  # every step measured with its free channels kept
        assert all(cl.out_channels % 16 == 0 for cl in space.compressed_layers(p) if cl.name in grouped)
        assert h.widened_groups(space, p, widen(p)) == 0
    assert ms == blocked_macs(policy) and any(p is policy for p in measured)
    # the pick's own channels (8 of 16, 24 of 32 at align 8) are widened, not scaled from the widened ones
    assert cost_report(space, widen(pick)).mac_ratio > cost_report(space, pick).mac_ratio
    spec = cfg.models[0]
    on = cfg.model_copy(update={"widen_free_channels": True})
    assert h.agent_signature(cfg, spec, "fp32") != h.agent_signature(on, spec, "fp32")  # NCHWc: it acts
    assert h.agent_signature(cfg, spec, "int8") == h.agent_signature(on, spec, "int8")  # no blocked layout
    for s in ("fp32", "int8"):  # baselines and searches are not touched by it
        assert h.setting_signature(cfg, spec, s) == h.setting_signature(on, spec, s)
        assert h.setting_signature(cfg, spec, s, search=True) == h.setting_signature(on, spec, s, search=True)
