"""`automl apply`: turn a policy JSON into a compressed model file (and optionally ONNX / int8 ONNX)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from automl.cli.base import Command, CommandError, print_json, print_table


class ApplyCommand(Command):
    description = ("Apply a compression policy (JSON) to a trained checkpoint: validate it against the model, "
                   "prune / quantize, optionally fine-tune with the masks kept, save the compressed model and "
                   "optionally export ONNX (and int8 ONNX for the policy's 8-bit layers). Prints MACs, params, "
                   "size and accuracy before and after.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("policy", help="policy JSON file (CompressionPolicy with schema_version)")
        parser.add_argument("--checkpoint", required=True, help="checkpoint from 'automl train'")
        parser.add_argument("--out", required=True, help="output folder (model.pt, policy.json, report.json, *.onnx)")
        parser.add_argument("--onnx", action="store_true", help="also export model.onnx (float, BN folded)")
        parser.add_argument("--int8", action="store_true",
                            help="also write model.int8.onnx: onnxruntime static int8 for the layers whose "
                                 "policy says weight_bits=8 (all layers if none says so); implies --onnx")
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
        report = {
            "model": meta["model"], "dataset": meta["dataset"], "test_images": len(splits.x_test),
            "macs_before": before.total, "macs_after": after.total, "mac_ratio_physical": after.total / before.total,
            "effective_mac_ratio": cost["mac_ratio"], "params_before": before.params, "params_after": after.params,
            "size_bytes_before": cost["dense_size_bytes"], "size_bytes_after": cost["size_bytes"],
            "acc_before": acc_before, "acc_applied": acc_applied, "acc_finetuned": acc_final if args.finetune_epochs
            else None, "acc_int8_onnx": acc_int8, "finetune_epochs": args.finetune_epochs,
            "seconds": round(time.perf_counter() - t0, 1), "files": files,
        }
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
            print(f"wrote {', '.join(files.values())}")
        return 0


def _policy_cost(model, policy, model_name: str, input_shape) -> dict:
    from search_spaces import SearchSpace, cost_report

    space = SearchSpace.from_model(model, model_name, input_shape)
    rep, dense = cost_report(space, policy), cost_report(space, space.dense_policy())
    return {"mac_ratio": rep.mac_ratio, "size_bytes": rep.size_bytes, "dense_size_bytes": dense.size_bytes,
            "layer_names": space.layer_names()}
