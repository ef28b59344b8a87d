"""`automl search`: run one compression search on Ray Tune, tracked in MLflow, resumable.

Flow (driver):
 1. resolve the tracking store; start a parent run, or attach to one (resume / pre-created by the service);
 2. load or train the base model, load data, build the SearchSpace and the device latency profile;
 3. cost the dense model (predicted and measured latency) and turn the config's budget into a `Budget`;
 4. build the agent (or restore its pickled state when resuming) and wrap it as a Tune `Searcher`;
 5. run the trials on Ray (embedded local Ray by default, `--address` for a cluster); every finished
    trial becomes a child run at once, so a killed driver loses only the trials in flight;
 6. fine-tune the top-k, re-measure their latency on the real runtime, log ONNX, Pareto front and best policy.

MLflow is the source of truth for what has been evaluated: resume reads the finished children back,
so no candidate is lost or evaluated twice.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl.search.config import SearchConfig
from automl.search.pareto import pareto_front, plot_pareto
from automl.search.progress import SearchProgress, proxy_ranking_warning
from automl.search.tracking_log import SearchTracker, json_dumps

Printer = Callable[[str], None]


class SearchError(RuntimeError):
    """A search cannot start or continue (bad budget, nothing to resume, ...)."""


@dataclass
class SearchResult:
    search_id: str
    tracking_uri: str
    experiment_id: str
    candidates: list[dict[str, Any]]
    finetuned: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    dense: dict[str, float] = field(default_factory=dict)
    status: str = "finished"
    trial_seconds: float | None = None  # wall time of the Ray trial phase (throughput benchmarks)


def _eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _tune_signal_handlers_restored() -> Iterator[None]:
    """Put back the SIGINT / SIGUSR1 handlers Ray Tune replaces during `Tuner.fit()`.

    Why: Tune installs its own SIGINT handler (stop scheduling, checkpoint, return) and restores the old
    one only when a signal arrives; after a search that finished normally, its handler stays, and a later
    Ctrl+C in the same process (the fine-tune after a search, the next cell of a benchmark) only prints
    Tune's warning and is otherwise ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [n for n in ("SIGINT", "SIGUSR1") if hasattr(signal, n)]
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names}
    try:
        yield
    finally:
        for n, handler in saved.items():
            if handler is not None:
                signal.signal(getattr(signal, n), handler)


def state_dir_for(search_id: str) -> Path:
    from automl.training import default_home

    path = default_home() / "searches" / search_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_resumable(tracker: SearchTracker, name: str) -> str:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`automl.role` = 'search' and tags.`automl.search_name` = '{name}'",
        order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if run.data.tags.get("automl.status") in ("running", "interrupted", "failed", "queued"):
            return run.info.run_id
    raise SearchError(f"no interrupted search named '{name}' in {tracker.tracking_uri}; "
                      "start it without --resume, or pass --parent-run-id")


class SearchRunner:
    """Owns one search's driver-side state; `run()` does the whole flow."""

    def __init__(self, config: SearchConfig, *, tracking_uri: str | None = None, name: str | None = None,
                 resume: bool = False, parent_run_id: str | None = None, address: str | None = None,
                 printer: Printer = _eprint, extra_tags: dict[str, str] | None = None):
        from automl.tracking import default_tracking_uri

        self.config = config
        self.name = name or config.name
        self.tracking_uri = tracking_uri or config.tracking.uri or default_tracking_uri()
        self.resume = resume
        self.parent_run_id = parent_run_id
        self.address = address if address is not None else config.ray.address
        self.print = printer
        self.extra_tags = dict(extra_tags or {})  # e.g. mlflow.parentRunId: nest the search under a benchmark run
        self.trial_seconds: float | None = None
        self._dense_artifact: bytes | None = None  # the dense model exported for side-by-side timing

    # ------------------------------------------------------------------ setup
    def _base_model(self):
        from automl.training import load_checkpoint, train_or_load

        cfg = self.config
        if cfg.model.checkpoint:
            ckpt = load_checkpoint(cfg.model.checkpoint)
            if ckpt.meta["model"] != cfg.model.name:
                raise SearchError(f"checkpoint {cfg.model.checkpoint} holds model '{ckpt.meta['model']}', "
                                  f"but the config names '{cfg.model.name}'")
            return ckpt
        self.print(f"base model: {cfg.model.name} on {cfg.dataset.name} ({cfg.model.train_epochs} epochs; "
                   "cached after the first run)")
        return train_or_load(cfg.model.name, cfg.dataset.name, epochs=cfg.model.train_epochs, seed=cfg.seed,
                             limit=cfg.model.train_limit, data_dir=cfg.dataset.data_dir, progress=self.print)

    def _profile(self):
        cfg = self.config.latency
        from latency_models import DeviceProfile, get_or_build_profile

        if cfg.profile:
            profile = DeviceProfile.load(cfg.profile)
            want = (cfg.runtime, cfg.batch, cfg.threads, cfg.precision)
            have = (profile.runtime, profile.batch, profile.threads, profile.precision)
            if want != have:
                raise SearchError(f"latency.profile {cfg.profile} is for runtime {have[0]} {have[3]}, batch {have[1]}, "
                                  f"{have[2]} thread(s), but the config asks for {want[0]} {want[3]}, batch {want[1]}, "
                                  f"{want[2]} thread(s); build a matching one with 'automl latency profile' or drop "
                                  "latency.profile to use the cached one")
            return profile
        self.print(f"latency profile: {cfg.runtime} {cfg.precision}, batch {cfg.batch}, {cfg.threads} thread(s) "
                   f"(built once per machine, cached)")
        return get_or_build_profile(cfg.runtime, minutes=cfg.profile_minutes, batch=cfg.batch, threads=cfg.threads,
                                    precision=cfg.precision, device=cfg.device, progress=self.print)

    def _calibrated(self, profile, dense: dict[str, float]):
        """The profile predicting at the speed the dense model was just measured at.

        A profile predicts at its build's speed, and this shared machine's speed drifts by 5-10% within
        an hour (docs/benchmarks.md, latency section: torch eager models measured 9% slower 35 minutes
        after a profile build, and the profile's own reference kernels missed it). Every search measures
        the dense model anyway; scaling the in-loop predictions by measured / predicted of that model
        makes absolute budgets (`max_latency_ms`) and the candidates' logged latencies hold for the
        machine as it runs now. A ratio budget is unchanged by it (both sides scale). The factor is logged
        (`latency_calibration`); a profile more than 2x off is used as it is, with a warning."""
        factor = dense["dense_latency_ms"] / dense["dense_latency_ms_predicted"]
        dense["latency_calibration"] = factor
        if not 0.5 <= factor <= 2.0:
            self.print(f"warning: the latency profile predicts the dense model {1 / factor:.2f}x its measured "
                       "latency; rebuild it ('automl latency profile') - in-loop latencies are not calibrated")
            return profile
        self.print(f"in-loop latency predictions calibrated at the dense model: x{factor:.3f}")
        return profile.at_speed(factor)

    def _measure(self, model, input_shape):
        """Measured latency (a LatencyEstimate) on the configured runtime, in a separate process."""
        from latency_models import measure_latency

        cfg = self.config.latency
        return measure_latency(model, input_shape, runtime=cfg.runtime, batch=cfg.batch, threads=cfg.threads,
                               precision=cfg.precision, device=cfg.device)

    def _measure_beside_dense(self, base, model, input_shape):
        """(dense, model) LatencyEstimates timed interleaved in one separate process. The speedup a search
        reports comes from this pair: the dense figure measured at the start of a search can be 15% off by
        its end on a shared machine (two quickstart runs: dense 1.620 and 1.405 ms, the pick 0.670 ms both
        times), a ratio of models timed side by side is not."""
        from latency_models import compare, get_runtime
        from latency_models.measure import example_input

        cfg = self.config.latency
        if self._dense_artifact is None:  # exported once per search (the deployment export takes seconds)
            self._dense_artifact = get_runtime(cfg.runtime).export(
                deployable(base), example_input(input_shape, cfg.batch), cfg.precision)
        return compare([self._dense_artifact, model], input_shape, runtime=cfg.runtime, batch=cfg.batch,
                       threads=cfg.threads, precision=cfg.precision, device=cfg.device)

    def _budget(self, dense_latency_ms: float | None):
        """The config's budget; a ratio budget is of `dense_latency_ms`, the dense model's latency on the
        in-loop predictions' scale."""
        from agents import Budget

        b = self.config.budget
        max_latency = b.max_latency_ms
        if b.max_latency_ratio is not None:
            if dense_latency_ms is None:
                raise SearchError("budget.max_latency_ratio needs a latency profile")
            max_latency = b.max_latency_ratio * dense_latency_ms
        return Budget(max_latency_ms=max_latency, max_mac_ratio=b.max_mac_ratio,
                      max_size_bytes=None if b.max_size_mb is None else b.max_size_mb * 1e6)

    # ------------------------------------------------------------------ main flow
    def run(self) -> SearchResult:
        cfg = self.config
        tracker = SearchTracker(self.tracking_uri, cfg.tracking.experiment)
        if self.parent_run_id:
            tracker.attach_parent(self.parent_run_id)
        elif self.resume:
            tracker.attach_parent(_find_resumable(tracker, self.name))
        else:
            tracker.start_parent(self.name, tags={"automl.model": cfg.model.name, "automl.dataset": cfg.dataset.name,
                                                  "automl.agent": cfg.agent.name, "automl.runtime": cfg.latency.runtime,
                                                  "automl.device": cfg.latency.device or "local",
                                                  **self.extra_tags},
                                 params=cfg.flat_params())
        search_id = tracker.parent_id
        state_dir = state_dir_for(search_id)
        done = tracker.completed_candidates("proxy") if (self.resume or self.parent_run_id) else []
        if tracker.discarded:
            self.print(f"discarded {len(tracker.discarded)} half-written candidate record(s) of the stopped run "
                       f"(deleted in MLflow: {', '.join(tracker.discarded)}); their candidates are evaluated again")
        if done:
            self.print(f"resuming search {search_id}: {len(done)} candidate(s) already evaluated")
        try:
            return self._run(tracker, search_id, state_dir, done)
        except KeyboardInterrupt:
            tracker.finish_parent("interrupted")
            self.print(f"\ninterrupted; resume with: automl search <config> --resume --name {self.name} "
                       f"--tracking-uri {self.tracking_uri}")
            raise
        except BaseException as exc:
            tracker.update_parent_tags({"automl.error": f"{type(exc).__name__}: {exc}"[:4000]})
            tracker.finish_parent("failed")
            raise

    def _run(self, tracker: SearchTracker, search_id: str, state_dir: Path, done: list[dict[str, Any]]) -> SearchResult:
        from agents import CostModel, PredictedLatency
        from automl.data import load_dataset
        from search_spaces import SearchSpace, SpaceConfig, cost_report

        cfg = self.config
        ckpt = self._base_model()
        base = ckpt.model
        meta = ckpt.meta
        splits = load_dataset(cfg.dataset.name, cfg.dataset.data_dir, seed=cfg.seed, limit=cfg.dataset.limit,
                              test_limit=cfg.dataset.test_limit)
        input_shape = splits.input_shape
        space = SearchSpace.from_model(base, cfg.model.name, input_shape, SpaceConfig.from_dict(dict(cfg.space)))
        needs_latency = ("latency_ms" in cfg.objectives or cfg.budget.max_latency_ms is not None
                         or cfg.budget.max_latency_ratio is not None)
        profile = self._profile() if needs_latency else None
        dense_policy = space.dense_policy()
        dense = {"dense_macs": float(cost_report(space, dense_policy).dense_macs),
                 "dense_accuracy": float(meta["test_acc"])}
        if profile is not None:
            from latency_models import predict_policy

            dense["dense_latency_ms_predicted"] = predict_policy(profile, space, dense_policy).ms
            dense["dense_latency_ms"] = self._measure(base, input_shape).ms
            self.print(f"dense {cfg.model.name}: accuracy {100 * dense['dense_accuracy']:.2f}%, latency "
                       f"{dense['dense_latency_ms']:.3f} ms measured / {dense['dense_latency_ms_predicted']:.3f} ms "
                       f"predicted ({cfg.latency.runtime}, batch {cfg.latency.batch}, {cfg.latency.threads} thread)")
            if cfg.latency.calibrate:
                profile = self._calibrated(profile, dense)
        # a ratio budget is of the dense model as the in-loop profile sees it: its measured latency once
        # calibrated at it, its predicted one when not (calibration off, or a profile too far off to trust)
        budget = self._budget(predict_policy(profile, space, dense_policy).ms if profile is not None else None)
        if not done:
            tracker.log_parent_metrics(dense)
            tracker.log_parent_text(cfg.to_yaml(), "config.yaml")
            tracker.log_parent_text(space.to_json(), "search_space.json")
            tracker.update_parent_tags({"automl.budget": json_dumps(_budget_dict(budget))})

        cost_model = CostModel(space, PredictedLatency(profile, space) if profile is not None else None)
        agent = self._agent(state_dir, done, space, budget, cost_model)

        remaining = cfg.candidates - len(done)
        from automl.search.trial import TrialContext, fault_settings_from_env, proxy_subset

        ctx = TrialContext(
            model_name=cfg.model.name,
            model_kwargs={"in_channels": meta["in_channels"], "num_classes": meta["num_classes"],
                          "image_size": meta["image_size"]},
            base_state={k: v.clone() for k, v in base.state_dict().items()},
            splits=proxy_subset(splits, cfg.evaluation.proxy_val_images, cfg.evaluation.calib_batches,
                                finetune_steps=cfg.evaluation.proxy_finetune_steps),
            space=space, profile=profile,
            dense_macs=int(dense["dense_macs"]), calib_batches=cfg.evaluation.calib_batches,
            proxy_finetune_steps=cfg.evaluation.proxy_finetune_steps,
            proxy_finetune_lr=cfg.evaluation.proxy_finetune_lr,
            threads=max(1, int(cfg.ray.cpus_per_trial)), fault=fault_settings_from_env())
        progress = SearchProgress(cfg.candidates, already=len(done), printer=self.print,
                                  best=_best_of(done))
        candidates = list(done)
        if remaining > 0:
            t0 = time.perf_counter()
            baselines = self._baselines(space, budget, cost_model, done)
            candidates += self._run_trials(tracker, agent, ctx, remaining, len(done), state_dir, progress,
                                           baselines)
            seconds = time.perf_counter() - t0
            self.trial_seconds = seconds
            tracker.log_parent_metrics({"trials_seconds": seconds, "candidates_per_minute": 60 * remaining / seconds})
        else:
            self.print("all candidates already evaluated; going straight to fine-tuning")
        warning = proxy_ranking_warning(
            [c["metrics"].get("accuracy", 0.0) for c in candidates if c["status"] == "ok"], int(meta["num_classes"]),
            dense.get("dense_accuracy"), cfg.evaluation.proxy_finetune_steps)
        if warning is not None:
            self.print(warning)
            tracker.update_parent_tags({"automl.warning": warning[len("warning: "):][:5000]})

        finetuned = self._finetune_top_k(tracker, candidates, base, splits, space, profile, state_dir)
        if (state_dir / "latency_pairs.jsonl").is_file():
            tracker.log_parent_file(state_dir / "latency_pairs.jsonl")
        result = self._finish(tracker, search_id, candidates, finetuned, dense)
        return result

    def _agent(self, state_dir: Path, done: list[dict[str, Any]], space, budget, cost_model):
        from agents import make_agent

        cfg = self.config
        pickled = state_dir / "agent.pkl"
        if done and pickled.is_file():
            try:
                return pickle.loads(pickled.read_bytes())
            except Exception as exc:  # an unreadable pickle falls back to replaying MLflow history
                self.print(f"warning: cannot restore the agent state ({exc}); replaying {len(done)} results")
        seed = cfg.seed if cfg.agent.seed is None else cfg.agent.seed
        agent = make_agent(cfg.agent.name, space, budget, cost_model, seed=seed, **cfg.agent.options)
        if done:
            from agents import Observation

            for record in done:
                agent.observe(record["policy"], Observation(metrics=record["metrics"], status=record["status"],
                                                            error=record["error"]))
        return agent

    def _init_ray(self) -> bool:
        """Start an embedded Ray (returns True) or connect to `address` (returns False)."""
        import ray

        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: our own progress only
        cfg = self.config.ray
        if self.address:
            self.print(f"ray: connecting to cluster at {self.address}")
            ray.init(address=self.address, log_to_driver=False)
        else:
            num_cpus = max(1, int(round(cfg.workers * cfg.cpus_per_trial)))
            kwargs: dict[str, Any] = {}
            if os.environ.get("AUTOML_RAY_TMPDIR"):
                kwargs["_temp_dir"] = os.environ["AUTOML_RAY_TMPDIR"]
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=cfg.object_store_mb * 2**20,
                     log_to_driver=False, configure_logging=False, **kwargs)
        return True

    def _baselines(self, space, budget, cost_model, done: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """The configured baselines as (name, policy), each at the budget on the in-loop cost model; those a
        resumed search already evaluated (tagged in the policy's metadata) are not repeated."""
        from search_spaces.baselines import BaselineError, uniform_channel_within

        cfg = self.config
        evaluated = {r["policy"].metadata.get("baseline") for r in done}
        out = []
        for name in cfg.baseline_candidates:
            if name in evaluated:  # the baseline builders name themselves in the metadata
                continue
            if not budget.limits():
                self.print(f"baseline candidate {name}: skipped (no budget to prune to)")
                continue
            try:
                policy = uniform_channel_within(space, lambda p: budget.check(cost_model.costs(p)))
            except BaselineError as exc:  # e.g. the space offers no channel pruning
                self.print(f"baseline candidate {name}: skipped ({exc})")
                continue
            if policy is None:
                self.print(f"baseline candidate {name}: skipped (no uniform channel pruning meets {budget.describe()})")
                continue
            costs = cost_model.costs(policy)
            self.print(f"baseline candidate {name}: MAC ratio {costs['mac_ratio']:.3f}"
                       + (f", predicted {costs['latency_ms']:.3f} ms" if "latency_ms" in costs else "")
                       + " (evaluated first, ranked with the agent's candidates)")
            out.append((name, policy))
        return out

    def _run_trials(self, tracker, agent, ctx, remaining: int, offset: int, state_dir: Path,
                    progress: SearchProgress, baselines: list[tuple[str, Any]] | None = None) -> list[dict[str, Any]]:
        import ray
        from ray import tune

        from automl.search.callbacks import CandidateLogger
        from automl.search.searcher import AgentSearcher
        from automl.search.trial import run_trial

        cfg = self.config
        started = self._init_ray()
        try:
            searcher = AgentSearcher(agent, remaining, state_path=state_dir / "agent.pkl", baselines=baselines)
            logger = CandidateLogger(tracker, offset, progress)
            trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": cfg.ray.cpus_per_trial})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, metric="accuracy", mode="max",
                                            max_concurrent_trials=cfg.ray.workers),
                run_config=tune.RunConfig(name="trials", storage_path=str(state_dir / "ray"), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=cfg.ray.max_retries),
                                          callbacks=[logger], progress_reporter=None),
            )
            with _tune_signal_handlers_restored():
                tuner.fit()
            if len(logger.records) < remaining:
                # Ray Tune handles SIGINT itself: it stops scheduling, checkpoints and returns normally.
                # Fewer finished trials than asked for means the search was interrupted, not done.
                raise KeyboardInterrupt(f"{len(logger.records)} of {remaining} candidates finished")
            return logger.records
        finally:
            if started:
                ray.shutdown()

    def _finetune_top_k(self, tracker, candidates, base, splits, space, profile,
                        state_dir: Path) -> list[dict[str, Any]]:
        cfg = self.config
        k = cfg.evaluation.finetune_top_k
        ok = [c for c in candidates if c["status"] == "ok"]
        if k == 0 or not ok:
            return []
        previous = tracker.completed_candidates("finetuned")  # a resumed search keeps earlier fine-tunes
        already = {r["index"] for r in previous}
        top = sorted(ok, key=lambda c: -c["metrics"].get("accuracy", 0.0))[:k]
        from automl.evaluation import ProxyEvaluator, finetune
        from automl.training import evaluate

        evaluator = ProxyEvaluator(base, splits, val_images=len(splits.x_val),
                                   calib_batches=cfg.evaluation.calib_batches)
        example = splits.x_val[:1]
        out = [{**r, "stage": "finetuned"} for r in previous]
        for rank, cand in enumerate(top):
            if cand["index"] in already:
                continue
            self.print(f"fine-tuning top-{rank + 1} candidate #{cand['index']} "
                       f"({cfg.evaluation.finetune_epochs} epoch(s) on {len(splits.x_train)} images)")
            cand = self._widened(cand, space, profile)
            compressed = evaluator.compress(cand["policy"])
            finetune(compressed, splits, cfg.evaluation.finetune_epochs, lr=cfg.evaluation.finetune_lr, seed=cfg.seed,
                     progress=self.print)
            test_acc = evaluate(compressed.model, splits.x_test, splits.y_test)
            val_acc = evaluate(compressed.model, splits.x_val, splits.y_val)
            metrics = dict(cand["metrics"])
            metrics.update(accuracy=test_acc, finetuned_accuracy=test_acc, val_accuracy=val_acc)
            tags = {"automl.source_candidate": str(cand["index"]), "automl.latency_source": "predicted"}
            artifacts = []
            with tempfile.TemporaryDirectory() as tmp:
                if rank < cfg.latency.measure_top_k and profile is not None:
                    dense_side, measured = self._measure_beside_dense(base, deployable(compressed.model),
                                                                      space.input_shape)
                    metrics["latency_ms_measured"] = measured.ms
                    metrics["latency_ms"] = measured.ms
                    metrics["dense_latency_ms_side_by_side"] = dense_side.ms
                    metrics["speedup_measured"] = dense_side.ms / measured.ms
                    tags["automl.latency_source"] = "measured"
                    # Deploy-verified pairs: `automl latency refit --pairs` refits the profile from them.
                    from latency_models import PairStore, predict_policy

                    pairs = PairStore(state_dir / "latency_pairs.jsonl")
                    pairs.add(predict_policy(profile, space, cand["policy"]), measured, model=cfg.model.name,
                              policy=cand["policy"].to_dict())
                try:
                    from search_spaces.export import export_onnx

                    onnx_path = Path(tmp) / "model.onnx"
                    export_onnx(deployable(compressed.model), example, onnx_path, dynamic_batch=False)
                    artifacts.append(onnx_path)
                except Exception as exc:  # ONNX export failure must not lose the fine-tune result
                    tags["automl.onnx_error"] = f"{type(exc).__name__}: {exc}"[:1000]
                run_id = tracker.log_candidate(index=cand["index"], policy=cand["policy"], metrics=metrics,
                                               stage="finetuned", status="ok", tags=tags, artifacts=artifacts)
            self.print(f"  #{cand['index']}: validation accuracy {100 * val_acc:.2f}%, test accuracy {100 * test_acc:.2f}%"
                       + (f", measured latency {metrics['latency_ms_measured']:.3f} ms"
                          if "latency_ms_measured" in metrics else ""))
            out.append({**cand, "metrics": metrics, "run_id": run_id, "stage": "finetuned"})
        return out

    def _widened(self, cand: dict[str, Any], space, profile) -> dict[str, Any]:
        """`cand` with its channel groups widened to the runtime's whole blocks where the profile predicts it
        free (`latency.widen_free_channels`, `search_spaces.widening`); as it was otherwise."""
        if not (self.config.latency.widen_free_channels and profile is not None and profile.layout_block):
            return cand
        from latency_models import predict_policy
        from search_spaces.widening import widen_free_channels

        policy, steps = widen_free_channels(cand["policy"], space, lambda p: predict_policy(profile, space, p).ms,
                                            int(profile.layout_block))
        if not steps:
            return cand
        self.print(f"  #{cand['index']}: kept channels widened to whole blocks of {profile.layout_block} where the "
                   "profile predicts them free: " + ", ".join(f"{s.layer} {s.kept_before}->{s.kept_after}"
                                                              for s in steps))
        return {**cand, "policy": policy, "metrics": {**cand["metrics"], "widened_groups": len(steps)}}

    def _best_finetuned(self, finetuned: list[dict[str, Any]]) -> dict[str, Any]:
        """The fine-tuned candidate to recommend: the most accurate on the *validation* split (choosing on
        the test split would report the winner of a contest judged on the numbers it reports: its test
        accuracy would be biased upwards), among those whose measured latency meets the budget where it was
        measured (the in-loop prediction chose them; the runtime decides)."""
        fits = [c for c in finetuned if measured_within_budget(c["metrics"], self.config.budget) is not False]
        if not fits:
            fits = finetuned
            self.print("warning: no fine-tuned candidate meets the latency budget when measured; the best one "
                       "is over budget (tighten the in-loop budget or re-profile the device)")
        return max(fits, key=lambda c: c["metrics"].get("val_accuracy", c["metrics"].get("accuracy", 0.0)))

    def _finish(self, tracker, search_id, candidates, finetuned, dense) -> SearchResult:
        ok = [c for c in candidates if c["status"] == "ok"]
        points = [(c["metrics"].get("accuracy", 0.0), c["metrics"].get("latency_ms", c["metrics"].get("mac_ratio")),
                   c) for c in ok]
        front = pareto_front(points)
        best = None
        if finetuned:
            best = self._best_finetuned(finetuned)
        elif ok:
            best = max(ok, key=lambda c: c["metrics"].get("accuracy", 0.0))
        if best is not None:
            tracker.log_parent_text(best["policy"].to_json(), "best_policy.json")
            tracker.log_parent_metrics({"best_accuracy": best["metrics"]["accuracy"],
                                        "best_latency_ms": best["metrics"].get("latency_ms"),
                                        "candidates_done": len(candidates)})
            tracker.update_parent_tags({"automl.best_run_id": best.get("run_id", ""),
                                        "automl.best_stage": best.get("stage", "proxy")})
        lines = ["candidate,run_id,accuracy,latency_ms,mac_ratio,size_bytes"]
        for acc, _, c in front:
            m = c["metrics"]
            lines.append(f"{c['index']},{c.get('run_id', '')},{acc},{m.get('latency_ms', '')},{m.get('mac_ratio', '')},"
                         f"{m.get('size_bytes', '')}")
        tracker.log_parent_text("\n".join(lines) + "\n", "pareto.csv")
        if points:
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_pareto(points, front, Path(tmp) / "pareto.png",
                                  xlabel="latency (ms)" if ok and "latency_ms" in ok[0]["metrics"] else "MAC ratio",
                                  dense=(dense.get("dense_accuracy"), dense.get("dense_latency_ms")))
                tracker.log_parent_file(png)
        tracker.finish_parent("finished")
        return SearchResult(search_id=search_id, tracking_uri=self.tracking_uri,
                            experiment_id=tracker.experiment_id, candidates=candidates, finetuned=finetuned,
                            best=best, dense=dense, trial_seconds=self.trial_seconds)


def deployable(model):
    """The float model a runtime executes: simulated quantization stripped (int8 is a runtime precision)."""
    import copy

    try:
        from search_spaces.quantization import strip_fake_quant
    except ImportError:
        return model
    return strip_fake_quant(copy.deepcopy(model))


def measured_within_budget(metrics: dict[str, Any], budget) -> bool | None:
    """Whether a candidate's *measured* latency meets the configured latency budget: `max_latency_ms` on the
    measured milliseconds, `max_latency_ratio` on the measured latency over the dense model's timed beside
    it. None when it was not measured or the budget has no latency bound."""
    measured = metrics.get("latency_ms_measured")
    if measured is None:
        return None
    verdicts = []
    if budget.max_latency_ms is not None:
        verdicts.append(measured <= budget.max_latency_ms)
    dense = metrics.get("dense_latency_ms_side_by_side")
    if budget.max_latency_ratio is not None and dense:
        verdicts.append(measured / dense <= budget.max_latency_ratio)
    return all(verdicts) if verdicts else None


def _best_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in records if r["status"] == "ok"]
    return max(ok, key=lambda r: r["metrics"].get("accuracy", 0.0)) if ok else None


def _budget_dict(budget) -> dict[str, Any]:
    return {k: getattr(budget, k, None) for k in ("max_latency_ms", "max_mac_ratio", "max_size_bytes")}


def run_search(config: SearchConfig, **kwargs: Any) -> SearchResult:
    """Python API: the same as `automl search`."""
    return SearchRunner(config, **kwargs).run()

