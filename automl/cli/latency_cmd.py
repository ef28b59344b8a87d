"""`automl latency measure | profile | predict | refit`: measured and predicted latency, always labelled.

Every figure printed names its source (measured / predicted), device, runtime, batch, threads and precision.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from automl.cli.base import Command, CommandError, print_json


def _input_spec(dataset: str) -> tuple[int, int, int, int]:
    from automl.data import DatasetError, dataset_info

    try:
        info = dataset_info(dataset)
    except DatasetError as exc:
        raise CommandError(str(exc)) from exc
    return info.in_channels, info.image_size, info.image_size, info.num_classes


def _load_model(args: argparse.Namespace):
    """The model to time: a checkpoint, or a zoo model (random weights: latency does not depend on them)."""
    from automl.models import ModelError, build_model

    c, h, w, classes = _input_spec(args.dataset)
    if getattr(args, "checkpoint", None):
        from automl.training import load_checkpoint

        try:
            ckpt = load_checkpoint(args.checkpoint)
        except (FileNotFoundError, KeyError) as exc:
            raise CommandError(f"cannot load checkpoint: {exc}") from exc
        return ckpt.meta["model"], ckpt.model, (ckpt.meta["in_channels"], ckpt.meta["image_size"],
                                                ckpt.meta["image_size"])
    if not args.model:
        raise CommandError("name a model (--model resnet20) or a checkpoint (--checkpoint PATH)")
    try:
        return args.model, build_model(args.model, c, classes, h), (c, h, w)
    except ModelError as exc:
        raise CommandError(str(exc)) from exc


def _load_policy(path: str | None, model_name: str):
    if not path:
        return None
    from automl.policy import CompressionPolicy, PolicyError

    try:
        policy = CompressionPolicy.load(path)
    except PolicyError as exc:
        raise CommandError(f"policy {path}: {exc}") from exc
    if policy.model != model_name:
        print(f"note: policy was written for '{policy.model}', applying it to '{model_name}'", file=sys.stderr)
    return policy


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LatencyCommand(Command):
    description = ("Latency on the runtime that will run the model: measure it (locally or on a device agent), "
                   "build a device profile, predict from a profile, refit a profile from measured pairs.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        m = sub.add_parser("measure", help="time a (compressed) model in a separate process")
        self._model_args(m)
        m.add_argument("--checkpoint", help="time this trained checkpoint instead of --model")
        self._runtime_args(m)
        m.add_argument("--device", help="time on a device agent, e.g. http://192.168.1.7:8765")
        m.add_argument("--warmup", type=int, default=20)
        m.add_argument("--repeats", type=int, default=100)
        m.add_argument("--format", choices=("text", "json"), default="text")

        p = sub.add_parser("profile", help="measure kernel samples and fit a device profile")
        self._runtime_args(p)
        p.add_argument("--device", help="profile a device agent instead of this machine")
        p.add_argument("--minutes", type=float, default=1.5, help="time budget for measuring (default 1.5)")
        p.add_argument("--out", required=True, help="where to write the profile JSON (e.g. profiles/NAME.json)")
        p.add_argument("--samples", help="side file of measured samples (default OUT.samples.jsonl); reused on rerun")
        p.add_argument("--seed", type=int, default=0)

        q = sub.add_parser("predict", help="predict a model's latency from a profile (no measurement)")
        q.add_argument("--profile", required=True)
        self._model_args(q)
        q.add_argument("--force", action="store_true", help="use a profile from another machine anyway")
        q.add_argument("--calibrate", action="store_true",
                       help="measure the dense model now (a few seconds, in a separate process; on the profile's "
                            "device agent if it was built on one) and scale the prediction by its measured / "
                            "predicted latency, as a search does: the machine's speed drifts after a profile's build")
        q.add_argument("--format", choices=("text", "json"), default="text")

        r = sub.add_parser("refit", help="recalibrate a profile from predicted-vs-measured pairs (JSON lines)")
        r.add_argument("--profile", required=True)
        r.add_argument("--pairs", required=True, help="pairs.jsonl written by a search or `PairStore`")
        r.add_argument("--out", help="write the refitted profile here (default: overwrite --profile)")
        r.add_argument("--force", action="store_true")

    @staticmethod
    def _model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="zoo model name or package.module:factory")
        p.add_argument("--policy", help="compression policy JSON to apply first")
        p.add_argument("--dataset", default="fashion-mnist", help="input size and classes (default fashion-mnist)")

    @staticmethod
    def _runtime_args(p: argparse.ArgumentParser) -> None:
        from latency_models.runtimes import RUNTIMES

        p.add_argument("--runtime", default="onnxruntime", choices=sorted(RUNTIMES))
        p.add_argument("--batch", type=int, default=1)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")

    def run(self, args: argparse.Namespace) -> int:
        return getattr(self, f"_{args.action}")(args)

    # ------------------------------------------------------------------ actions
    def _measure(self, args: argparse.Namespace) -> int:
        import torch

        from latency_models import AgentError, MeasurementError, RuntimeError_, measure_latency

        name, model, shape = _load_model(args)
        policy = _load_policy(args.policy, name)
        if policy is not None:
            from search_spaces import apply_policy

            try:
                model = apply_policy(model, policy, torch.zeros(1, *shape)).model
            except ValueError as exc:
                raise CommandError(f"the policy does not fit {name}: {exc}") from exc
        try:
            est = measure_latency(model, shape, runtime=args.runtime, batch=args.batch, threads=args.threads,
                                  precision=args.precision, warmup=args.warmup, repeats=args.repeats,
                                  device=args.device)
        except (MeasurementError, AgentError, RuntimeError_) as exc:
            raise CommandError(str(exc)) from exc
        if args.format == "json":
            print_json({"model": name, "policy": args.policy, **est.to_dict()})
        else:
            print(f"{name}{' + ' + args.policy if args.policy else ''}: {est}")
        return 0

    def _profile(self, args: argparse.Namespace) -> int:
        from latency_models import AgentError, build_profile

        samples = args.samples or args.out + ".samples.jsonl"
        try:
            profile = build_profile(args.runtime, minutes=args.minutes, batch=args.batch, threads=args.threads,
                                    precision=args.precision, device=args.device, samples_path=samples,
                                    progress=_progress, seed=args.seed)
        except AgentError as exc:
            raise CommandError(str(exc)) from exc
        profile.save(args.out)
        summary = profile.summary()
        print_json({"profile": args.out, **summary, "align_gain": profile.align_gain})
        return 0

    def _predict(self, args: argparse.Namespace) -> int:
        from latency_models import DeviceProfile, ProfileError
        from latency_models.profile import policy_kernels

        try:
            profile = DeviceProfile.load(args.profile, force=args.force)
        except ProfileError as exc:
            raise CommandError(str(exc)) from exc
        name, model, shape = _load_model(args)
        from search_spaces import SearchSpace

        space = SearchSpace.from_model(model, name, shape)
        policy = _load_policy(args.policy, name) or space.dense_policy()
        try:  # as `measure` and `apply` do: an unknown layer or a decision that does not fit is an error
            space.validate(policy if policy.model == name else replace(policy, model=name))
        except ValueError as exc:
            raise CommandError(f"the policy does not fit {name}: {exc}") from exc
        calibration = None
        try:
            if args.calibrate:
                profile, calibration = _calibrated(profile, space, model, shape)
            kernels = policy_kernels(space, policy)
            est = profile.predict_kernels(kernels)
        except (ValueError, KeyError) as exc:
            raise CommandError(str(exc)) from exc
        t0 = time.perf_counter()
        n = 200
        for _ in range(n):
            profile.predict_kernels(policy_kernels(space, policy))
        per_call_ms = (time.perf_counter() - t0) / n * 1e3
        out: dict[str, Any] = {"model": name, "policy": args.policy, **est.to_dict(),
                               "kernels": len(kernels), "prediction_cost_ms": round(per_call_ms, 4),
                               "profile_preferred_align": profile.preferred_align}
        if calibration is not None:
            out["calibration"] = calibration
        if args.format == "json":
            print_json(out)
        else:
            print(f"{name}{' + ' + args.policy if args.policy else ''}: {est}")
            if calibration is not None:
                print(f"  calibrated at the dense model: {calibration['dense_measured_ms']:.3f} ms measured / "
                      f"{calibration['dense_predicted_ms']:.3f} ms predicted -> x{calibration['factor']:.3f}")
            print(f"  {len(kernels)} kernels; {per_call_ms:.3f} ms per prediction (after load); "
                  f"profile prefers channel counts in multiples of {profile.preferred_align}")
        return 0

    def _refit(self, args: argparse.Namespace) -> int:
        from latency_models import DeviceProfile, PairStore, ProfileError
        from latency_models.profile import refit_from_pairs

        try:
            profile = DeviceProfile.load(args.profile, force=args.force)
            pairs = PairStore(args.pairs).read()
            if not pairs:
                raise ProfileError(f"no pairs in {args.pairs}")
            report = refit_from_pairs(profile, pairs)
        except ProfileError as exc:
            raise CommandError(str(exc)) from exc
        out = args.out or args.profile
        profile.save(out)
        print_json({"profile": out, **report})
        return 0


def _calibrated(profile: Any, space: Any, model: Any, shape: Any) -> tuple[Any, dict[str, float]]:
    """`profile` at the speed the dense `model` measures at now (`DeviceProfile.at_speed`), and the figures."""
    from latency_models import AgentError, MeasurementError, RuntimeError_, measure_latency
    from latency_models.profile import policy_kernels

    predicted = profile.predict_kernels(policy_kernels(space, space.dense_policy())).ms
    try:
        measured = measure_latency(model, shape, runtime=profile.runtime, batch=profile.batch,
                                   threads=profile.threads, precision=profile.precision,
                                   device=profile.device_url).ms
    except (MeasurementError, AgentError, RuntimeError_) as exc:
        raise CommandError(f"--calibrate could not measure the dense model: {exc}") from exc
    factor = measured / predicted
    return profile.at_speed(factor), {"dense_measured_ms": round(measured, 6), "dense_predicted_ms": round(predicted, 6),
                                      "factor": round(factor, 6)}
