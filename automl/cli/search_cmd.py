"""`automl search CONFIG.yaml`: run a compression search on Ray, tracked in MLflow."""

from __future__ import annotations

import argparse
import os

from automl.cli.base import Command, CommandError


class SearchCommand(Command):
    description = ("Run a compression search: an agent proposes per-layer policies, Ray Tune trials evaluate them "
                   "(proxy accuracy, MACs, size, predicted latency), the top-k are fine-tuned and their latency "
                   "measured on the target runtime. Every candidate is an MLflow run.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="experiment YAML (see experiments/quickstart.yaml)")
        parser.add_argument("--address", default=None,
                            help="Ray cluster address (e.g. 127.0.0.1:6379); default: embedded local Ray")
        parser.add_argument("--tracking-uri", default=None,
                            help="MLflow tracking URI; default: the config's, else sqlite in $AUTOML_HOME")
        parser.add_argument("--name", default=None, help="search name (default: the config's name)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the latest unfinished search with this name; finished candidates are kept")
        parser.add_argument("--parent-run-id", default=None,
                            help="continue into this MLflow parent run (used by the HTTP service)")
        parser.add_argument("--candidates", type=int, default=None, help="override the config's candidate count")
        parser.add_argument("--format", choices=("text", "json"), default="text")

    def run(self, args: argparse.Namespace) -> int:
        from automl.cli.base import print_json
        from automl.search import ConfigError, SearchConfig, SearchError, run_search

        try:
            config = SearchConfig.from_yaml(args.config)
            if args.candidates is not None:
                config = SearchConfig.from_dict({**config.model_dump(), "candidates": args.candidates})
        except ConfigError as exc:
            raise CommandError(str(exc)) from exc
        from agents import BudgetError
        from automl.data import DatasetError
        from automl.models import ModelError
        from automl.policy import PolicyError

        if args.resume or args.parent_run_id:  # reading the logged candidates back: no progress bar per policy
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            result = run_search(config, tracking_uri=args.tracking_uri, name=args.name, resume=args.resume,
                                parent_run_id=args.parent_run_id, address=args.address)
        except (SearchError, BudgetError, DatasetError, ModelError, PolicyError, ConfigError) as exc:
            raise CommandError(str(exc)) from exc
        summary = summarize(result)
        if args.format == "json":
            print_json(summary)
        else:
            print(format_summary(summary))
        return 0


def summarize(result) -> dict:
    best = result.best
    out = {"search_id": result.search_id, "tracking_uri": result.tracking_uri,
           "candidates": len(result.candidates),
           "failed": sum(1 for c in result.candidates if c["status"] != "ok"), "dense": result.dense}
    if best is not None:
        m = best["metrics"]
        out["best"] = {"candidate": best["index"], "run_id": best.get("run_id"), "stage": best.get("stage", "proxy"),
                       "accuracy": m.get("accuracy"), "val_accuracy": m.get("val_accuracy"),
                       "latency_ms": m.get("latency_ms"),
                       "latency_source": "measured" if "latency_ms_measured" in m else "predicted",
                       "mac_ratio": m.get("mac_ratio"), "size_bytes": m.get("size_bytes"),
                       "speedup_measured": m.get("speedup_measured"),
                       "policy": best["policy"].to_dict()}
    out["mlflow_ui"] = mlflow_ui_command(result.tracking_uri)
    return out


def mlflow_ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def format_summary(s: dict) -> str:
    from agents.base import LayerActions

    lines = [f"search {s['search_id']}: {s['candidates']} candidates ({s['failed']} failed)"]
    dense = s.get("dense", {})
    if "dense_latency_ms" in dense:
        lines.append(f"dense model: accuracy {100 * dense['dense_accuracy']:.2f}%, "
                     f"latency {dense['dense_latency_ms']:.3f} ms (measured)")
    best = s.get("best")
    if best:
        lat = f"{best['latency_ms']:.3f} ms ({best['latency_source']})" if best.get("latency_ms") is not None else "n/a"
        acc = f"accuracy {100 * best['accuracy']:.2f}%"
        if best.get("val_accuracy") is not None:  # fine-tuned: chosen on validation, reported on test
            acc = (f"test accuracy {100 * best['accuracy']:.2f}% (chosen on validation accuracy "
                   f"{100 * best['val_accuracy']:.2f}%)")
        lines.append(f"best policy (candidate #{best['candidate']}, {best['stage']}): {acc}, latency {lat}, "
                     f"MACs {100 * (best['mac_ratio'] or 0):.1f}% of dense")
        if best.get("speedup_measured"):
            lines.append(f"speedup over dense: {best['speedup_measured']:.2f}x (measured: the dense model and the "
                         "policy timed side by side in one process)")
        elif "dense_latency_ms" in dense and best.get("latency_ms"):
            lines.append(f"speedup over dense: {dense['dense_latency_ms'] / best['latency_ms']:.2f}x")
        lines.append("per-layer decisions:")
        for name, d in best["policy"]["layers"].items():
            extras = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in d.items() if k != "scheme")
            if LayerActions.has_sparsity(d) and "sparsity" not in d:  # JSON omits a zero sparsity
                extras = "sparsity=0 (unpruned)" + (f", {extras}" if extras else "")
            lines.append(f"  {name:32s} {d['scheme']:14s} {extras}")
    else:
        lines.append("no candidate succeeded")
    lines.append(f"MLflow run: {best['run_id'] if best else s['search_id']}")
    lines.append(f"inspect it:  {s['mlflow_ui']}   then open http://127.0.0.1:5000")
    return "\n".join(lines)
