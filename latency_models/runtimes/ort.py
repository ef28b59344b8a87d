"""onnxruntime: the default deployment runtime (fp32, and int8 as static QDQ with u8 activations / s8 weights).

Sessions pin `intra_op_num_threads` and disable spinning: onnxruntime and torch fight over cores in one
process (GUIDE §2), and spinning threads would steal time from whatever else runs on a 2-core machine.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from latency_models.runtimes.base import Runtime, RuntimeError_


def export_onnx_bytes(model: Any, example_input: Any, deploy: bool = True) -> bytes:
    """ONNX bytes of `model`. deploy=True uses `search_spaces.export.export_onnx` when it exists, so what
    is timed is what ships; deploy=False (or no such exporter) uses the TorchScript exporter: ~20 ms for a
    small model instead of ~3 s for dynamo, and the same kernels once onnxruntime has fused the graph.
    """
    export_onnx = None
    if deploy:
        try:  # the compression engine's exporter
            from search_spaces.export import export_onnx  # type: ignore[import-not-found]
        except ImportError:
            export_onnx = None
    if export_onnx is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, example_input, path)
            return path.read_bytes()
    import torch

    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input,), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return buf.getvalue()


def quantize_int8_bytes(onnx_bytes: bytes, example_input: Any, deploy: bool = True) -> bytes:
    """Static int8 QDQ, per-channel, activations u8 / weights s8 (the only int8 layout faster than fp32 here).

    Calibration uses the example input: activation ranges change accuracy, not latency.
    """
    quantize_onnx_int8 = None
    if deploy:
        try:
            from search_spaces.export import quantize_onnx_int8  # type: ignore[import-not-found]
        except ImportError:
            quantize_onnx_int8 = None
    import numpy as np

    calib = [np.asarray(example_input.detach().numpy() if hasattr(example_input, "detach") else example_input,
                        dtype=np.float32)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        if quantize_onnx_int8 is not None:
            import torch

            quantize_onnx_int8(src, torch.as_tensor(calib[0]), dst)
        else:
            from onnxruntime.quantization import (
                CalibrationDataReader,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            class _Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter([{"input": c} for c in calib])

                def get_next(self):
                    return next(self._it, None)

            import logging

            logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns through the root logger
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=True, reduce_range=True)
        return dst.read_bytes()


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    precisions = ("fp32", "int8")
    suffix = ".onnx"
    blocked_layout_precisions = ("fp32",)

    #: "deploy": the compression engine's exporter when present (what ships); "fast": TorchScript export
    exporter: str = "deploy"

    def __init__(self, exporter: str = "deploy"):
        if exporter not in ("deploy", "fast"):
            raise RuntimeError_(f"exporter must be 'deploy' or 'fast', got {exporter!r}")
        self.exporter = exporter

    def export(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """ONNX of the model (the exporter chosen at construction); int8 always through the shipped
        quantizer (`search_spaces.export.quantize_onnx_int8`), so "fast" changes the export time, not the
        graph onnxruntime executes."""
        self.check_precision(precision)
        data = export_onnx_bytes(model, example_input, self.exporter == "deploy")
        return quantize_int8_bytes(data, example_input, deploy=True) if precision == "int8" else data

    def export_kernel(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """The fast exporter and the fast quantizer: for a one-kernel module the same graph as `export`."""
        self.check_precision(precision)
        data = export_onnx_bytes(model, example_input, deploy=False)
        return quantize_int8_bytes(data, example_input, deploy=False) if precision == "int8" else data

    def export_network(self, model: Any, example_input: Any, precision: str = "fp32") -> bytes:
        """The fast exporter (the same fused fp32 graph as dynamo's) and, for int8, the shipped quantizer
        (shape pre-processing + `quantize_onnx_int8`): the fast quantizer alone leaves many of a whole
        network's convs in fp32 between quantize / dequantize pairs (a random resnet: 13 of 21), which the
        deployed model does not have. ~1 s a network instead of the dynamo path's ~3-14 s."""
        return OnnxRuntime(exporter="fast").export(model, example_input, precision)

    def layout_block(self, precision: str, cpu_flags: Sequence[str], machine: str) -> int:
        """fp32 graphs are rewritten into NCHWc on x86 (`latency_models.layouts`); int8 ones are not."""
        from latency_models.layouts import nchwc_block

        return nchwc_block(cpu_flags, machine) if precision in self.blocked_layout_precisions else 0

    def load(self, artifact: bytes, threads: int = 1) -> Callable[[Any], Any]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(artifact, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise RuntimeError_(f"onnxruntime cannot load this model: {str(exc).splitlines()[0][:300]}") from exc
        if len(sess.get_inputs()) != 1:
            raise RuntimeError_(f"the model must take exactly one input, it takes {len(sess.get_inputs())}")
        in_name = sess.get_inputs()[0].name

        def run(x):
            return sess.run(None, {in_name: x})

        return run

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}
