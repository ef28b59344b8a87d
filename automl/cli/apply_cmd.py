"""`automl apply`: turn a policy JSON into a compressed model file (and optionally ONNX / int8 ONNX, and the
artifact of a latency runtime such as sparse-cpu, with which layers run on which sparse kernel)."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

from automl.cli.base import Command, CommandError, print_json, print_table


class ApplyCommand(Command):
    description = ("Apply a compression policy (JSON) to a trained checkpoint: validate it against the model, "
                   "prune / quantize, optionally fine-tune with the masks kept, save the compressed model and "
                   "optionally export ONNX (and int8 ONNX for the policy's 8-bit layers) and the artifact a "
                   "latency runtime runs (--runtime sparse-cpu: the model converted to the sparse kernels, with "
                   "the layers on each kernel). Prints MACs, params, size and accuracy before and after.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("policy", help="policy JSON file (CompressionPolicy with schema_version)")
        parser.add_argument("--checkpoint", required=True, help="checkpoint from 'automl train'")
        parser.add_argument("--out", required=True, help="output folder (model.pt, policy.json, report.json, *.onnx)")
        parser.add_argument("--onnx", action="store_true", help="also export model.onnx (float, BN folded)")
        parser.add_argument("--int8", action="store_true",
                            help="also write model.int8.onnx: onnxruntime static int8 for the layers whose "
                                 "policy says weight_bits=8 (all layers if none says so); implies --onnx")
        parser.add_argument("--runtime", default=None, metavar="NAME",
                            help="also write the artifact this latency runtime runs, model.NAME<suffix> "
                                 "(sparse-cpu: model.sparse-cpu.pt, the masked model converted to the sparse "
                                 "kernels; the report says which layers run on which kernel and which stay "
                                 "dense)")
        parser.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune epochs (masks kept)")
        parser.add_argument("--finetune-lr", type=float, default=0.01)
        parser.add_argument("--limit", type=int, default=None, help="use only this many training images")
        parser.add_argument("--test-limit", type=int, default=None, help="evaluate on this many test images")
        parser.add_argument("--calib-size", type=int, default=256, help="calibration images (quantization)")
        parser.add_argument("--data-dir", default=None, help="folder with the dataset files")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--format", choices=("text", "json"), default="text")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from automl.data import DatasetError, load_dataset
        from automl.models import count_macs
        from automl.policy import CompressionPolicy, PolicyError
        from automl.training import TrainConfig, evaluate, load_checkpoint, train_epochs

        if args.finetune_epochs < 0:
            raise CommandError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
        try:
            policy = CompressionPolicy.load(args.policy)
        except PolicyError as exc:
            raise CommandError(f"bad policy {args.policy}: {exc}") from exc
        runtime = _check_runtime(args.runtime, policy) if args.runtime else None
        try:
            ckpt = load_checkpoint(args.checkpoint)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(f"cannot load checkpoint {args.checkpoint}: {exc}") from exc
        meta = ckpt.meta
        if policy.model != meta["model"]:
            raise CommandError(f"the policy is for model '{policy.model}' but the checkpoint holds "
                               f"'{meta['model']}'; write the policy for '{meta['model']}'")
        try:
            splits = load_dataset(meta["dataset"], args.data_dir, seed=args.seed, limit=args.limit,
                                  test_limit=args.test_limit)
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc

        from search_spaces import SchemeError, apply_policy

        torch.manual_seed(args.seed)
        dense = ckpt.model.eval()
        input_shape = splits.input_shape
        example = splits.x_test[:1]
        calib = splits.x_train[:args.calib_size]
        t0 = time.perf_counter()
        before = count_macs(dense, input_shape)
        acc_before = evaluate(dense, splits.x_test, splits.y_test)
        try:
            compressed = apply_policy(dense, policy, example, calib=calib)
        except (SchemeError, PolicyError) as exc:
            raise CommandError(f"policy does not fit the model: {exc}") from exc
        model = compressed.model
        acc_applied = evaluate(model, splits.x_test, splits.y_test)
        acc_final = acc_applied
        if args.finetune_epochs:
            config = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=args.seed,
                                 **{k: v for k, v in meta.get("train_config", {}).items()
                                    if k in ("batch_size", "optimizer", "momentum", "weight_decay", "augment")})
            train_epochs(model, splits.x_train, splits.y_train, config, after_step=compressed.reapply_masks,
                         label="finetune")
            acc_final = evaluate(model, splits.x_test, splits.y_test)
        after = count_macs(model, input_shape)
        cost = _policy_cost(dense, policy, meta["model"], input_shape)

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        policy.save(out / "policy.json")
        torch.save({"model": model, "policy": policy.to_dict(), "meta": meta,
                    "masks": {k: v.bool() for k, v in compressed.masks.items()}}, out / "model.pt")
        files = {"model": str(out / "model.pt"), "policy": str(out / "policy.json")}
        acc_int8 = None
        if args.onnx or args.int8:
            from search_spaces.export import (
                export_onnx,
                layers_at_8_bits,
                quantize_onnx_int8,
                run_onnx,
            )

            exported = export_onnx(model, example, out / "model.onnx")
            files["onnx"] = str(exported.path)
            if args.int8:
                names = [lc for lc in cost["layer_names"]]
                eight = layers_at_8_bits(policy, names)
                int8 = quantize_onnx_int8(exported.path, calib, out / "model.int8.onnx", layers=eight or None)
                files["onnx_int8"] = str(int8)
                logits = run_onnx(int8, splits.x_test)
                acc_int8 = float((logits.argmax(1) == splits.y_test).float().mean())
        runtime_report = None
        if runtime is not None:
            runtime_report = _export_for_runtime(runtime, model.eval(), example, splits.x_test[:8], out,
                                                 cost["layer_names"])
            files[f"runtime:{runtime.name}"] = runtime_report["file"]
        report = {
            "model": meta["model"], "dataset": meta["dataset"], "test_images": len(splits.x_test),
            "macs_before": before.total, "macs_after": after.total, "mac_ratio_physical": after.total / before.total,
            "effective_mac_ratio": cost["mac_ratio"], "params_before": before.params, "params_after": after.params,
            "size_bytes_before": cost["dense_size_bytes"], "size_bytes_after": cost["size_bytes"],
            "acc_before": acc_before, "acc_applied": acc_applied, "acc_finetuned": acc_final if args.finetune_epochs
            else None, "acc_int8_onnx": acc_int8, "finetune_epochs": args.finetune_epochs,
            "seconds": round(time.perf_counter() - t0, 1), "files": files,
        }
        if runtime_report is not None:
            report["runtime"] = runtime_report
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if args.format == "json":
            print_json(report)
        else:
            rows = [
                {"": "MACs", "before": before.total, "after": after.total,
                 "note": f"effective (sparse) ratio {cost['mac_ratio']:.3f}"},
                {"": "params", "before": before.params, "after": after.params, "note": ""},
                {"": "size (bytes)", "before": cost["dense_size_bytes"], "after": cost["size_bytes"],
                 "note": "by the policy's encoding and bit-widths"},
                {"": "accuracy", "before": f"{100 * acc_before:.2f}%", "after": f"{100 * acc_final:.2f}%",
                 "note": (f"{100 * acc_applied:.2f}% before fine-tune" if args.finetune_epochs else "no fine-tune")
                 + (f"; int8 ONNX {100 * acc_int8:.2f}%" if acc_int8 is not None else "")},
            ]
            print_table(rows, ["", "before", "after", "note"])
            if runtime_report is not None and runtime_report.get("layers"):
                print(f"\n{runtime.name}: {runtime_report['summary']}")
                print_table([{"layer": name, **{k: v for k, v in row.items() if k != "n"}}
                             for name, row in runtime_report["layers"].items()],
                            ["layer", "kernel", "sparsity", "why"])
            print(f"wrote {', '.join(files.values())}")
        return 0


def _policy_cost(model, policy, model_name: str, input_shape) -> dict:
    from search_spaces import SearchSpace, cost_report

    space = SearchSpace.from_model(model, model_name, input_shape)
    rep, dense = cost_report(space, policy), cost_report(space, space.dense_policy())
    return {"mac_ratio": rep.mac_ratio, "size_bytes": rep.size_bytes, "dense_size_bytes": dense.size_bytes,
            "layer_names": space.layer_names()}


def _check_runtime(name: str, policy) -> Any:
    """The registered runtime `name`, or a one-line CommandError for a name or combination that cannot work.

    sparse-cpu runs float32 kernels and replaces the layers it converts, so a fake-quantized layer would
    silently lose its quantization there: a policy with bit-widths is refused instead.
    """
    from latency_models.runtimes import RuntimeError_, get_runtime

    try:
        runtime = get_runtime(name)
    except RuntimeError_ as exc:
        raise CommandError(f"--runtime: {exc}") from exc
    if runtime.name == "sparse-cpu":
        decisions = [("default", policy.default), *policy.layers.items()]
        quantized = [n for n, d in decisions if d.weight_bits is not None or d.act_bits is not None]
        if quantized:
            raise CommandError(f"--runtime sparse-cpu runs float32 kernels, but the policy sets weight_bits/"
                               f"act_bits on {', '.join(quantized[:3])}{' ...' if len(quantized) > 3 else ''}; "
                               "drop the bit-widths for this runtime (or use --int8 for onnxruntime)")
    return runtime


def _export_for_runtime(runtime, model, example, check_input, out: Path, layer_names: list[str]) -> dict:
    """Write the runtime's artifact; for sparse-cpu, read it back and report kernel per layer + output error.

    The artifact is exactly what `runtime.export` produces (what the latency of the runtime was measured
    on), and the report is read from the artifact itself, so it shows what will run.
    """
    import torch

    from latency_models.runtimes import RuntimeError_

    try:
        artifact = runtime.export(model, example, "fp32")
    except RuntimeError_ as exc:
        raise CommandError(str(exc)) from exc
    path = out / f"model.{runtime.name}{runtime.suffix}"
    path.write_bytes(artifact)
    report: dict[str, Any] = {"name": runtime.name, "file": str(path)}
    if runtime.name != "sparse-cpu":
        return report
    from latency_models.sparse_kernels.modules import SparseConv2d, SparseLinear, plan_layer

    converted = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=False).eval()
    with torch.no_grad():
        ref, got = model(check_input), converted(check_input)
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    swapped = {name: m for name, m in converted.named_modules() if isinstance(m, SparseConv2d | SparseLinear)}
    layers: dict[str, dict[str, Any]] = {}
    for name in layer_names:
        weight = model.get_submodule(name).weight
        zeros = round(float((weight == 0).sum()) / max(1, weight.numel()), 4)
        action, n, why = plan_layer(model.get_submodule(name))
        if name in swapped:
            n = swapped[name].n
            kernel = f"sparse N={n}" + (" (depthwise)" if action == "depthwise" else "")
            layers[name] = {"kernel": kernel, "n": n, "sparsity": zeros, "why": why}
        else:
            layers[name] = {"kernel": "dense", "n": None, "sparsity": zeros, "why": why}
    counts: dict[str, int] = {}
    for row in layers.values():
        counts[row["kernel"]] = counts.get(row["kernel"], 0) + 1
    report.update(layers=layers, max_rel_err=rel,
                  summary=", ".join(f"{c} on {k}" for k, c in sorted(counts.items())) +
                  f"; outputs vs the masked model: max rel. error {rel:.1e}")
    return report
