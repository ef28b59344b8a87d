"""ONNX export and real int8 execution through onnxruntime.

Why onnxruntime for int8: on this project's CPU kind (AVX2, no VNNI) it is the fastest int8 path measured
(GUIDE §2 and docs/benchmarks.md, `experiments/benchmarks/int8_runtimes.py`): ORT static QDQ int8 beats ORT
fp32, while torch's FX x86 int8 is slower than ORT fp32 at batch 1.

Choices, each measured or documented:
- Exporter: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``). Its onnxscript optimizer
  already folds BatchNorm into the preceding Conv (rule ``FuseBatchNormIntoConv``) and keeps the Conv weight
  initializer named after the module (``layer1.0.conv1.weight``), which is how module names are mapped to
  ONNX nodes. onnxruntime would fold Conv+BN itself at graph optimisation level "basic" anyway, but the int8
  quantizer works on the graph *before* ORT's runtime fusions, so BN must already be folded: `export_onnx`
  checks that no BatchNormalization node is left and says so in its result.
- int8 format: QDQ, per-channel symmetric S8 weights, U8 activations, ``reduce_range=True`` (7-bit weights).
  U8S8 is what ORT's AVX2 kernels accelerate; S8S8 runs slower than fp32 here, and ORT's docs advise
  reduce_range on AVX2 without VNNI to avoid VPMADDUBSW saturation.
- Calibration: MinMax over the given batch (matches the ``minmax`` observer of the fake-quant simulation).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from automl.policy import CompressionPolicy


class ExportError(RuntimeError):
    """Export or int8 quantization failed; the message says which step and what to try."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    input_name: str
    bn_nodes_left: int  # BatchNormalization nodes in the exported graph (0: BN folded into convs)
    nodes: int


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the dynamo exporter prints on every export without anything being wrong: one warning per
    torchvision op it cannot register ("torchvision is not installed. Skipping torchvision::nms", four a
    model) and torch pytree's LeafSpec FutureWarning. In a search they drowned the progress lines; real
    errors still raise (ExportError) and other warnings still show."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = 18, *,
                dynamic_batch: bool = True) -> ExportResult:
    """Export a float copy of `model` (fake-quant stripped, eval mode) to ONNX; BN is folded into convs.

    The model passed in is left untouched. `dynamic_batch` makes the batch dimension symbolic so the same
    file serves batch-1 latency and batch-N accuracy runs.
    """
    import onnx

    from search_spaces.quantization import strip_fake_quant

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    float_model = strip_fake_quant(copy.deepcopy(model)).eval()
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    try:
        with _quiet_exporter():
            torch.onnx.export(float_model, (example_input,), str(path), dynamo=True, opset_version=opset,
                              external_data=False, verbose=False, **kwargs)
    except Exception as exc:  # the exporter raises many types; name the step
        raise ExportError(f"torch.onnx.export (dynamo) failed for {type(model).__name__}: {exc}. "
                          "Check that the model runs on the example input in eval mode.") from exc
    graph = onnx.load(str(path)).graph
    bn = sum(1 for n in graph.node if n.op_type == "BatchNormalization")
    return ExportResult(path=path, input_name=graph.input[0].name, bn_nodes_left=bn, nodes=len(graph.node))


def onnx_layer_nodes(onnx_path: str | Path, layer_names: Iterable[str]) -> dict[str, str]:
    """Map module names to the ONNX Conv / Gemm / MatMul node that uses ``<name>.weight``.

    Raises ExportError naming the layers that have no node (e.g. an exporter that renamed initializers).
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    by_weight: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            by_weight[node.input[1]] = node.name
    # a Linear may be exported as MatMul on a transposed weight: follow one Transpose back
    transposed = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Transpose"}
    for out, src in transposed.items():
        if out in by_weight and src not in by_weight:
            by_weight[src] = by_weight[out]
    mapping, missing = {}, []
    for name in layer_names:
        node = by_weight.get(f"{name}.weight")
        if node is None:
            missing.append(name)
        else:
            mapping[name] = node
    if missing:
        raise ExportError(f"no ONNX node found for layer(s) {missing[:5]} in {onnx_path}; the int8 layer "
                          "restriction needs weight initializers named '<module>.weight' (dynamo exporter)")
    return mapping


def layers_at_8_bits(policy: CompressionPolicy, layer_names: Iterable[str]) -> list[str]:
    """Layers whose decision asks for 8-bit weights: the ones the real int8 path runs in int8."""
    return [name for name in layer_names if policy.decision(name).weight_bits == 8]


class _TensorReader:
    """onnxruntime CalibrationDataReader over a tensor of inputs, in batches."""

    def __init__(self, input_name: str, calib: torch.Tensor, batch_size: int):
        self._batches = [{input_name: calib[i:i + batch_size].numpy().astype(np.float32)}
                         for i in range(0, len(calib), batch_size)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


QUANT_TYPES = {"u8": "QUInt8", "s8": "QInt8"}


def quantize_onnx_int8(onnx_path: str | Path, calib: torch.Tensor, out_path: str | Path, *,
                       layers: list[str] | None = None, per_channel: bool = True, reduce_range: bool = True,
                       activation_type: str = "u8", weight_type: str = "s8", calib_batch_size: int = 64) -> Path:
    """Static int8 (QDQ) quantization with onnxruntime, calibrated on `calib` (model inputs, NCHW float).

    `layers`: module names to run in int8 (e.g. `layers_at_8_bits(policy, ...)`); None quantizes every
    supported op (convs, GEMMs and the residual adds between them). Other nodes stay float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activation_type not in QUANT_TYPES or weight_type not in QUANT_TYPES:
        raise ExportError(f"activation_type / weight_type must be one of {sorted(QUANT_TYPES)}")
    if calib is None or len(calib) == 0:
        raise ExportError("int8 quantization needs calibration inputs: pass a few hundred model inputs")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    input_name = onnx.load(str(onnx_path)).graph.input[0].name
    nodes = None
    if layers is not None:
        if not layers:
            raise ExportError("layers=[] quantizes nothing; pass None to quantize every layer, or the "
                              "8-bit layers of the policy")
        nodes = list(onnx_layer_nodes(onnx_path, layers).values())
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the raw graph if it fails
            pre = onnx_path
        # ORT's calibrator writes augmented models to the working dir's temp; keep it in our temp dir
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            quantize_static(
                str(pre), str(out_path), _TensorReader(input_name, calib, calib_batch_size),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=getattr(QuantType, QUANT_TYPES[activation_type]),
                weight_type=getattr(QuantType, QUANT_TYPES[weight_type]),
                nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:
            raise ExportError(f"onnxruntime static quantization of {onnx_path} failed: {exc}") from exc
        finally:
            os.chdir(cwd)
    return out_path


def ort_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with spinning off (it fights torch's threads in one process otherwise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, x: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """Logits of an ONNX model on `x`, batched."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size].numpy().astype(np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(outs))


def onnx_op_counts(path: str | Path) -> Mapping[str, int]:
    """Op type -> count (to check that a quantized graph really holds QuantizeLinear / DequantizeLinear)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
