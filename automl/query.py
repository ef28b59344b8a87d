"""Reading searches back out of MLflow: list searches, their candidates, the best policy under
constraints, Pareto fronts and comparisons.

Only `MlflowClient` is used (no global `mlflow.set_tracking_uri`), so the CLI, the HTTP service and
tests can each point at their own store in one process. The layout read here is the one
`automl.search` writes, documented in docs/architecture.md ("MLflow layout"); everything a face
(`automl best`, `automl compare`, the service) shows goes through this module, which is why the CLI
and the HTTP API cannot disagree.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automl.policy import CompressionPolicy, LayerDecision, PolicyError

ROLE, SEARCH_ID, STATUS, STAGE = "automl.role", "automl.search_id", "automl.status", "automl.stage"
STAGES = ("proxy", "finetuned")
BYTES_PER_MB = 1_000_000  # decimal megabytes, like `max_size_mb` in the search config budget
RUN_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/+-]{1,200}$")
_PAGE = 5000
# Cost axes a front can be drawn against, in order of preference (latency when the search measured or
# predicted it; a search run without a latency model still has MACs and size).
X_METRICS = {"latency_ms": "latency (ms)", "mac_ratio": "MACs / dense MACs", "size_bytes": "size (bytes)"}


class QueryError(LookupError):
    """An id that names no search or candidate, or a malformed query value; the message says which."""


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SearchSummary:
    """One search (an MLflow parent run), as read from its tags, params and metrics."""

    search_id: str
    name: str
    model: str
    dataset: str | None
    device: str | None
    runtime: str | None
    agent: str | None
    status: str
    experiment_id: str
    start_time_ms: int | None
    candidates_total: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One evaluated policy (an MLflow child run). `accuracy` is the accuracy of its `stage`."""

    run_id: str
    search_id: str
    index: int
    stage: str
    status: str
    model: str
    dataset: str | None
    device: str | None
    latency_source: str | None
    run_name: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    @property
    def latency_ms(self) -> float | None:
        return self.metrics.get("latency_ms")

    @property
    def mac_ratio(self) -> float | None:
        return self.metrics.get("mac_ratio")

    @property
    def size_mb(self) -> float | None:
        size = self.metrics.get("size_bytes")
        return None if size is None else size / BYTES_PER_MB

    @property
    def label(self) -> str:
        """Short, stable name for tables and plot annotations: search prefix + candidate index + stage."""
        return f"{self.search_id[:6]}#{self.index}{'*' if self.stage == 'finetuned' else ''}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(accuracy=self.accuracy, latency_ms=self.latency_ms, mac_ratio=self.mac_ratio,
                   size_mb=self.size_mb, label=self.label)
        return out


@dataclass(frozen=True)
class Constraints:
    """Upper/lower bounds a policy must meet; `None` means unconstrained.

    A candidate that lacks the metric a bound needs does not fit: a policy whose size was never
    recorded cannot be promised to meet a size budget.
    """

    max_latency_ms: float | None = None
    max_mac_ratio: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and (not isinstance(value, (int, float)) or math.isnan(value) or value < 0):
                raise QueryError(f"{name} must be a non-negative number, got {value!r}")

    def violations(self, c: Candidate) -> list[str]:
        """Why `c` does not fit, one phrase per broken bound; empty when it fits."""
        out = []
        for name, value, bound, upper in (
            ("latency_ms", c.latency_ms, self.max_latency_ms, True),
            ("mac_ratio", c.mac_ratio, self.max_mac_ratio, True),
            ("size_mb", c.size_mb, self.max_size_mb, True),
            ("accuracy", c.accuracy, self.min_accuracy, False),
        ):
            if bound is None:
                continue
            if value is None:
                out.append(f"{name} not recorded")
            elif (value > bound) if upper else (value < bound):
                out.append(f"{name} {value:.4g} {'>' if upper else '<'} {bound:g}")
        return out

    def active(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BestResult:
    """The answer of `automl best` / GET /models/{name}/best-policy."""

    candidate: Candidate
    constraints: Constraints
    candidates_considered: int
    candidates_fitting: int

    @property
    def stage(self) -> str:
        return self.candidate.stage

    @property
    def note(self) -> str:
        if self.stage == "finetuned":
            return "fine-tuned accuracy (fine-tuned results are preferred over proxy ones)"
        return ("proxy accuracy, not fine-tuned: no fine-tuned result meets the constraints; "
                "expect the accuracy to change after fine-tuning")

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"run_id": c.run_id, "search_id": c.search_id, "candidate": c.index, "model": c.model,
                "dataset": c.dataset, "device": c.device, "stage": c.stage, "fine_tuned": c.stage == "finetuned",
                "accuracy": c.accuracy, "latency_ms": c.latency_ms, "latency_source": c.latency_source,
                "mac_ratio": c.mac_ratio, "size_mb": c.size_mb, "note": self.note,
                "constraints": self.constraints.active(), "candidates_considered": self.candidates_considered,
                "candidates_fitting": self.candidates_fitting}


@dataclass(frozen=True)
class Comparison:
    """What `automl compare` shows: the entries (one per policy), where each came from, and the front."""

    entries: list[Candidate]
    sources: dict[str, str]  # given id -> "search" | "candidate"
    front: list[Candidate]
    x: str = "latency_ms"  # the cost metric of the front (see X_METRICS)

    def to_dict(self) -> dict[str, Any]:
        front_ids = {c.run_id for c in self.front}
        return {"sources": self.sources, "x": self.x, "y": "accuracy",
                "entries": [{**c.to_dict(), "on_front": c.run_id in front_ids} for c in self.entries],
                "front": [c.run_id for c in self.front]}


# ---------------------------------------------------------------------------------------------- pure helpers
def pareto_front(candidates: Iterable[Candidate], x: str = "latency_ms", y: str = "accuracy") -> list[Candidate]:
    """Non-dominated candidates for (minimise `x`, maximise `y`), sorted by `x`.

    Candidates missing either metric are left out. Of exact duplicates only the first is kept, so
    the front has one point per distinct trade-off.
    """
    pts = [c for c in candidates if c.metrics.get(x) is not None and c.metrics.get(y) is not None]
    pts.sort(key=lambda c: (c.metrics[x], -c.metrics[y], c.run_id))
    front, best_y = [], -math.inf
    for c in pts:
        if c.metrics[y] > best_y:
            front.append(c)
            best_y = c.metrics[y]
    return front


def default_x(candidates: Iterable[Candidate]) -> str:
    """The first metric of X_METRICS that any candidate has (latency_ms if none has any)."""
    cands = list(candidates)
    return next((m for m in X_METRICS if any(m in c.metrics for c in cands)), "latency_ms")


def choose_best(candidates: Sequence[Candidate], constraints: Constraints = Constraints()) -> Candidate | None:
    """Most accurate ok candidate meeting `constraints`; fine-tuned results win over proxy ones.

    Proxy accuracy (no fine-tuning) and fine-tuned accuracy are not on the same scale, so a
    fine-tuned candidate that fits is always preferred; ties go to the lower latency, then run id.
    """
    fitting = [c for c in candidates
               if c.status == "ok" and c.accuracy is not None and not constraints.violations(c)]
    if not fitting:
        return None
    pool = [c for c in fitting if c.stage == "finetuned"] or fitting
    return max(pool, key=lambda c: (c.accuracy, -(c.latency_ms if c.latency_ms is not None else math.inf),
                                    c.run_id))


def one_per_policy(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Per (search, candidate index) keep the fine-tuned run if there is one, else the proxy run."""
    by_key: dict[tuple[str, int], Candidate] = {}
    for c in candidates:
        key = (c.search_id, c.index)
        if key not in by_key or (c.stage == "finetuned" and by_key[key].stage != "finetuned"):
            by_key[key] = c
    return sorted(by_key.values(), key=lambda c: (c.search_id, c.index))


def describe_decision(d: LayerDecision | None) -> str:
    """One cell of the per-layer view: scheme, its structure, sparsity and bit-widths."""
    if d is None:
        return "-"
    parts = [d.scheme]
    if d.scheme == "nm":
        parts.append(f"{d.n}:{d.m}")
    elif d.scheme == "block1xn":
        parts.append(f"1x{d.n}")
    elif d.scheme == "block_punched" and d.block:
        parts.append(f"{d.block[0]}x{d.block[1]}")
    elif d.scheme == "channel" and d.align > 1:
        parts.append(f"align{d.align}")
    elif d.scheme == "pattern":
        parts.append(f"{d.pattern_size}-entry")
    if d.scheme not in ("dense", "nm"):
        parts.append(f"s={d.sparsity:.2f}")
    if d.weight_bits is not None or d.act_bits is not None:
        parts.append(f"w{d.weight_bits or 32}a{d.act_bits or 32}")
    return " ".join(parts)


def layer_view(a: CompressionPolicy, b: CompressionPolicy) -> list[dict[str, str]]:
    """Side-by-side per-layer decisions of two policies (layers of `a` first, then those only in `b`)."""
    names = list(a.layers) + [n for n in b.layers if n not in a.layers]
    rows = []
    for name in names:
        da, db = a.decision(name), b.decision(name)
        rows.append({"layer": name, "a": describe_decision(da), "b": describe_decision(db),
                     "same": "yes" if da == db else ""})
    return rows


def pareto_plot_data(entries: Sequence[Candidate], front: Sequence[Candidate] | None = None,
                     title: str | None = None, x: str = "latency_ms") -> dict[str, Any]:
    """Everything the Pareto plot draws, as plain data (tests check this, and it is embedded in the PNG)."""
    if x not in X_METRICS:
        raise QueryError(f"cannot plot against '{x}'; choose one of {', '.join(X_METRICS)}")
    front = pareto_front(entries, x=x) if front is None else front
    front_ids = {c.run_id for c in front}
    points = [{"run_id": c.run_id, "label": c.label, "search_id": c.search_id, "stage": c.stage,
               "x": c.metrics[x], "y": c.accuracy, "on_front": c.run_id in front_ids}
              for c in entries if c.metrics.get(x) is not None and c.accuracy is not None]
    return {"title": title or f"accuracy vs {X_METRICS[x].split(' (')[0]}", "x": x, "xlabel": X_METRICS[x],
            "ylabel": "accuracy", "points": points, "front": [[c.metrics[x], c.accuracy] for c in front]}


def save_pareto_plot(data: dict[str, Any], path: str | Path) -> Path:
    """Write the plot as PNG (Agg backend, no display needed); the plot data ride along in its
    `Description` text chunk so the file alone says what was drawn."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in data["points"]:
        groups.setdefault(p["search_id"], []).append(p)
    for search_id, pts in groups.items():
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=36, alpha=0.8,
                   label=f"search {search_id[:8]}", zorder=2)
    if data["front"]:
        fx, fy = zip(*data["front"], strict=True)
        ax.plot(fx, fy, color="crimson", linewidth=1.5, drawstyle="steps-post", zorder=1, label="Pareto front")
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="crimson", linewidths=1.8, zorder=3)
    for p in data["points"]:
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(data["ylabel"])
    ax.set_title(data["title"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Title": data["title"], "Description": json.dumps(data)})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- reader
class TrackingReader:
    """Read-only view of one tracking store. Holds an MlflowClient, never global MLflow state."""

    def __init__(self, tracking_uri: str):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    # ------------------------------------------------------------------ low level
    def _experiment_ids(self) -> list[str]:
        ids, token = [], None
        while True:
            page = self.client.search_experiments(max_results=1000, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids

    def _runs(self, filter_string: str) -> list[Any]:
        exp_ids = self._experiment_ids()
        if not exp_ids:
            return []
        runs, token = [], None
        while True:
            page = self.client.search_runs(exp_ids, filter_string=filter_string, max_results=_PAGE, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise QueryError(f"'{run_id}' is not an MLflow run id (32 hex characters); "
                             "list searches with `automl best` or the MLflow UI")
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise QueryError(f"no run with id {run_id} in the tracking store {self.tracking_uri}") from None
        if run.info.lifecycle_stage == "deleted":
            raise QueryError(f"run {run_id} was deleted")
        return run

    @staticmethod
    def _tag_filter(**tags: str | None) -> str:
        parts = []
        for key, value in tags.items():
            if value is None:
                continue
            if not _NAME_RE.match(value):
                raise QueryError(f"{key.split('.')[-1]} '{value}' has characters not allowed in a name "
                                 "(letters, digits, _ . : / + - only)")
            parts.append(f"tags.`{key}` = '{value}'")
        return " and ".join(parts)

    # ------------------------------------------------------------------ conversion
    @staticmethod
    def _search_from_run(run: Any) -> SearchSummary:
        tags, params = run.data.tags, run.data.params
        total = params.get("candidates")
        return SearchSummary(
            search_id=run.info.run_id, name=tags.get("automl.search_name") or run.info.run_name or "",
            model=tags.get("automl.model", params.get("model.name", "")), dataset=tags.get("automl.dataset"),
            device=tags.get("automl.device"), runtime=tags.get("automl.runtime"), agent=tags.get("automl.agent"),
            status=tags.get(STATUS, run.info.status.lower()), experiment_id=run.info.experiment_id,
            start_time_ms=run.info.start_time, candidates_total=int(total) if total and total.isdigit() else None,
            metrics=dict(run.data.metrics), error=tags.get("automl.error"))

    @staticmethod
    def _candidate_from_run(run: Any, parent: SearchSummary | None) -> Candidate:
        tags = run.data.tags
        index = tags.get("automl.candidate", "-1")
        return Candidate(
            run_id=run.info.run_id, search_id=tags.get(SEARCH_ID) or tags.get("mlflow.parentRunId", ""),
            index=int(index) if index.lstrip("-").isdigit() else -1, stage=tags.get(STAGE, "proxy"),
            status=tags.get(STATUS, "ok"), model=tags.get("automl.model", parent.model if parent else ""),
            dataset=tags.get("automl.dataset") or (parent.dataset if parent else None),
            device=tags.get("automl.device") or (parent.device if parent else None),
            latency_source=tags.get("automl.latency_source"), run_name=run.info.run_name or "",
            metrics=dict(run.data.metrics), error=tags.get("automl.error"))

    # ------------------------------------------------------------------ searches
    def searches(self, model: str | None = None, dataset: str | None = None,
                 device: str | None = None) -> list[SearchSummary]:
        """Searches (parent runs) for a model/dataset/device, newest first."""
        filt = self._tag_filter(**{ROLE: "search", "automl.model": model, "automl.dataset": dataset,
                                   "automl.device": device})
        out = [self._search_from_run(r) for r in self._runs(filt)]
        return sorted(out, key=lambda s: -(s.start_time_ms or 0))

    def search(self, search_id: str) -> SearchSummary:
        run = self._get_run(search_id)
        if run.data.tags.get(ROLE) != "search":
            raise QueryError(f"run {search_id} is not a search (its automl.role tag is "
                             f"{run.data.tags.get(ROLE)!r}); pass the parent run id")
        return self._search_from_run(run)

    def candidates(self, search_id: str, stage: str | None = None, include_failed: bool = False) -> list[Candidate]:
        """Candidates of one search, by index then stage."""
        parent = self.search(search_id)
        filt = self._tag_filter(**{ROLE: "candidate", SEARCH_ID: search_id, STAGE: stage})
        out = [self._candidate_from_run(r, parent) for r in self._runs(filt)]
        if not include_failed:
            out = [c for c in out if c.status == "ok"]
        return sorted(out, key=lambda c: (c.index, STAGES.index(c.stage) if c.stage in STAGES else 9))

    def candidate(self, run_id: str) -> Candidate:
        run = self._get_run(run_id)
        if run.data.tags.get(ROLE) != "candidate":
            raise QueryError(f"run {run_id} is not a candidate (its automl.role tag is "
                             f"{run.data.tags.get(ROLE)!r})")
        sid = run.data.tags.get(SEARCH_ID)
        parent = None
        if sid:
            try:
                parent = self.search(sid)
            except QueryError:
                parent = None
        return self._candidate_from_run(run, parent)

    def model_candidates(self, model: str, dataset: str | None = None,
                         device: str | None = None) -> tuple[list[SearchSummary], list[Candidate]]:
        """Every ok candidate of `model` in searches matching dataset/device."""
        searches = {s.search_id: s for s in self.searches(model, dataset, device)}
        if not searches:
            return [], []
        filt = self._tag_filter(**{ROLE: "candidate", "automl.model": model, STATUS: "ok"})
        cands = []
        for run in self._runs(filt):
            parent = searches.get(run.data.tags.get(SEARCH_ID, ""))
            if parent is not None:
                cands.append(self._candidate_from_run(run, parent))
        return list(searches.values()), cands

    # ------------------------------------------------------------------ best
    def best_policy(self, model: str, dataset: str | None = None, device: str | None = None,
                    constraints: Constraints = Constraints()) -> tuple[BestResult | None, str]:
        """The best fitting candidate and a sentence saying what was searched (why nothing fits, if so)."""
        searches, cands = self.model_candidates(model, dataset, device)
        where = f"model '{model}'" + (f", dataset '{dataset}'" if dataset else "") + (
            f", device '{device}'" if device else "")
        if not searches:
            return None, (f"no tracked search for {where} in {self.tracking_uri}; run `automl search` first "
                          "(or check --tracking-uri / MLFLOW_TRACKING_URI)")
        best = choose_best(cands, constraints)
        if best is None:
            rated = [c for c in cands if c.accuracy is not None]
            msg = (f"no policy for {where} meets {_fmt_constraints(constraints)}: "
                   f"{len(rated)} ok candidate(s) in {len(searches)} search(es)")
            for metric, pick in (("latency_ms", min), ("mac_ratio", min), ("accuracy", max)):
                vals = [c.metrics[metric] for c in rated if metric in c.metrics]
                if vals:
                    msg += f"; {'lowest' if pick is min else 'highest'} {metric} seen {pick(vals):.4g}"
            return None, msg + ". Relax a constraint or run a search with that budget."
        fitting = sum(1 for c in cands if c.accuracy is not None and not constraints.violations(c))
        return BestResult(best, constraints, len(cands), fitting), f"best of {fitting} fitting candidate(s)"

    # ------------------------------------------------------------------ compare / policies
    def compare(self, ids: Sequence[str], x: str | None = None) -> Comparison:
        """Resolve each id (a search id -> one entry per policy of that search; a candidate run id -> itself).

        The front is accuracy vs `x` (default: latency, else MAC ratio, else size: see `default_x`)."""
        if not ids:
            raise QueryError("give at least one search id or candidate run id")
        entries: dict[str, Candidate] = {}
        sources: dict[str, str] = {}
        for run_id in ids:
            run = self._get_run(run_id)
            role = run.data.tags.get(ROLE)
            if role == "search":
                sources[run_id] = "search"
                for c in one_per_policy(self.candidates(run_id)):
                    entries.setdefault(c.run_id, c)
            elif role == "candidate":
                sources[run_id] = "candidate"
                entries.setdefault(run_id, self.candidate(run_id))
            else:
                raise QueryError(f"run {run_id} is neither a search nor a candidate of compress-search "
                                 f"(automl.role tag: {role!r})")
        listed = list(entries.values())
        x = x or default_x(listed)
        if x not in X_METRICS:
            raise QueryError(f"cannot compare on '{x}'; choose one of {', '.join(X_METRICS)}")
        return Comparison(entries=listed, sources=sources, front=pareto_front(listed, x=x), x=x)

    def load_policy(self, run_id: str) -> CompressionPolicy:
        """The `policy.json` artifact of a candidate run (or `best_policy.json` of a search)."""
        run = self._get_run(run_id)
        name = "best_policy.json" if run.data.tags.get(ROLE) == "search" else "policy.json"
        with tempfile.TemporaryDirectory(prefix="automl-policy-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, name, tmp)
            except Exception as exc:  # MLflow raises several types for a missing artifact
                raise QueryError(f"run {run_id} has no {name} artifact ({type(exc).__name__})") from None
            try:
                return CompressionPolicy.load(local)
            except PolicyError as exc:
                raise QueryError(f"{name} of run {run_id} is not a valid policy: {exc}") from None

    def search_progress(self, search_id: str) -> dict[str, Any]:
        """Status, candidates done / total and the best so far, for GET /searches/{id}."""
        s = self.search(search_id)
        cands = self.candidates(search_id, include_failed=True)
        proxy = [c for c in cands if c.stage == "proxy"]
        done = len(proxy) if proxy else int(s.metrics.get("candidates_done", 0))
        best = choose_best(cands)
        return {"id": s.search_id, "name": s.name, "status": s.status, "model": s.model, "dataset": s.dataset,
                "device": s.device, "progress": {"candidates_done": done, "candidates_total": s.candidates_total,
                                                 "failed": sum(1 for c in proxy if c.status != "ok")},
                "best": None if best is None else {**_brief(best)}, "error": s.error, "metrics": s.metrics}


# ---------------------------------------------------------------------------------------------- module API
def list_searches(tracking_uri: str, model: str | None = None, dataset: str | None = None,
                  device: str | None = None) -> list[SearchSummary]:
    return TrackingReader(tracking_uri).searches(model, dataset, device)


def search_candidates(tracking_uri: str, search_id: str, stage: str | None = None) -> list[Candidate]:
    return TrackingReader(tracking_uri).candidates(search_id, stage)


def best_policy(tracking_uri: str, model: str, dataset: str | None = None, device: str | None = None,
                max_latency_ms: float | None = None, max_mac_ratio: float | None = None,
                max_size_mb: float | None = None, min_accuracy: float | None = None) -> BestResult | None:
    """Most accurate ok candidate of `model` meeting every given bound (fine-tuned preferred), or None."""
    constraints = Constraints(max_latency_ms, max_mac_ratio, max_size_mb, min_accuracy)
    return TrackingReader(tracking_uri).best_policy(model, dataset, device, constraints)[0]


def compare(tracking_uri: str, ids: Sequence[str], x: str | None = None) -> Comparison:
    return TrackingReader(tracking_uri).compare(ids, x)


def load_policy(tracking_uri: str, run_id: str) -> CompressionPolicy:
    return TrackingReader(tracking_uri).load_policy(run_id)


def _brief(c: Candidate) -> dict[str, Any]:
    return {"run_id": c.run_id, "candidate": c.index, "stage": c.stage, "accuracy": c.accuracy,
            "latency_ms": c.latency_ms, "mac_ratio": c.mac_ratio, "size_mb": c.size_mb}


def _fmt_constraints(c: Constraints) -> str:
    active = c.active()
    if not active:
        return "no constraints (and no candidate has an accuracy)"
    return ", ".join(f"{k.replace('max_', '').replace('min_', '')} {'<=' if k.startswith('max') else '>='} {v:g}"
                     for k, v in active.items())
