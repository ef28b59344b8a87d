"""Headline benchmark (issue 8): searched policies vs uniform channel pruning, global magnitude pruning and
random search, at a latency budget of half the dense model's *measured* latency, fp32 and with int8.

    .venv/bin/python experiments/benchmarks/headline.py experiments/benchmarks/headline.yaml --docs

Per model and setting (`fp32`: onnxruntime fp32; `int8`: the whole model runs as onnxruntime static int8,
the space fixes 8-bit weights and activations so the proxy and the fine-tune see int8 numerics):

1. the dense model's latency is measured (onnxruntime, batch 1, 1 thread, fp32); budget = ratio x that;
2. every agent runs one real `automl search` (embedded Ray, MLflow) with the same number of candidates
   and the same budget on the setting's predicted latency; the search is nested under one MLflow parent
   run for the whole benchmark;
3. deploy-verified pick: the search's best proxy candidates are measured on the real runtime and the most
   accurate one whose *measured* latency meets the budget is kept (the promise: reported speedups are
   measured, not predicted; with `pick_processes` > 1, meets it in the median of that many processes);
4. baselines: uniform channel pruning (every layer the same ratio, kept channels rounded to `uniform_align`)
   bisected on *measured* latency to the same budget, and global magnitude pruning at the budget's MAC
   ratio (onnxruntime has no sparse kernel, so it is measured as it is: about as slow as dense);
5. every kept policy gets the same fine-tune (`finetune.epochs` on the training split, masks kept) per
   seed; test accuracy is reported as mean +- std over the seeds. `finetune_seeds` adds fine-tunes of each
   kept policy with more seeds once every model's cells are done (what the fine-tune's seed alone moves).

Figures from two machines do not compare: the results file records the machine (and timed libraries) and a
run on another refuses to add to it. A run without `--results` on a fresh machine continues the committed
`<name>_results*.json` next to this script that was measured on the same machine, if there is one.

Each finished cell is saved to a results JSON at once (default `$AUTOML_HOME/benchmarks/<name>.json`), so an
interrupted run continues where it stopped, and an agent's search stopped mid-way is resumed (the candidates
it logged to MLflow and its agent's state are kept); `--docs` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a resumed search reads its policies back

# this folder holds agents.py (the agents benchmark): keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import yaml  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator  # noqa: E402

from automl.search.config import (  # noqa: E402
    ConfigError,
    DatasetConfig,
    RayConfig,
    TrackingConfig,
    format_validation_error,
)

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Headline: searched policies vs uniform and random, measured on this CPU (issue 8)"
BENCH_ROLE = "benchmark"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SettingSpec(_Strict):
    """What one setting (fp32 / int8) changes in the search recipe.

    Why: the best space depends on the runtime's kernels. On onnxruntime (fp32 and int8) only channel
    pruning aligned to the kernels' multiples buys speed (no sparse kernel), and a proxy of a pruned model
    without fine-tuning scores near chance, so a setting may want a smaller space and a proxy with a few
    SGD steps; int8's depthwise kernels also want channel counts in multiples of 16 (the uniform
    baseline's `uniform_align`).
    """

    space: dict[str, Any] = Field(default_factory=dict, description="SpaceConfig options over the top-level space")
    proxy_finetune_steps: int = Field(0, ge=0, description="SGD steps before each proxy accuracy (search "
                                                           "evaluation.proxy_finetune_steps)")
    uniform_align: int | None = Field(None, ge=1, description="kept-channel multiple of the uniform baseline "
                                                              "(and the budget conversion's uniform model) in "
                                                              "this setting; None: the top-level uniform_align")

    @field_validator("space")
    @classmethod
    def _no_bits(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _reject_bits(v)


class ModelSpec(_Strict):
    name: str
    train_epochs: int = Field(3, ge=0)
    train_limit: int | None = Field(None, ge=100)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="agent and fine-tune seeds (the base model and splits use seed 0)")
    finetune_seeds: list[int] = Field(default_factory=list, description=(
        "extra fine-tune seeds: after every model's cells are done, each fine-tuned row's policy is fine-tuned "
        "again with each of these (one seed for all rows, then the next); its accuracy is reported as the "
        "mean +- std over its own fine-tune and these. What the fine-tune's seed alone moves, at the cost of "
        "fine-tunes only (a seed in `seeds` reruns the searches too)"))
    candidates: int | None = Field(None, ge=1, description="override of the top-level candidates for this model")
    finetune_epochs: float | None = Field(None, gt=0, description="override of finetune.epochs for this model "
                                                                  "(every method of the model gets the same)")
    finetune_lr: float | None = Field(None, gt=0, description="override of finetune.lr for this model")
    settings: list[Literal["fp32", "int8"]] | None = Field(None, min_length=1,
                                                         description="override of the top-level settings")
    per_setting: dict[Literal["fp32", "int8"], SettingSpec] = Field(
        default_factory=dict, description="this model's entry for a setting, replacing the benchmark's "
                                          "`per_setting` entry of that setting for this model")


class LatencySpec(_Strict):
    runtime: Literal["onnxruntime"] = "onnxruntime"
    batch: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    profile_minutes: float = Field(3.0, gt=0)


class FinetuneSpec(_Strict):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(0.01, gt=0)
    calib_batches: int = Field(4, ge=0)


def _reject_bits(space: dict[str, Any]) -> dict[str, Any]:
    """Space options may not set bit-widths: they follow the setting."""
    if "weight_bits" in space or "act_bits" in space:
        raise ValueError("bit-widths follow the setting (fp32: float, int8: 8-bit); drop weight_bits/act_bits")
    return space


class HeadlineConfig(_Strict):
    name: str = Field("headline", pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[ModelSpec] = Field(min_length=1)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    settings: list[Literal["fp32", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"], min_length=1)
    budget_ratio: float = Field(0.5, gt=0, le=1, description="budget = ratio x dense measured fp32 latency")
    agents: list[str] = Field(default_factory=lambda: ["rule_based", "amc", "agmc", "optuna", "random"])
    agent_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    candidates: int = Field(60, ge=1)
    proxy_val_images: int = Field(1000, ge=10)
    calib_batches: int = Field(4, ge=0)
    measure_top_k: int = Field(3, ge=1, description="proxy candidates measured per round for the pick")
    verify_processes: int = Field(3, ge=1, description="timing processes of the final re-measurement (median)")
    pick_processes: int = Field(1, ge=1, description="timing processes whose median must meet the budget for a "
                                "pick (and a uniform baseline step) to count as within it")
    fill_budget: bool = Field(False, description="scale each pick's channel sparsities (one factor for all "
                              "layers, bisected on measured latency) until it meets the budget with the least "
                              "pruning: every row at the budget's latency, as the uniform baseline")
    fill_steps: int = Field(6, ge=1, description="measured bisection steps of fill_budget")
    widen_free_channels: bool = Field(False, description="raise each pick's kept channels to the next whole "
                                      "block of the runtime's blocked layout wherever the device profile "
                                      "predicts no slowdown (`search_spaces.widening`), before and within "
                                      "fill_budget: channels the runtime computes anyway are kept")
    baselines: list[Literal["uniform_channel", "global_magnitude", "dense_finetuned"]] = Field(
        default_factory=lambda: ["uniform_channel", "global_magnitude", "dense_finetuned"],
        description="dense_finetuned: the dense model given the same fine-tune (what the extra epochs alone buy)")
    uniform_align: int = Field(8, ge=1)
    uniform_bisect_steps: int = Field(7, ge=1, description="measured bisection steps of the uniform baseline")
    space: dict[str, Any] = Field(default_factory=dict, description="search_spaces.SpaceConfig options")
    per_setting: dict[Literal["fp32", "int8"], SettingSpec] = Field(
        default_factory=dict, description="per-setting changes to the space and the proxy")
    latency: LatencySpec = Field(default_factory=LatencySpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    threads: int = Field(2, ge=1, description="torch threads of the driver (fine-tuning)")
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("agents")
    @classmethod
    def _known_agents(cls, v: list[str]) -> list[str]:
        from agents import AGENTS

        unknown = [a for a in v if a not in AGENTS]
        if unknown:
            raise ValueError(f"unknown agent(s) {unknown}; registered: {sorted(AGENTS)}")
        return v

    @field_validator("space")
    @classmethod
    def _no_bits(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _reject_bits(v)

    @classmethod
    def from_yaml(cls, path: str | Path) -> HeadlineConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (see experiments/benchmarks/headline.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: " + format_validation_error(exc)) from None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ results store
def signature(cfg: HeadlineConfig, spec: ModelSpec, search: bool = False) -> str:
    """What a cell's figures depend on; a cell computed under another signature is recomputed.

    Adding seeds, agents, settings or baselines keeps the finished cells; changing the recipe does not.
    `search`: what a search depends on (without the steps after it, `fill_budget`): a search stopped or
    finished before its cell was saved is resumed under it."""
    import hashlib

    relevant = cfg.model_dump(mode="json", include={"dataset", "budget_ratio", "candidates", "proxy_val_images",
                                                    "calib_batches", "measure_top_k", "uniform_align", "space",
                                                    "latency", "finetune", "agent_options"})
    relevant["model"] = spec.model_dump(mode="json", exclude={"seeds", "finetune_seeds", "settings", "per_setting"})
    if relevant["model"].get("finetune_lr") is None:  # a model without the override keeps its finished cells
        relevant["model"].pop("finetune_lr", None)
    if cfg.pick_processes != 1:  # the default keeps the cells computed before the option existed
        relevant["pick_processes"] = cfg.pick_processes
    if cfg.fill_budget and not search:  # likewise
        relevant["fill_budget"] = cfg.fill_steps
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def setting_signature(cfg: HeadlineConfig, spec: ModelSpec, setting: str, search: bool = False) -> str:
    """The signature of one setting's cells: the model's, extended by that setting's `per_setting` entry
    (a setting without one keeps the model's signature, so adding an override recomputes only its cells)."""
    import hashlib

    base = signature(cfg, spec, search)
    override = setting_entry(cfg, setting, spec)
    if override is None:
        return base
    extra = json.dumps(override.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return hashlib.sha256(f"{base}/{setting}/{extra}".encode()).hexdigest()[:16]


def agent_signature(cfg: HeadlineConfig, spec: ModelSpec, setting: str) -> str:
    """The signature of one setting's agent cells: the setting's, extended by `widen_free_channels` where
    it acts (a precision the runtime runs in a blocked layout, `Runtime.blocked_layout_precisions`), so
    turning it on recomputes only the picks it changes (not the baselines, not the int8 ones here)."""
    import hashlib

    from latency_models.profile import _blocked_layout_precisions

    base = setting_signature(cfg, spec, setting)
    if not (cfg.widen_free_channels and setting in _blocked_layout_precisions(cfg.latency.runtime)):
        return base
    return hashlib.sha256(f"{base}/widen_free_channels".encode()).hexdigest()[:16]


def current_cells(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore) -> dict[str, dict[str, Any]]:
    """This model's cells computed under the current recipe: "<model>/<setting>/..." cells against their
    setting's signature (agent cells: `agent_signature`), "<model>/budget/<setting>" against its search signature, "<model>/dense-latency"
    against the model's search signature."""
    want = {s: setting_signature(cfg, spec, s) for s in ("fp32", "int8")}
    want_agent = {s: agent_signature(cfg, spec, s) for s in ("fp32", "int8")}
    want_search = {None: signature(cfg, spec, search=True),
                   **{s: setting_signature(cfg, spec, s, search=True) for s in ("fp32", "int8")}}
    out = {}
    for key, cell in store.data["cells"].items():
        parts = key.split("/")
        if parts[0] != spec.name:
            continue
        if parts[1] in ("fp32", "int8"):
            current = (want_agent if parts[2] in cfg.agents else want)[parts[1]]
        else:  # the budget and the dense latency: what the searches start from
            current = want_search[parts[2] if parts[1] == "budget" else None]
        if cell.get("signature") == current:
            out[key] = cell
    return out


def this_host() -> dict[str, str]:
    """The machine and timed libraries the figures come from: its name and `device_fingerprint` (CPU model,
    cores, SIMD flags, python / onnxruntime / torch / onnx versions)."""
    from latency_models.estimate import device_fingerprint, device_info

    info = device_info()
    return {"device": info["device"], "fingerprint": device_fingerprint(info)}


class HostMismatch(RuntimeError):
    """A results file holds figures from another machine (or other library versions)."""


def claim_host(store: ResultStore, host: dict[str, str]) -> None:
    """Record the machine a results file's figures come from; refuse to add figures from another one.

    Why: the file makes the benchmark resumable, and a resumed run reuses every finished cell. Resumed on
    another machine it would put that machine's latencies and picks in one table with the first one's (the
    project's two hosts differ by up to 2.6x on the same model). A file written before hosts were recorded
    names its machine only in its verification record; that is checked instead."""
    recorded = store.data["meta"].get("host")
    if recorded is None:
        named = {v.get("device") for v in store.data["meta"].get("verified", {}).values()} - {None}
        if named and named != {host["device"]}:
            raise HostMismatch(
                f"{store.path} holds figures measured on {', '.join(sorted(named))}; this machine is "
                f"{host['device']}: latencies from two machines do not compare. Start a table for this machine "
                "with --results <a new file>")
        if store.data["cells"]:
            log(f"results: {store.path} does not name the machine its {len(store.data['cells'])} cells were "
                f"measured on; recording this one ({host['device']})")
        store.data["meta"]["host"] = host
        store.save()
        return
    if recorded.get("fingerprint") != host["fingerprint"]:
        raise HostMismatch(
            f"{store.path} holds figures measured on {recorded.get('device')} ({recorded.get('fingerprint')}); "
            f"this machine is {host['device']} ({host['fingerprint']}): latencies from two machines, or two "
            "versions of the timed libraries, do not compare. Start a table for this machine with "
            "--results <a new file> (or delete that file to recompute it here)")


def committed_results(cfg_name: str, host: dict[str, str], folder: Path | None = None) -> Path | None:
    """The committed results file (`<folder>/<name>_results*.json`) whose figures come from this machine.

    Why: the table takes longer than one working session, and the project's sessions land on different
    hosts (each with a fresh cache). Each host's partial run is committed next to this script; a run on a
    fresh machine continues the one that was measured on the same machine and libraries instead of
    starting over (or, worse, adding to another host's table: `claim_host` refuses that)."""
    folder = folder or Path(__file__).resolve().parent
    for path in sorted(folder.glob(f"{cfg_name}_results*.json")):
        try:
            recorded = json.loads(path.read_text()).get("meta", {}).get("host") or {}
        except (OSError, ValueError):
            continue
        if recorded.get("fingerprint") == host["fingerprint"]:
            return path
    return None


class ResultStore:
    """Finished cells by key, written to disk after each one (an interrupted benchmark resumes)."""

    def __init__(self, path: Path, config_json: str):
        self.path = path
        self.data: dict[str, Any] = {"config": json.loads(config_json), "cells": {}, "meta": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            self.data["cells"] = old.get("cells", {})
            self.data["meta"] = old.get("meta", {})

    def get(self, key: str, sig: str | None = None) -> dict[str, Any] | None:
        cell = self.data["cells"].get(key)
        if cell is not None and sig is not None and cell.get("signature") != sig:
            log(f"results: {key} was computed under another configuration; recomputing it")
            return None
        return cell

    def put(self, key: str, value: dict[str, Any], sig: str | None = None) -> None:
        self.data["cells"][key] = {**value, "signature": sig}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# ------------------------------------------------------------------------------ pieces
def model_settings(cfg: HeadlineConfig, spec: ModelSpec) -> list[str]:
    """The settings (fp32 / int8) this model runs: its own override, else the benchmark's."""
    return spec.settings or cfg.settings


def space_options(cfg: HeadlineConfig, setting: str, spec: ModelSpec | None = None) -> dict[str, Any]:
    bits = [None] if setting == "fp32" else [8]
    return {**cfg.space, **setting_spec(cfg, setting, spec).space, "weight_bits": bits, "act_bits": bits}


def setting_entry(cfg: HeadlineConfig, setting: str, spec: ModelSpec | None = None) -> SettingSpec | None:
    """The setting's `per_setting` entry for `spec`: the model's own entry, else the benchmark's, else None."""
    if spec is not None and setting in spec.per_setting:
        return spec.per_setting[setting]
    return cfg.per_setting.get(setting)


def setting_spec(cfg: HeadlineConfig, setting: str, spec: ModelSpec | None = None) -> SettingSpec:
    """The setting's `per_setting` entry for `spec`, or the empty one (no changes) when there is none."""
    return setting_entry(cfg, setting, spec) or SettingSpec()


def uniform_align_for(cfg: HeadlineConfig, setting: str, spec: ModelSpec | None = None) -> int:
    """The uniform baseline's kept-channel multiple in `setting`: its `per_setting` override, else the
    benchmark's (int8 on onnxruntime here wants 16: its depthwise convs run ~1.7x slower per MAC at 8 mod 16)."""
    override = setting_spec(cfg, setting, spec).uniform_align
    return override if override is not None else cfg.uniform_align


def with_bits(policy, space, bits: int | None):
    """The policy with every prunable layer at `bits` weights and activations (None: float)."""
    from automl.policy import CompressionPolicy

    layers = {name: replace(policy.decision(name), weight_bits=bits, act_bits=bits) for name in space.layer_names()}
    return CompressionPolicy(policy.model, layers, policy.default, dict(policy.metadata))


class Measurer:
    """Measured latency of compressed models on the benchmark runtime, cached by (policy, precision).

    Why a reference: on this shared machine one timing process runs 10-20% faster or slower than the next
    (docs/benchmarks.md, latency section), so a candidate timed in one process and a budget derived from
    the dense model timed in another disagree by that much. Every `measure` call therefore times the dense
    fp32 model in the same process, interleaved with the candidates, and reports each candidate as
    `ratio to that dense x reference_ms` (the dense-latency cell's figure): budgets and picks compare
    ratios measured side by side. `measure_dense` sets the reference (median over separate processes).

    Why the caches: a policy's exported artifact (the dynamo export: 3-14 s a model on 2 cores) is kept on
    disk for the run, so a second timing process or the final verification times the same bytes without
    exporting again; each timing process's figure is kept, so asking for more processes adds only those.
    """

    def __init__(self, cfg: HeadlineConfig, model_name: str, base, calib, shape):
        import tempfile

        self.cfg, self.model_name, self.base, self.calib, self.shape = cfg, model_name, base, calib, shape
        self.cache: dict[tuple[str, str], list[float]] = {}
        self.reference_ms: float | None = None
        self._artifact_dir = tempfile.TemporaryDirectory(prefix="headline-artifacts-")
        self._artifacts: dict[tuple[str, str], Path] = {}

    def deploy_model(self, policy):
        from automl.search.runner import deployable
        from search_spaces import apply_policy

        return deployable(apply_policy(self.base, policy, self.calib[:1], calib=self.calib).model).eval()

    def time_models(self, items: list[tuple[Any, str]]) -> list[Any]:
        """Time (model, precision) pairs interleaved in one timing process (`latency_models.compare`)."""
        from latency_models import compare

        lat = self.cfg.latency
        return compare([m for m, _ in items], self.shape, runtime=lat.runtime, batch=lat.batch,
                       threads=lat.threads, precision=[prec for _, prec in items])

    def export(self, policy, precision: str) -> bytes:
        """The deployed model of `policy` exported for the benchmark runtime at `precision` (an artifact
        `time_models` times as it is), exported once per run and kept on disk."""
        key = (policy.to_json(indent=None), precision)
        path = self._artifacts.get(key)
        if path is None:
            from latency_models import get_runtime
            from latency_models.measure import example_input

            data = get_runtime(self.cfg.latency.runtime).export(
                self.deploy_model(policy), example_input(self.shape, self.cfg.latency.batch), precision)
            path = Path(self._artifact_dir.name) / f"{len(self._artifacts)}.bin"
            path.write_bytes(data)
            self._artifacts[key] = path
        return path.read_bytes()

    def dense_model(self) -> bytes:
        """The dense model's fp32 artifact: every measurement times it as the reference."""
        from automl.policy import CompressionPolicy

        return self.export(CompressionPolicy(self.model_name), "fp32")

    def measure_dense(self, processes: int = 3) -> float:
        """The dense fp32 model's latency: the median over `processes` separate timing processes."""
        runs = [float(self.time_models([(self.dense_model(), "fp32")])[0].ms) for _ in range(processes)]
        log(f"  dense fp32 in {processes} timing processes: " + ", ".join(f"{m:.3f}" for m in runs) + " ms")
        return statistics.median(runs)

    def measure(self, policies: list, precision: str, processes: int = 1) -> list[float]:
        """Each policy's latency: the median over at least `processes` timing processes (each one's figure
        relative to the dense model timed in it), timing only the processes a policy does not have yet."""
        if self.reference_ms is None:
            raise RuntimeError("Measurer.reference_ms is not set (measure the dense model first)")
        keys = [(p.to_json(indent=None), precision) for p in policies]
        while True:
            short: dict[tuple[str, str], int] = {}  # one index per policy still short of `processes`
            for i, k in enumerate(keys):
                if len(self.cache.get(k, ())) < processes:
                    short.setdefault(k, i)
            if not short:
                break
            todo = list(short.values())
            ests = self.time_models([(self.dense_model(), "fp32"),
                                     *((self.export(policies[i], precision), precision) for i in todo)])
            scale = self.reference_ms / float(ests[0].ms)
            for i, est in zip(todo, ests[1:], strict=True):
                self.cache.setdefault(keys[i], []).append(float(est.ms) * scale)
        return [statistics.median(self.cache[k]) for k in keys]


BUDGET_SAMPLES = 6  # policies drawn near the budget for its conversion (`predicted_budget`)
PICK_ROUNDS = 3  # proxy-ordered rounds of the pick (`pick_by_measurement`)
RECALIBRATED_ROUNDS = 3  # its rounds after those, on rescaled predictions

PICK_RULE = 2
"""Version of `pick_by_measurement`'s rule recorded in each agent cell. 2 added the recalibrated rounds; a
pick within the budget is the same under both (their first rounds are the same), so only cells picked over
it under rule 1 are recomputed."""


def needs_repick(cell: dict[str, Any]) -> bool:
    """An agent cell picked over the budget by an older pick rule: the current one might find a pick
    within it among the same search's candidates, so the cell is recomputed."""
    return not cell["within_budget"] and cell.get("pick_rule", 1) < PICK_RULE


def pick_by_measurement(candidates: list[dict], measurer: Measurer, precision: str, target_ms: float,
                        k: int, rounds: int = PICK_ROUNDS, processes: int = 1,
                        recalibrated_rounds: int = RECALIBRATED_ROUNDS) -> tuple[dict, float, bool, int]:
    """The most accurate proxy candidate whose measured latency meets the budget.

    Measures the best `k` by proxy accuracy, then the next `k`, up to `rounds` times. If none of those meets
    the budget, up to `recalibrated_rounds` more rounds measure the `k` most accurate of the other
    candidates whose predicted latency, scaled by the median measured / predicted ratio of the candidates
    measured so far, meets it. Why: the search's budget is on the profile's scale, converted at a few
    reference models (`predicted_budget`), and the candidates crowd at it; where the profile under-predicts the searched shapes by a few
    percent, every accurate candidate sits a few percent over the measured budget (ResNet-20 fp32 on the Xeon
    host, MobileNetV2 fp32 on the AMD host: 9 of 9 over), while slightly smaller ones the search also
    evaluated would hold it. If nothing does, the fastest measured one is returned flagged (the benchmark
    says so instead of hiding it).
    With `processes` > 1 a would-be pick counts as within the budget only if its median over that many
    timing processes is; else the next most accurate one is tried. Why: the most accurate candidate a
    single process timed under the budget is biased towards timings that came out low (ResNet-20 fp32,
    Xeon host: four of five picks re-measured 1-2% over in the verification).
    Returns (candidate, measured ms, within budget, candidates measured).
    """
    ok = sorted((c for c in candidates if c["status"] == "ok"), key=lambda c: -c["metrics"].get("accuracy", 0.0))
    if not ok:
        raise RuntimeError("the search produced no successful candidate")
    measured: list[tuple[dict, float]] = []

    def measure_and_settle(chunk: list[dict]) -> tuple[dict, float] | None:
        ms = measurer.measure([c["policy"] for c in chunk], precision)
        measured.extend(zip(chunk, ms, strict=True))
        while True:
            within = [(i, c) for i, (c, m) in enumerate(measured) if m <= target_ms]
            if not within:
                return None
            i, c = max(within, key=lambda t: t[1]["metrics"].get("accuracy", 0.0))
            (m,) = measurer.measure([c["policy"]], precision, processes)
            measured[i] = (c, m)
            if m <= target_ms:
                return c, m
            log(f"  pick: candidate #{c['index']} over the budget in {processes} timing processes "
                f"({m:.3f} ms median); trying the next")

    for r in range(rounds):
        chunk = ok[r * k:(r + 1) * k]
        if not chunk:
            break
        if (hit := measure_and_settle(chunk)) is not None:
            return (*hit, True, len(measured))
    for _ in range(recalibrated_rounds):
        ratios = [m / c["metrics"]["latency_ms"] for c, m in measured if c["metrics"].get("latency_ms")]
        if not ratios:
            break
        scale = statistics.median(ratios)
        seen = {id(c) for c, _ in measured}
        fits = [c for c in ok if id(c) not in seen and c["metrics"].get("latency_ms")
                and c["metrics"]["latency_ms"] * scale <= target_ms]
        if not fits:
            log(f"  pick: no other candidate fits the budget at its predicted latency x {scale:.3f} "
                "(measured / predicted so far)")
            break
        log(f"  pick: none of the {len(measured)} measured holds the budget; {len(fits)} others fit it at "
            f"their predicted latency x {scale:.3f} (measured / predicted so far): measuring the "
            f"{min(k, len(fits))} most accurate")
        if (hit := measure_and_settle(fits[:k])) is not None:
            return (*hit, True, len(measured))
    c, m = min(measured, key=lambda t: t[1])
    return c, m, False, len(measured)


def scale_channel_sparsity(policy, space, t: float):
    """The policy with every channel-pruned layer's sparsity times `t`, capped at the largest sparsity the
    space offers that layer (t < 1 prunes less, t > 1 more; the other layers as they are)."""
    from automl.policy import CompressionPolicy

    layers = dict(policy.layers)
    for name in space.layer_names():
        d = policy.decision(name)
        if d.scheme == "channel":
            layers[name] = replace(d, sparsity=min(d.sparsity * t, max(space.choices(name).sparsities)))
    return CompressionPolicy(policy.model, layers, policy.default, dict(policy.metadata))


def fill_budget(policy, space, measurer: Measurer, precision: str, target_ms: float, steps: int,
                processes: int = 1, widen=None) -> tuple[Any, float, bool, float]:
    """The pick moved to the budget's measured latency: its channel sparsities scaled by one factor t,
    bisected on measured latency for the least pruning that meets the budget (t <= 1 for a pick within it,
    t >= 1 for one over it, up to the space's largest sparsities). Why: the comparison the benchmark makes is
    at the same measured latency, and the uniform baseline is bisected to the budget; a pick that the
    profile's error left a few percent under the budget (or over it) would be compared at another speed.
    The agent's allocation, which layers it prunes more and which less, is kept. A step that one process
    times within the budget must hold in the median of `processes` (the pick's rule). `widen` (policy ->
    policy, e.g. `free_channel_widener`'s) is applied to the pick and to every scaled policy before it is
    measured (the scaling starts from the pick's own sparsities, so a widened group can still be pruned).
    Returns (policy, measured ms, within budget, t)."""
    widen = widen or (lambda p: p)
    start = widen(policy)
    (ms,) = measurer.measure([start], precision, processes)
    channel = [policy.decision(n).sparsity for n in space.layer_names() if policy.decision(n).scheme == "channel"]
    if not channel or max(channel) == 0.0:
        return start, ms, ms <= target_ms, 1.0
    if ms <= target_ms:  # t = 1 (the pick) is fast enough; t = 0 prunes nothing
        fast, slow = 1.0, 0.0
    else:  # the pick is too slow; the fastest t takes every layer to the space's largest sparsities
        cap = max(max(space.choices(n).sparsities) for n in space.layer_names())
        fast, slow = max(1.0, cap / max(channel)), 1.0

    def cost(scaled, t: float) -> float:
        return confirmed_ms(measurer, scaled, precision, target_ms, processes, f"fill: sparsities x {t:.3f}")

    best, _ = bisect_within(lambda t: widen(scale_channel_sparsity(policy, space, t)), cost, target_ms, fast, slow,
                            steps)
    if best is not None:
        return best[0], best[1], True, best[2]
    return start, ms, ms <= target_ms, 1.0


def free_channel_widener(cfg: HeadlineConfig, space, setting: str):
    """policy -> the policy with the kept channels the runtime computes anyway (`search_spaces.widening`):
    each channel group raised to the next whole block of the setting's device profile's blocked layout
    where the profile predicts no slowdown. None where the profile's runtime runs no blocked layout (the
    int8 path here): there is no block to fill."""
    from latency_models import get_or_build_profile, predict_policy
    from search_spaces.widening import widen_free_channels

    lat = cfg.latency
    profile = get_or_build_profile(lat.runtime, minutes=lat.profile_minutes, batch=lat.batch, threads=lat.threads,
                                   precision=setting, progress=log)
    if not profile.layout_block:
        return None
    block = int(profile.layout_block)
    return lambda policy: widen_free_channels(policy, space, lambda p: predict_policy(profile, space, p).ms,
                                              block)[0]


def widened_groups(space, before, after) -> int:
    """How many channel groups keep more channels in `after` than in `before`."""
    from search_spaces import resolve_kept

    a = resolve_kept(space.groups, lambda n: space.effective_decision(before, n))
    b = resolve_kept(space.groups, lambda n: space.effective_decision(after, n))
    return sum(b[g] > a[g] for g in a)


def confirmed_ms(measurer: Measurer, policy, precision: str, target_ms: float, processes: int, label: str) -> float:
    """One bisection step's measured latency: one timing process, and a time within the budget confirmed
    in the median of `processes` (the picks' rule, `pick_by_measurement`)."""
    (ms,) = measurer.measure([policy], precision)
    if ms <= target_ms and processes > 1:
        (ms,) = measurer.measure([policy], precision, processes)
    log(f"  {label}: measured {ms:.3f} ms (budget {target_ms:.3f})")
    return ms


def bisect_within(make_policy, cost, target_ms: float, fast: float, slow: float, iters: int):
    """Bisect a knob x between `fast` (the end assumed to meet the target) and `slow` for the x nearest `slow`
    whose policy's `cost` meets `target_ms`. `make_policy(x)` builds the policy, `cost(policy, x)` prices it.
    Returns ((policy, cost, x) of the last x that met the target, or None; the fast bound reached)."""
    best = None
    for _ in range(iters):
        mid = 0.5 * (fast + slow)
        policy = make_policy(mid)
        value = cost(policy, mid)
        if value <= target_ms:
            best, fast = (policy, value, mid), mid
        else:
            slow = mid
    return best, fast


def bisect_uniform_channel(make_policy, cost, target_ms: float, iters: int):
    """Bisect the MAC ratio of uniform channel pruning (in [0.02, 1]) for the largest ratio whose policy's
    `cost` meets `target_ms`. `make_policy(ratio)` builds the policy, `cost(policy, ratio)` prices it.
    Returns ((policy, cost) of the last ratio that met the target, or None; the lower bound reached)."""
    best, lo = bisect_within(make_policy, cost, target_ms, 0.02, 1.0, iters)
    return (best[:2] if best else None), lo


def uniform_channel_maker(base, model_name: str, shape, space_cfg, space, align: int, bits: int | None):
    """ratio -> uniform channel pruning of `base` at that MAC ratio, kept channels rounded to `align`."""
    from search_spaces.baselines import uniform

    return lambda ratio: with_bits(uniform(base, "channel", ratio, shape, model_name=model_name, config=space_cfg,
                                           align=align), space, bits)


def uniform_channel_at_latency(base, model_name: str, shape, space_cfg, measurer: Measurer, precision: str,
                               target_ms: float, align: int, bits: int | None, iters: int = 7,
                               processes: int = 1):
    """Uniform channel pruning bisected on the MAC ratio until its *measured* latency meets the budget
    (with `processes` > 1, a step that one process times within it must hold in the median of that many:
    the same rule as the searches' picks, `pick_by_measurement`)."""
    from search_spaces import SearchSpace

    make = uniform_channel_maker(base, model_name, shape, space_cfg,
                                 SearchSpace.from_model(base, model_name, shape, space_cfg), align, bits)

    def measured(policy, ratio: float) -> float:
        return confirmed_ms(measurer, policy, precision, target_ms, processes,
                            f"uniform channel at MAC target {ratio:.3f}")

    best, lo = bisect_uniform_channel(make, measured, target_ms, iters)
    if best is None:
        policy = make(lo)
        (ms,) = measurer.measure([policy], precision, processes)
        return policy, ms, ms <= target_ms
    return best[0], best[1], True


def predicted_budget(cfg: HeadlineConfig, space, measurer: Measurer, setting: str, bits: int | None,
                     target_ms: float, base=None, model_name: str | None = None, shape=None,
                     space_cfg=None, spec: ModelSpec | None = None,
                     samples: int = BUDGET_SAMPLES) -> float:
    """The measured budget on the setting's predicted-latency scale, for the agents' in-loop costs.

    A device profile can be off by a roughly constant factor on a whole model (see the latency section of
    docs/benchmarks.md), so the measured budget is converted with a model measured and predicted:
    budget_pred = target_ms * predicted(m) / measured(m). First m = the dense model of this setting; then,
    when the base model is given, m = uniform channel pruning (aligned like the baseline) that the first
    conversion predicts at the budget: the profile's error on a pruned model near the budget is not its
    error on the dense model (ResNet-20 fp32 on the Xeon host: dense over-predicted by 10%, uniform channel
    pruning at half its latency by 5%, so with a dense-only conversion the first search's pick measured
    3.5% over the budget). Then `samples` policies drawn from the space with predictions near that budget
    are measured too, and the budget is converted with the median ratio of those and the uniform model:
    the profile's error on uniform channel pruning is not its error on the mixed policies the searches
    propose either (ResNet-20 fp32 on a later Xeon host: uniform over-predicted by 12.5%, the searched picks
    under-predicted by 0-3%, so with the uniform conversion every search's 9 most accurate candidates
    measured over the budget). The pick afterwards is checked against the measured budget itself.
    """
    from latency_models import get_or_build_profile, predict_policy

    lat = cfg.latency
    profile = get_or_build_profile(lat.runtime, minutes=lat.profile_minutes, batch=lat.batch, threads=lat.threads,
                                   precision=setting, progress=log)
    dense = with_bits(space.dense_policy(), space, bits)
    predicted = predict_policy(profile, space, dense).ms
    (measured,) = measurer.measure([dense], setting)
    budget = target_ms * predicted / measured
    log(f"  {setting}: dense predicted {predicted:.3f} ms / measured {measured:.3f} ms -> in-loop budget "
        f"{budget:.3f} ms predicted (= {target_ms:.3f} ms measured)")
    if base is None or predicted <= budget:
        return budget
    make = uniform_channel_maker(base, model_name, shape, space_cfg, space, uniform_align_for(cfg, setting, spec),
                                bits)
    near, _ = bisect_uniform_channel(make, lambda policy, _ratio: predict_policy(profile, space, policy).ms,
                                     budget, iters=12)  # predictions only: milliseconds each
    if near is None:
        return budget
    policy, pred_near = near
    (meas_near,) = measurer.measure([policy], setting)
    budget = target_ms * pred_near / meas_near
    log(f"  {setting}: uniform channel near the budget predicted {pred_near:.3f} ms / measured {meas_near:.3f} ms "
        f"-> in-loop budget {budget:.3f} ms predicted")
    if samples <= 0:
        return budget
    drawn = sampled_near_budget(space, lambda p: predict_policy(profile, space, p).ms, budget, samples, bits)
    if not drawn:
        return budget
    measured_drawn = measurer.measure([p for p, _ in drawn], setting)
    ratios = [pred_near / meas_near] + [pred / meas for (_, pred), meas in zip(drawn, measured_drawn, strict=True)]
    budget = target_ms * statistics.median(ratios)
    log(f"  {setting}: {len(drawn)} sampled policies near it predicted / measured "
        f"{', '.join(f'{r:.3f}' for r in ratios[1:])} (uniform {ratios[0]:.3f}) -> in-loop budget {budget:.3f} ms "
        "predicted (the median)")
    return budget


def sampled_near_budget(space, predict, budget_pred: float, n: int, bits: int | None, pool: int = 256,
                        seed: int = 0) -> list[tuple[Any, float]]:
    """`n` policies drawn uniformly from `space` whose predicted latency is closest to `budget_pred`, with
    their predictions: the kind of policies the searches propose there, for the budget's conversion."""
    import random

    rng = random.Random(seed)
    dims = len(space.dimensions())
    drawn = []
    for _ in range(pool):
        policy = with_bits(space.decode_vector([rng.random() for _ in range(dims)]), space, bits)
        drawn.append((policy, float(predict(policy))))
    drawn.sort(key=lambda t: abs(t[1] - budget_pred))
    return drawn[:n]


def finetune_cell(base, policy, splits, cfg: HeadlineConfig, spec: ModelSpec, seed: int) -> dict[str, float]:
    from automl.evaluation import finetune_and_test

    epochs, lr = finetune_recipe(cfg, spec)
    return finetune_and_test(base, policy, splits, epochs=epochs, calib_batches=cfg.finetune.calib_batches, lr=lr,
                             seed=seed, progress=log)


def finetune_recipe(cfg: HeadlineConfig, spec: ModelSpec) -> tuple[float, float]:
    """(epochs, lr) of the fine-tune every row of `spec` gets: the model's overrides, else `finetune`."""
    epochs = spec.finetune_epochs if spec.finetune_epochs is not None else cfg.finetune.epochs
    lr = spec.finetune_lr if spec.finetune_lr is not None else cfg.finetune.lr
    return epochs, lr


def policy_brief(policy, space) -> str:
    """A one-line description of a policy: scheme counts, mean kept-channel share, aligns, bits."""
    counts: dict[str, int] = {}
    aligns, bits = set(), set()
    for name in space.layer_names():
        d = space.effective_decision(policy, name)
        key = d.scheme if d.scheme == "dense" or d.sparsity > 0 or d.scheme in ("nm", "pattern") else "dense"
        counts[key] = counts.get(key, 0) + 1
        if d.scheme == "channel" and d.sparsity > 0:
            aligns.add(d.align)
        bits.add("float" if d.weight_bits is None else str(d.weight_bits))
    layers = space.compressed_layers(policy)
    kept = [cl.out_channels / max(1, lc.layer.out_channels) for cl, lc in zip(layers, space.layers, strict=True)]
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    text = ", ".join(parts) + f"; mean kept channels {100 * sum(kept) / len(kept):.0f}%"
    if aligns:
        text += f"; align {'/'.join(map(str, sorted(aligns)))}"
    return text + f"; bits {'/'.join(sorted(bits))}"


def layer_table(policy, space) -> list[str]:
    """Per-layer rows (layer, kind, channels dense -> kept, scheme, sparsity, align) for the analysis."""
    rows = []
    for cl, lc in zip(space.compressed_layers(policy), space.layers, strict=True):
        d = space.effective_decision(policy, lc.layer.name)
        rows.append(f"| {lc.layer.name} | {lc.layer.kind} | {lc.layer.out_channels} -> {cl.out_channels} | "
                    f"{d.scheme} | {d.sparsity:.2f} | {d.align if d.scheme == 'channel' else '-'} |")
    return rows


# ------------------------------------------------------------------------------ MLflow
class BenchmarkTracker:
    """One MLflow parent run for the whole benchmark; searches nest under it, results are its children."""

    def __init__(self, cfg: HeadlineConfig, tracking_uri: str | None, store: ResultStore):
        from mlflow import MlflowClient

        from automl.tracking import default_tracking_uri, ensure_experiment

        self.uri = tracking_uri or cfg.tracking.uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.tracking.experiment)
        run_id = store.data["meta"].get("run_id")
        if run_id and store.data["meta"].get("tracking_uri") == self.uri:
            try:
                self.client.get_run(run_id)
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
                return
            except Exception:  # the store was reset: start a new parent
                pass
        from automl.search.tracking_log import code_version

        run = self.client.create_run(self.experiment_id, run_name=cfg.name,
                                     tags={"automl.role": BENCH_ROLE, "automl.benchmark": cfg.name,
                                           "automl.code_version": code_version()})
        self.run_id = run.info.run_id
        self.client.log_text(self.run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                             "headline.yaml")
        store.data["meta"].update(run_id=self.run_id, tracking_uri=self.uri)
        store.save()

    def log_result(self, key: str, cell: dict[str, Any], policy) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=key.replace("/", "-"),
                                     tags={"mlflow.parentRunId": self.run_id, "automl.role": "benchmark_result",
                                           "automl.benchmark_key": key, "automl.latency_source": "measured",
                                           "automl.model": cell["model"]})
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, 0) for k, v in cell.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        params = [Param(k, str(cell[k])[:500]) for k in ("model", "setting", "method", "seed", "brief") if k in cell]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params,
                              tags=[RunTag("automl.within_budget", str(cell.get("within_budget")))])
        self.client.log_text(run.info.run_id, policy.to_json(), "policy.json")
        self.client.set_terminated(run.info.run_id)

    def log_extra_finetune(self, key: str, seed: int, result: dict[str, float]) -> None:
        """One more fine-tune of a row's policy (`finetune_seeds`): a child of the benchmark like the row."""
        run = self.client.create_run(self.experiment_id, run_name=f"{key.replace('/', '-')}-ft{seed}",
                                     tags={"mlflow.parentRunId": self.run_id, "automl.role": "benchmark_result",
                                           "automl.benchmark_key": key, "automl.finetune_seed": str(seed)})
        for name in ("test_acc", "finetune_seconds"):
            self.client.log_metric(run.info.run_id, name, float(result[name]))
        self.client.set_terminated(run.info.run_id)

    def finish(self, table: str, status: str = "FINISHED") -> None:
        self.client.log_text(self.run_id, table, "headline.md")
        self.client.set_terminated(self.run_id, status=status)


def interrupted_search(bench: BenchmarkTracker, name: str, sig: str,
                       budget_pred_ms: float) -> tuple[str, float] | None:
    """(search id, seconds it ran) of this benchmark's search `name` under cell signature `sig` and in-loop
    budget `budget_pred_ms` that was stopped before its cell was saved (the benchmark killed mid-search, or
    between the search and the fine-tune, or its cell recomputed), else None. Why: a search is most of a
    cell's time (ResNet-20 ~13 min, MobileNetV2 ~25 min on the AMD host), and the benchmark is run across sessions: resuming it keeps the candidates and the
    agent's state it had. The seconds are from the search's start to its last logged proxy candidate (not
    to a pick's `finetuned` child, logged after the fine-tune)."""
    runs = bench.client.search_runs(
        [bench.experiment_id],
        filter_string=f"tags.`automl.role` = 'search' and tags.`automl.search_name` = '{name}' "
                      f"and tags.`automl.benchmark_signature` = '{sig}' "
                      f"and tags.`automl.benchmark_budget` = '{budget_tag(budget_pred_ms)}'",
        order_by=["attributes.start_time DESC"], max_results=10)
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") != bench.run_id:
            continue
        children = bench.client.search_runs(
            [bench.experiment_id], filter_string=f"tags.`automl.search_id` = '{run.info.run_id}' and "
                                                 "tags.`automl.role` = 'candidate'", max_results=50_000)
        ends = [c.info.end_time for c in children
                if c.info.end_time and c.data.tags.get("automl.stage") != "finetuned"]
        return run.info.run_id, (max(ends) - run.info.start_time) / 1000 if ends else 0.0
    return None


def budget_tag(budget_pred_ms: float) -> str:
    """The in-loop budget as a search's tag: a search run under another budget is not resumed."""
    return f"{budget_pred_ms:.6f}"


def log_finetuned_into_search(uri: str, experiment: str, search_id: str, cand: dict, cell: dict) -> None:
    """The fine-tuned, measured pick becomes a `finetuned` child of its search, so `automl best` finds it."""
    from automl.search.tracking_log import SearchTracker

    tracker = SearchTracker(uri, experiment)
    tracker.parent_id = search_id
    metrics = dict(cand["metrics"])
    metrics.update(accuracy=cell["test_acc"], finetuned_accuracy=cell["test_acc"], latency_ms=cell["latency_ms"],
                   latency_ms_measured=cell["latency_ms"])
    run_id = tracker.log_candidate(index=cand["index"], policy=cand["policy"], metrics=metrics, stage="finetuned",
                                   status="ok", tags={"automl.latency_source": "measured",
                                                      "automl.source_candidate": str(cand["index"])})
    tracker.log_parent_metrics({"best_accuracy": cell["test_acc"], "best_latency_ms": cell["latency_ms"]})
    tracker.update_parent_tags({"automl.best_run_id": run_id, "automl.best_stage": "finetuned"})
    tracker.log_parent_text(cand["policy"].to_json(), "best_policy.json")


# ------------------------------------------------------------------------------ the benchmark
def run_model(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore, bench: BenchmarkTracker) -> None:
    import torch

    from automl.data import load_dataset
    from automl.policy import CompressionPolicy
    from automl.search import SearchConfig, run_search
    from automl.training import train_or_load
    from search_spaces import SearchSpace, SpaceConfig, cost_report
    from search_spaces.baselines import global_magnitude

    torch.set_num_threads(cfg.threads)
    n_candidates = spec.candidates or cfg.candidates
    ds = cfg.dataset
    ckpt = train_or_load(spec.name, ds.name, epochs=spec.train_epochs, seed=0, limit=spec.train_limit,
                         data_dir=ds.data_dir, progress=log, threads=cfg.threads)
    torch.set_num_threads(cfg.threads)
    base = ckpt.model.eval()
    splits = load_dataset(ds.name, ds.data_dir, seed=0, limit=ds.limit, test_limit=ds.test_limit)
    shape = splits.input_shape
    calib = splits.x_train[:128 * max(1, cfg.finetune.calib_batches)]
    measurer = Measurer(cfg, spec.name, base, calib, shape)

    dense_key = f"{spec.name}/dense-latency"  # what the searches start from: under their signature
    model_search_sig = signature(cfg, spec, search=True)
    if store.get(dense_key, model_search_sig) is None:
        dense_ms = measurer.measure_dense()
        store.put(dense_key, {"latency_ms": dense_ms, "test_acc": float(ckpt.meta["test_acc"]),
                              "checkpoint": str(ckpt.path)}, model_search_sig)
    elif store.get(dense_key)["test_acc"] != float(ckpt.meta["test_acc"]):
        # a fresh machine retrains the base model; later cells (and extra fine-tune seeds) start from it
        log(f"warning: {spec.name}: the base model here has test acc {100 * float(ckpt.meta['test_acc']):.2f}%, "
            f"the results file's {100 * store.get(dense_key)['test_acc']:.2f}%: retraining did not reproduce "
            "it, so cells computed from now on start from another base model than the finished ones")
    dense_ms = store.get(dense_key)["latency_ms"]
    measurer.reference_ms = dense_ms
    dense_acc = store.get(dense_key)["test_acc"]
    target_ms = cfg.budget_ratio * dense_ms
    log(f"{spec.name}: dense {dense_ms:.3f} ms measured (onnxruntime fp32, batch {cfg.latency.batch}, "
        f"{cfg.latency.threads} thread), test acc {100 * dense_acc:.2f}%; budget {target_ms:.3f} ms")

    for setting in model_settings(cfg, spec):
        sig = setting_signature(cfg, spec, setting)
        bits = None if setting == "fp32" else 8
        space_cfg = SpaceConfig.from_dict(space_options(cfg, setting, spec))
        space = SearchSpace.from_model(base, spec.name, shape, space_cfg)
        # the in-loop budget is fixed once per model and setting (re-deriving it in a resumed run would
        # give later agents a different yardstick: the dense measurement it comes from is noisy)
        budget_key = f"{spec.name}/budget/{setting}"  # the searches': under their signature
        search_sig = setting_signature(cfg, spec, setting, search=True)
        agent_sig = agent_signature(cfg, spec, setting)
        # the setting's widener loads (and refits) its device profile: once per setting, and only when a
        # pick needs it
        widener = (functools.cache(functools.partial(free_channel_widener, cfg, space, setting))
                   if cfg.widen_free_channels else lambda: None)
        budget_cell = store.get(budget_key, search_sig)
        if budget_cell is None or "conversion" not in budget_cell:  # none, or from the older rule
            value = predicted_budget(cfg, space, measurer, setting, bits, target_ms, base=base,
                                     model_name=spec.name, shape=shape, space_cfg=space_cfg, spec=spec)
            budget_cell = {"budget_predicted_ms": value, "budget_ms": target_ms,
                           "conversion": "median of uniform and sampled policies"}
            store.put(budget_key, budget_cell, search_sig)
        budget_pred_ms = budget_cell["budget_predicted_ms"]

        def cell_of(method: str, policy, ms: float, within: bool, seed: int, extra: dict[str, Any],
                    space=space, setting=setting) -> dict[str, Any]:
            costs = cost_report(space, policy)
            return {"model": spec.name, "setting": setting, "method": method, "seed": seed,
                    "latency_ms": ms, "speedup": dense_ms / ms, "within_budget": within,
                    "budget_ms": target_ms, "mac_ratio": float(costs.mac_ratio), "size_bytes": float(costs.size_bytes),
                    "params": float(costs.params), "brief": policy_brief(policy, space),
                    "policy": policy.to_dict(), **extra}

        # dense reference of this setting (int8: post-training quantized, no fine-tune)
        key = f"{spec.name}/{setting}/dense/s0"
        if store.get(key, sig) is None:
            policy = with_bits(space.dense_policy(), space, bits)
            (ms,) = measurer.measure([policy], setting)
            if setting == "fp32":
                acc = dense_acc
            else:
                from automl.evaluation import ProxyEvaluator
                from automl.training import evaluate

                ev = ProxyEvaluator(base, splits, val_images=len(splits.x_val), calib_batches=cfg.finetune.calib_batches)
                acc = evaluate(ev.compress(policy).model, splits.x_test, splits.y_test)
            cell = cell_of("dense", policy, ms, ms <= target_ms, 0, {"test_acc": float(acc), "finetuned": False})
            store.put(key, cell, sig)
            bench.log_result(key, cell, policy)

        for seed in spec.seeds:
            for agent in cfg.agents:
                key = f"{spec.name}/{setting}/{agent}/s{seed}"
                done = store.get(key, agent_sig)
                if done is not None and not needs_repick(done):
                    continue
                if done is not None:
                    log(f"results: {key} was picked over the budget before the pick's recalibrated rounds "
                        "existed; recomputing it")
                log(f"== {key}: {n_candidates} candidates")
                search_cfg = SearchConfig.from_dict({
                    "name": f"{cfg.name}-{spec.name}-{setting}-{agent}-s{seed}",
                    "model": {"name": spec.name, "checkpoint": str(ckpt.path)},
                    "dataset": ds.model_dump(),
                    "agent": {"name": agent, "options": cfg.agent_options.get(agent, {}), "seed": seed},
                    "space": space_options(cfg, setting, spec),
                    "budget": {"max_latency_ms": budget_pred_ms},
                    "latency": {"runtime": cfg.latency.runtime, "batch": cfg.latency.batch,
                                "threads": cfg.latency.threads, "precision": setting,
                                "profile_minutes": cfg.latency.profile_minutes, "measure_top_k": 0,
                                # the budget is on the profile's own scale (`predicted_budget` converts it
                                # at a uniform model near the budget), so no calibration at the dense one
                                "calibrate": False},
                    "evaluation": {"proxy_val_images": cfg.proxy_val_images, "calib_batches": cfg.calib_batches,
                                   "proxy_finetune_steps": setting_spec(cfg, setting, spec).proxy_finetune_steps,
                                   "finetune_top_k": 0},
                    "candidates": n_candidates, "seed": 0,
                    # the agents' own proposals only: the table compares agents, and uniform channel
                    # pruning is its own row (bisected on measured latency)
                    "baseline_candidates": [],
                    "ray": cfg.ray.model_dump(), "tracking": cfg.tracking.model_dump(),
                }, source="headline")
                stopped = interrupted_search(bench, search_cfg.name, search_sig, budget_pred_ms)
                if stopped is not None:
                    log(f"  resuming its search {stopped[0]} (stopped after {stopped[1]:.0f} s)")
                t0 = time.perf_counter()
                result = run_search(search_cfg, tracking_uri=bench.uri, parent_run_id=stopped and stopped[0],
                                    extra_tags={"mlflow.parentRunId": bench.run_id, "automl.benchmark": cfg.name,
                                                "automl.benchmark_signature": search_sig,
                                                "automl.benchmark_budget": budget_tag(budget_pred_ms)},
                                    printer=log)
                search_s = time.perf_counter() - t0 + (stopped[1] if stopped else 0.0)
                torch.set_num_threads(cfg.threads)
                if not any(c["status"] == "ok" for c in result.candidates):
                    errors = sorted({(c.get("error") or "?").splitlines()[0] for c in result.candidates})
                    raise RuntimeError(f"{key}: every candidate of search {result.search_id} failed: {errors[:3]}")
                cand, ms, within, n_measured = pick_by_measurement(result.candidates, measurer, setting, target_ms,
                                                                   cfg.measure_top_k, processes=cfg.pick_processes)
                log(f"  pick: candidate #{cand['index']} proxy {100 * cand['metrics']['accuracy']:.2f}%, "
                    f"measured {ms:.3f} ms ({'within' if within else 'OVER'} budget; {n_measured} measured)")
                kept, fill = cand["policy"], {}
                widen = widener()
                if widen is not None:
                    wide = widen(kept)
                    fill["widened_at_pick"] = widened_groups(space, kept, wide)
                    log(f"  widen: {fill['widened_at_pick']} channel group(s) raised to whole blocks")
                    if not cfg.fill_budget and wide is not kept:  # else fill_budget widens it
                        wide_ms = confirmed_ms(measurer, wide, setting, target_ms, cfg.pick_processes,
                                               "widened pick")
                        if wide_ms <= target_ms or not within:
                            kept, ms, within = wide, wide_ms, wide_ms <= target_ms
                if cfg.fill_budget:
                    picked_ms = ms
                    kept, ms, within, t = fill_budget(kept, space, measurer, setting, target_ms, cfg.fill_steps,
                                                      processes=cfg.pick_processes, widen=widen)
                    fill.update({"fill_t": t, "picked_ms": picked_ms})
                    log(f"  fill: sparsities x {t:.3f}, measured {ms:.3f} ms "
                        f"({'within' if within else 'OVER'} budget)")
                ft = finetune_cell(base, kept, splits, cfg, spec, seed)
                failed = sum(1 for c in result.candidates if c["status"] != "ok")
                cell = cell_of(agent, kept, ms, within, seed, {**fill,
                    "test_acc": ft["test_accuracy"], "test_acc_before_ft": ft["test_accuracy_before"],
                    "proxy_acc": cand["metrics"]["accuracy"], "predicted_ms": cand["metrics"].get("latency_ms"),
                    "search_seconds": search_s, "trial_seconds": result.trial_seconds or float("nan"),
                    "budget_predicted_ms": budget_pred_ms,
                    "finetune_seconds": ft["finetune_seconds"], "candidates": len(result.candidates),
                    "failed_candidates": failed, "measured_for_pick": n_measured, "search_id": result.search_id,
                    "search_resumed": stopped is not None, "pick_rule": PICK_RULE,
                    "finetuned": True})
                log_finetuned_into_search(bench.uri, cfg.tracking.experiment, result.search_id,
                                          {**cand, "policy": kept}, cell)
                store.put(key, cell, agent_sig)
                bench.log_result(key, cell, kept)
                log(f"  {key}: test acc {100 * cell['test_acc']:.2f}% at {ms:.3f} ms ({cell['speedup']:.2f}x)")

            for baseline in cfg.baselines:
                key = f"{spec.name}/{setting}/{baseline}/s{seed}"
                if store.get(key, sig) is not None:
                    continue
                log(f"== {key}")
                t0 = time.perf_counter()
                if baseline == "dense_finetuned":  # same model as the dense row: its latency, no new timing
                    policy = with_bits(space.dense_policy(), space, bits)
                    ms = store.get(f"{spec.name}/{setting}/dense/s0")["latency_ms"]
                    within = ms <= target_ms
                elif baseline == "uniform_channel":
                    policy, ms, within = uniform_channel_at_latency(base, spec.name, shape, space_cfg, measurer,
                                                                    setting, target_ms,
                                                                    uniform_align_for(cfg, setting, spec), bits,
                                                                    iters=cfg.uniform_bisect_steps,
                                                                    processes=cfg.pick_processes)
                else:
                    policy = with_bits(global_magnitude(base, cfg.budget_ratio, shape, model_name=spec.name),
                                       space, bits)
                    (ms,) = measurer.measure([policy], setting)
                    within = ms <= target_ms
                find_s = time.perf_counter() - t0
                policy = CompressionPolicy.from_dict(policy.to_dict())
                ft = finetune_cell(base, policy, splits, cfg, spec, seed)
                cell = cell_of(baseline, policy, ms, within, seed, {
                    "test_acc": ft["test_accuracy"], "test_acc_before_ft": ft["test_accuracy_before"],
                    "search_seconds": find_s, "finetune_seconds": ft["finetune_seconds"], "finetuned": True})
                store.put(key, cell, sig)
                bench.log_result(key, cell, policy)
                log(f"  {key}: test acc {100 * cell['test_acc']:.2f}% at {ms:.3f} ms ({cell['speedup']:.2f}x)")
    if any("verified_ms" not in c for c in current_cells(cfg, spec, store).values() if "policy" in c):
        verify_model(cfg, spec, store, measurer)


def extra_finetune_todo(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore) -> list[tuple[int, str]]:
    """(seed, key) of the extra fine-tunes (`finetune_seeds`) not done yet: one seed for every fine-tuned
    row of the model, then the next seed, so an interrupted run leaves whole seeds, not whole rows."""
    cells = current_cells(cfg, spec, store)
    return [(seed, key) for seed in spec.finetune_seeds for key, cell in sorted(cells.items())
            if cell.get("finetuned") and "policy" in cell and seed != cell["seed"]
            and str(seed) not in cell.get("extra_finetunes", {})]


def fine_tuned_twin(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore, key: str, seed: int) -> str | None:
    """Another current row of the same model and setting with the same policy whose extra fine-tune with
    `seed` is done (two agents often pick the same candidate: `amc` and `agmc` share their warm-up
    samples), else None. The fine-tune is seeded and runs on the same threads, so it would repeat that
    row's result (checked on the Xeon host: 88.69% both) at ~3 min (ResNet-20) a time."""
    cells = current_cells(cfg, spec, store)
    setting, policy = key.split("/")[1], cells[key]["policy"]
    for other, cell in sorted(cells.items()):
        if (other != key and other.split("/")[1] == setting and cell.get("policy") == policy
                and str(seed) in cell.get("extra_finetunes", {})):
            return other
    return None


def run_extra_finetunes(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore, bench: BenchmarkTracker) -> None:
    """Fine-tune every fine-tuned row's policy again with each of the model's `finetune_seeds`."""
    todo = extra_finetune_todo(cfg, spec, store)
    if not todo:
        return
    import torch

    from automl.data import load_dataset
    from automl.policy import CompressionPolicy
    from automl.training import load_checkpoint

    torch.set_num_threads(cfg.threads)
    base = load_checkpoint(store.get(f"{spec.name}/dense-latency")["checkpoint"]).model.eval()
    ds = cfg.dataset
    splits = load_dataset(ds.name, ds.data_dir, seed=0, limit=ds.limit, test_limit=ds.test_limit)
    log(f"{spec.name}: {len(todo)} extra fine-tune(s), seeds {spec.finetune_seeds}")
    for seed, key in todo:
        cell = store.get(key)
        twin = fine_tuned_twin(cfg, spec, store, key, seed)
        if twin is not None:  # the fine-tune is deterministic: the same policy and seed give the same model
            result = {"test_acc": store.get(twin)["extra_finetunes"][str(seed)]["test_acc"],
                      "finetune_seconds": 0.0, "same_policy_as": twin}
            log(f"== {key}: fine-tune seed {seed}: the same policy as {twin}, whose seed {seed} result it takes")
        else:
            log(f"== {key}: fine-tune seed {seed}")
            ft = finetune_cell(base, CompressionPolicy.from_dict(cell["policy"]), splits, cfg, spec, seed)
            result = {"test_acc": ft["test_accuracy"], "finetune_seconds": ft["finetune_seconds"]}
        store.put(key, {**cell, "extra_finetunes": {**cell.get("extra_finetunes", {}), str(seed): result}},
                  cell.get("signature"))
        bench.log_extra_finetune(key, seed, result)
        log(f"  {key} seed {seed}: test acc {100 * result['test_acc']:.2f}% (own seed "
            f"{100 * cell['test_acc']:.2f}%)")


def verify_model(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore, measurer: Measurer) -> None:
    """Re-measure every kept policy of a model and the dense model, fp32 and int8 together, interleaved in
    each of `verify_processes` timing processes: the reported speedup of a row is the median over the
    processes of dense / policy timed side by side (the in-loop measurements only chose the picks), its
    latency that speedup applied to the dense model's median. One process was not enough at the budget's
    edge: two verifications of the same ResNet-20 cells an hour apart moved single speedups by 1-3%."""
    from automl.policy import CompressionPolicy

    kept = dict(sorted((k, c) for k, c in current_cells(cfg, spec, store).items() if "policy" in c))
    if not kept:
        return
    keys = list(kept)
    n = cfg.verify_processes
    log(f"{spec.name}: verifying {len(keys) + 1} models interleaved in each of {n} timing process(es)")
    items = [(measurer.dense_model(), "fp32")] + [  # exported once for all processes
        (measurer.export(CompressionPolicy.from_dict(c["policy"]), c["setting"]), c["setting"]) for c in kept.values()]
    runs = [measurer.time_models(items) for _ in range(n)]
    dense_ms = statistics.median(run[0].ms for run in runs)
    for i, key in enumerate(keys, start=1):
        speedups = [run[0].ms / run[i].ms for run in runs]
        speedup = statistics.median(speedups)
        iqr = statistics.median((run[i].p75_ms or run[i].ms) - (run[i].p25_ms or run[i].ms) for run in runs)
        cell = dict(kept[key])
        cell.update(verified_ms=dense_ms / speedup, verified_iqr_ms=iqr, verified_dense_ms=dense_ms,
                    verified_speedup=speedup, verified_speedups=speedups)
        store.put(key, cell, cell.get("signature"))
    store.data["meta"].setdefault("verified", {})[spec.name] = {"dense_ms": dense_ms, "device": runs[0][0].device,
                                                                "processes": n}
    store.save()


def drop_verification(cfg: HeadlineConfig, spec: ModelSpec, store: ResultStore) -> int:
    """Forget a model's final re-measurement (`--reverify`): its next run re-measures every kept policy."""
    dropped = 0
    for key, cell in current_cells(cfg, spec, store).items():
        if "verified_ms" in cell:
            store.put(key, {k: v for k, v in cell.items() if not k.startswith("verified_")}, cell.get("signature"))
            dropped += 1
    store.data["meta"].get("verified", {}).pop(spec.name, None)
    store.save()
    return dropped


# ------------------------------------------------------------------------------ report
METHOD_ORDER = ("dense", "dense_finetuned", "rule_based", "amc", "agmc", "optuna", "random", "uniform_channel",
                "global_magnitude")
METHOD_LABEL = {"dense": "dense (no pruning)", "dense_finetuned": "dense + the same fine-tune (reference)",
                "uniform_channel": "uniform channel (baseline)",
                "global_magnitude": "global magnitude (baseline)"}


def accuracies(cell: dict[str, Any]) -> list[float]:
    """A row's test accuracies: its own fine-tune's, then its extra fine-tune seeds' (`finetune_seeds`)."""
    extra = cell.get("extra_finetunes", {})
    return [cell["test_acc"]] + [extra[s]["test_acc"] for s in sorted(extra, key=int)]


def seeds_text(group: list[dict[str, Any]]) -> str:
    """"0" for one seed; "0 (FT 0,1,2)" when the row was also fine-tuned with extra seeds."""
    out = []
    for c in group:
        extra = sorted(c.get("extra_finetunes", {}), key=int)
        out.append(f"{c['seed']} (FT {','.join([str(c['seed']), *extra])})" if extra else str(c["seed"]))
    return ", ".join(out)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def render(cfg: HeadlineConfig, store: ResultStore) -> str:
    lines = []
    for spec in cfg.models:
        cells = current_cells(cfg, spec, store)
        dense = cells.get(f"{spec.name}/dense-latency")
        if dense is None:
            continue
        for setting in model_settings(cfg, spec):
            rows = [c for k, c in cells.items() if k.startswith(f"{spec.name}/{setting}/")]
            if not rows:
                continue
            verified = store.data["meta"].get("verified", {}).get(spec.name)
            dense_ms = verified["dense_ms"] if verified else dense["latency_ms"]
            lines += ["", f"**{spec.name}, {setting}** — dense fp32 {dense_ms:.3f} ms measured, "
                          f"test acc {100 * dense['test_acc']:.2f}%; budget {cfg.budget_ratio:g} x dense fp32 "
                          f"({cfg.budget_ratio * dense_ms:.3f} ms)", "",
                      "| method | test acc (after FT) | Δ vs dense fp32 | measured ms | speedup | within budget "
                      "| MAC ratio | size KB | proxy acc | predicted ms | search s | seeds | policy |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for method in METHOD_ORDER:
                group = sorted((c for c in rows if c["method"] == method), key=lambda c: c["seed"])
                if not group:
                    continue
                accs = [a for c in group for a in accuracies(c)]
                ms = [c.get("verified_ms", c["latency_ms"]) for c in group]
                speedups = [c.get("verified_speedup", c["speedup"]) for c in group]
                delta = 100 * (statistics.mean(accs) - dense["test_acc"])
                proxy = [c["proxy_acc"] for c in group if c.get("proxy_acc") is not None]
                pred = [c["predicted_ms"] for c in group if c.get("predicted_ms") is not None]
                search = [c["search_seconds"] for c in group if c.get("search_seconds") is not None]
                within = sum(bool(c["verified_ms"] <= cfg.budget_ratio * c["verified_dense_ms"]
                                  if "verified_ms" in c else c["within_budget"]) for c in group)
                acc_text = _mean_std(accs) + ("" if group[0].get("finetuned", True) else " (no FT)")
                lines.append(
                    f"| {METHOD_LABEL.get(method, method)} | {acc_text} | {delta:+.2f} | "
                    f"{statistics.mean(ms):.3f} | {statistics.mean(speedups):.2f}x | "
                    f"{within}/{len(group)} | {statistics.mean(c['mac_ratio'] for c in group):.3f} | "
                    f"{statistics.mean(c['size_bytes'] for c in group) / 1e3:.0f} | "
                    f"{_mean_std(proxy) if proxy else '-'} | "
                    f"{f'{statistics.mean(pred):.3f}' if pred else '-'} | "
                    f"{f'{statistics.mean(search):.0f}' if search else '-'} | "
                    f"{seeds_text(group)} | {group[0]['brief']} |")
    return "\n".join(lines)


def render_layers(cfg: HeadlineConfig, store: ResultStore, base_spaces: dict[str, Any]) -> str:
    """Per-layer decisions of the most accurate searched policy per model and setting (seed 0)."""
    from automl.policy import CompressionPolicy

    out = []
    for spec in cfg.models:
        cells = current_cells(cfg, spec, store)
        space = base_spaces.get(spec.name)
        if space is None:
            continue
        for setting in model_settings(cfg, spec):
            searched = [c for k, c in cells.items() if k.startswith(f"{spec.name}/{setting}/")
                        and c["method"] in cfg.agents and c["within_budget"]]
            if not searched:
                continue
            best = max(searched, key=lambda c: statistics.mean(accuracies(c)))
            policy = CompressionPolicy.from_dict(best["policy"])
            out += ["", f"<details><summary>{spec.name}, {setting}: layers of the best searched policy "
                        f"({best['method']}, seed {best['seed']}, {_mean_std(accuracies(best))}, "
                        f"{best.get('verified_ms', best['latency_ms']):.3f} ms measured)</summary>", "",
                    "| layer | kind | out channels | scheme | sparsity | align |", "|---|---|---|---|---|---|",
                    *layer_table(policy, space), "", "</details>"]
    return "\n".join(out)


def compute_minutes(cfg: HeadlineConfig, store: ResultStore) -> str:
    parts = []
    for spec in cfg.models:
        cells = list(current_cells(cfg, spec, store).values())
        if not cells:
            parts.append(f"{spec.name} not run")
            continue
        total = sum(c.get("search_seconds", 0.0) + c.get("finetune_seconds", 0.0)
                    + sum(e["finetune_seconds"] for e in c.get("extra_finetunes", {}).values()) for c in cells)
        parts.append(f"{spec.name} {total / 60:.0f} min")
    return ", ".join(parts)


def setting_values(cfg: HeadlineConfig, field: str) -> list[tuple[str, Any]]:
    """One field of each setting's effective `per_setting` entry, labelled "int8" when every model that runs
    the setting has the same value, else "int8 (resnet20)" per group of models sharing one."""
    out: list[tuple[str, Any]] = []
    for setting in ("fp32", "int8"):
        groups = _grouped([(m.name, getattr(setting_spec(cfg, setting, m), field)) for m in cfg.models
                           if setting in model_settings(cfg, m)], sep=", ")
        if len(groups) == 1:
            out.append((setting, groups[0][1]))
        else:
            out.extend((f"{setting} ({names})", value) for names, value in groups)
    return out


def _grouped(pairs: list[tuple[str, Any]], sep: str = "; ") -> list[tuple[str, Any]]:
    """[("fp32", x), ("int8", x)] -> [("fp32; int8", x)]: labels of equal values joined, in first-seen order."""
    joined: dict[str, tuple[list[str], Any]] = {}
    for label, value in pairs:
        joined.setdefault(json.dumps(value, sort_keys=True), ([], value))[0].append(label)
    return [(sep.join(labels), value) for labels, value in joined.values()]


def proxy_steps_text(cfg: HeadlineConfig) -> str:
    """", then N SGD steps (fp32)" for the settings whose proxy trains briefly; "" when none does."""
    steps = [(label, n) for label, n in setting_values(cfg, "proxy_finetune_steps") if n]
    return "".join(f", then {n} SGD steps ({labels})" for labels, n in _grouped(steps))


def per_setting_text(cfg: HeadlineConfig) -> str:
    """Sentences naming the space and the uniform baseline's align each setting changes (config
    `per_setting`, a model's own `per_setting` where it has one); "" when none does."""
    space_of = setting_values(cfg, "space")
    spaces = _grouped([(label, space) for label, space in space_of if space])
    aligns = _grouped([(label, a) for label, a in setting_values(cfg, "uniform_align") if a is not None])
    standard = [label for label, space in space_of if not space]
    text = ""
    if spaces:
        text += " Per-setting search space (config `per_setting`, over the standard space): " + "; ".join(
            f"{labels}: {json.dumps(space, separators=(',', ':'))}" for labels, space in spaces) + "."
        if standard:
            text += " The standard space (every scheme): " + "; ".join(standard) + "."
    if aligns:
        text += (f" Uniform channel pruning rounds kept channels to {cfg.uniform_align}, except: "
                 + "; ".join(f"{labels}: {a}" for labels, a in aligns) + ".")
    return text


def verify_processes_text(store: ResultStore) -> str:
    """"resnet20: 3, mobilenetv2: 1": the timing processes each model's final re-measurement used (results
    verified before the count was recorded used one)."""
    verified = store.data["meta"].get("verified", {})
    return ", ".join(f"{name}: {v.get('processes', 1)}" for name, v in verified.items()) or "none yet"


def fill_text(cfg: HeadlineConfig) -> str:
    if not cfg.fill_budget:
        return ""
    return (f"; then the pick's channel sparsities are scaled by one factor, bisected over {cfg.fill_steps} "
            "measured steps for the least pruning that meets the budget (`fill_budget`: the agent's per-layer "
            "allocation is kept; kept channels move in steps of their align, so a pick can stay a few percent "
            "under it)")


def widen_text(cfg: HeadlineConfig) -> str:
    if not cfg.widen_free_channels:
        return ""
    return ("; each pick's channel groups (and each fill step's) keep the next whole block of the runtime's "
            "blocked layout (fp32 onnxruntime's NCHWc; none in int8) where the device profile predicts no "
            "slowdown (`widen_free_channels`: channels the runtime computes anyway are kept)")


def pick_processes_text(cfg: HeadlineConfig) -> str:
    if cfg.pick_processes == 1:
        return ""
    return (f"; a pick, and a step of the uniform baseline's bisection, counts as within the budget only if its "
            f"median over {cfg.pick_processes} timing processes is")


def write_docs(cfg: HeadlineConfig, config_path: Path, table: str, layers: str, store: ResultStore) -> None:
    import torch

    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.is_file() else ""
    rel = os.path.relpath(config_path.resolve(), ROOT)
    seeds = {spec.name: spec.seeds for spec in cfg.models}
    ft_seeds = {spec.name: spec.finetune_seeds for spec in cfg.models if spec.finetune_seeds}
    host = store.data["meta"].get("host", {}).get("device") or ", ".join(sorted(
        {v.get("device", "?") for v in store.data["meta"].get("verified", {}).values()})) or "unrecorded"
    recipes = {spec.name: finetune_recipe(cfg, spec) for spec in cfg.models}
    per_model = "; ".join(f"{spec.name}: {spec.candidates or cfg.candidates} candidates, fine-tune "
                          f"{recipes[spec.name][0]:g} epoch(s) at lr {recipes[spec.name][1]:g}"
                          for spec in cfg.models)
    body = "\n".join([
        SECTION, "",
        f"Command: `.venv/bin/python experiments/benchmarks/headline.py {rel} --docs` "
        f"(host {host}; {platform.machine()}, {os.cpu_count()} vCPU, torch {torch.__version__}). Compute in the cells "
        f"(searches incl. Ray start-up, picks, fine-tunes; base-model training and device profiles excluded): "
        f"{compute_minutes(cfg, store)}. The results file makes it resumable: a rerun computes only missing cells.",
        "",
        f"Setup: Fashion-MNIST, budget = {cfg.budget_ratio:g} x the dense model's measured latency on onnxruntime "
        f"fp32 (batch {cfg.latency.batch}, {cfg.latency.threads} thread). Every agent: one `automl search` with "
        f"the same number of candidates (per model, below; proxy accuracy on {cfg.proxy_val_images} validation images after BN "
        f"recalibration{proxy_steps_text(cfg)}; the budget on the device profile's predicted latency, converted "
        f"with the median predicted / measured ratio of the uniform channel-pruned model the profile puts at the "
        f"budget and of {BUDGET_SAMPLES} policies drawn from the space that it predicts nearest the budget), "
        f"then the deploy-verified pick (the {cfg.measure_top_k} best proxy candidates measured per round, "
        f"{PICK_ROUNDS} rounds, the most accurate one within the measured budget kept; if none is, up to "
        f"{RECALIBRATED_ROUNDS} more rounds measure "
        f"the most accurate others whose predicted latency, scaled by the measured / predicted ratio seen so far, "
        f"fits the budget{pick_processes_text(cfg)}){fill_text(cfg)}{widen_text(cfg)}. Same fine-tune for every row of a model (SGD, cosine lr, on the "
        f"training split, masks kept; the *dense + the same fine-tune* row shows what those epochs alone buy the "
        f"unpruned model); per model: {per_model}. Seeds per model (agent + fine-tune): {seeds}"
        + (f"; extra fine-tune seeds of every fine-tuned row (test acc is the mean ± std over its fine-tunes, "
           f"the *seeds* column names them): {ft_seeds}" if ft_seeds else "")
        + "; the base model and data splits use seed 0. *int8*: the whole model runs as onnxruntime static int8 (U8S8, "
        "per-channel); its accuracy is 8-bit fake-quant (weights per-channel, activations calibrated). "
        "Latency columns are **measured** (onnxruntime, separate process, median) unless labelled predicted: "
        "after all cells of a model are done, every kept policy and the dense model (fp32 and int8) are "
        "re-measured together, interleaved in one timing process, repeated in separate processes (per model: "
        f"{verify_processes_text(store)}); *speedup* is the median over the processes of dense / policy timed "
        "side by side, *measured ms* that speedup on the dense model's median, *within budget* speedup >= 1 / "
        "budget ratio (the in-loop measurements only chose the picks)." + per_setting_text(cfg),
        table, layers, ""])
    if SECTION in text:
        start = text.index(SECTION)
        nxt = re.search(r"^## ", text[start + len(SECTION):], flags=re.M)
        end = start + len(SECTION) + nxt.start() if nxt else len(text)
        text = text[:start] + body + "\n" + text[end:]
    else:  # the headline goes first, before the building blocks' sections
        first = re.search(r"^## ", text, flags=re.M)
        text = (text[:first.start()] + body + "\n" + text[first.start():]) if first else text.rstrip() + "\n\n" + body
    doc.write_text(text)
    log(f"wrote {doc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("config", type=Path, help="benchmark YAML (experiments/benchmarks/headline.yaml)")
    p.add_argument("--results", type=Path, default=None,
                   help="results JSON (resumable); default $AUTOML_HOME/benchmarks/<name>.json, started "
                        "from the committed <name>_results*.json measured on this machine if there is one")
    p.add_argument("--tracking-uri", default=None, help="MLflow store; default: the config's, else the default")
    p.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="print the table from the results file and exit")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="run only these of the config's models (the others' finished cells still report)")
    p.add_argument("--reverify", action="store_true",
                   help="re-measure every kept policy of the models run (the final interleaved measurement)")
    args = p.parse_args(argv)
    try:
        cfg = HeadlineConfig.from_yaml(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    known = [spec.name for spec in cfg.models]
    unknown = sorted(set(args.models or []) - set(known))
    if unknown:
        print(f"error: --models {' '.join(unknown)}: not in {args.config} (its models: {', '.join(known)})",
              file=sys.stderr)
        return 2
    from automl.training import default_home

    results = args.results or default_home() / "benchmarks" / f"{cfg.name}.json"
    if args.results is None and not results.is_file() and not args.report_only:
        seed_file = committed_results(cfg.name, this_host())
        if seed_file is not None:
            import shutil

            results.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(seed_file, results)
            log(f"results: continuing {seed_file}, the committed run measured on this machine "
                "(copied to the default results file)")
    store = ResultStore(results, cfg.model_dump_json())
    log(f"results: {results}")
    spaces: dict[str, Any] = {}
    bench = None
    if not args.report_only:
        try:
            claim_host(store, this_host())
        except HostMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        bench = BenchmarkTracker(cfg, args.tracking_uri, store)
        log(f"MLflow: {bench.uri}, benchmark run {bench.run_id}")
        try:
            for spec in cfg.models:
                if args.models is None or spec.name in args.models:
                    if args.reverify:
                        log(f"{spec.name}: --reverify: {drop_verification(cfg, spec, store)} rows to re-measure")
                    run_model(cfg, spec, store, bench)
            for spec in cfg.models:  # where time allows: after every model's own cells
                if args.models is None or spec.name in args.models:
                    run_extra_finetunes(cfg, spec, store, bench)
        except KeyboardInterrupt:
            bench.finish(render(cfg, store), status="KILLED")
            log(f"interrupted; run the same command again to continue ({results})")
            return 130
    for spec in cfg.models:
        ck = store.get(f"{spec.name}/dense-latency")
        if ck and not Path(ck["checkpoint"]).is_file():
            log(f"{spec.name}: base checkpoint {ck['checkpoint']} is gone; the per-layer tables are left out "
                "(run the benchmark once to retrain it: finished cells are kept)")
        elif ck:
            from automl.training import load_checkpoint
            from search_spaces import SearchSpace, SpaceConfig

            model = load_checkpoint(ck["checkpoint"]).model
            from automl.data import dataset_info

            info = dataset_info(cfg.dataset.name)
            shape = (info.in_channels, info.image_size, info.image_size)
            spaces[spec.name] = SearchSpace.from_model(model, spec.name, shape,
                                                       SpaceConfig.from_dict(space_options(cfg, "fp32", spec)))
    table = render(cfg, store)
    print(table)
    if bench is not None:
        bench.finish(table)
        print(f"\nMLflow: mlflow ui --backend-store-uri {bench.uri} (benchmark run {bench.run_id})")
    if args.docs:
        write_docs(cfg, args.config, table, render_layers(cfg, store, spaces), store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
