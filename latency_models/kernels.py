"""Kernels: the fused op groups a runtime executes, found by tracing one forward pass.

nn-Meter's observation: a model's latency is close to the sum of its *kernels'* latencies, where a
kernel is what the runtime runs as one unit (conv+bn+relu after fusion, an add+relu, a pool, a matmul).
We trace the torch functions a forward pass calls (a `TorchFunctionMode`), fuse batch-norm and
activations into the conv/linear before them and activations into the add before them, and describe
each kernel by the features its latency depends on.

Each traced tensor remembers which prunable layer's output channels it carries (its *owner*), so the
non-prunable kernels (adds, pools, norms, attention matmuls) of a *compressed* model can be derived
from the dense trace by scaling with the owner's kept-channel ratio; `predict_policy` never re-traces.

Tensor ops that are no kernel of their own (reshape, view, flatten, expand, getitem, cat, chunk,
contiguous, the transposes a matmul absorbs, ...) become `glue` kernels: torch eager pays a Python and
dispatcher call for each (1-6 us here, ~40 of them in vit_tiny), onnxruntime a cheap node. Whether one
copies (its output has storage of its own: cat, reshape of a transposed tensor) is recorded; profiles of
the first two formats have no glue samples and count them as free (see `KernelPredictor`).

Conv and linear kernels may carry one optional last parameter, `block`: the height of the 1xN blocks
(along output channels) that the weight's zeros form (block1xn: n, block_punched: its rows). A runtime
with a block-sparse kernel (sparse-cpu) runs 1x4 blocks several times faster than unstructured zeros of
the same density, so its profile needs it; it is omitted when 1 (no block structure), which keeps every
kernel and profile written before it valid and the other runtimes' samples unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

KERNEL_TYPES = ("conv", "dwconv", "linear", "eltwise", "pool", "norm", "softmax", "matmul", "transpose", "glue")
SCHEME_CODES = {"dense": 0, "unstructured": 1, "channel": 0, "nm": 2, "block1xn": 3, "pattern": 4, "block_punched": 5}
#: conv / linear parameters before the optional `block` (see the module docstring)
BASE_PARAMS = {"conv": 12, "linear": 8}
#: block heights read off a weight's zeros, largest first (the space offers block_n 2..16)
BLOCK_HEIGHTS = (16, 8, 4, 2)
#: below this share of zeros a weight's structure is not read (no sparse kernel runs such a layer, and a
#: nearly dense random mask would otherwise pass for blocks of any height)
BLOCK_MIN_SPARSITY = 0.1


@dataclass(frozen=True)
class Kernel:
    """One runtime kernel. `params` are raw numbers; the predictor derives alignment features from them.

    conv:    cin, cout, k, stride, h_in, w_in, has_bn, has_act, density, scheme, wbits, abits[, block]
    dwconv:  c, k, stride, h_in, w_in, has_act
    linear:  tokens, fin, fout, has_act, density, scheme, wbits, abits[, block]
    eltwise: numel, n_inputs, has_act        pool: numel_in, numel_out
    norm:    numel, dim                      softmax: numel
    matmul:  batch, m, k, n                  transpose: numel
    glue:    numel (of its output), copies (1 if the output has storage of its own, else 0)
    """

    type: str
    params: tuple[float, ...]
    layer: str | None = None  # prunable layer name (conv/linear/dwconv)
    owner: str | None = None  # prunable layer whose channels this kernel's size follows
    scaled: tuple[int, ...] = ()  # indices of params that scale with the owner's kept-channel ratio
    count: int = 1
    #: the kernels whose outputs this one reads (indices into its model's kernel list; -1: the model's
    #: input), in argument order: the dataflow a runtime's layout rules follow (`latency_models.layouts`).
    #: Graph structure, not cost: kernels of equal type and params compare equal whatever their inputs
    inputs: tuple[int, ...] = field(default=(), compare=False)
    #: how the runtime runs it, when its layout rules say so (`latency_models.layouts`): "fused" for an
    #: add the runtime folds into the conv before it; empty otherwise
    role: str = field(default="", compare=False)


def kernel_block(k: Kernel) -> float:
    """The 1xN block height of a conv/linear kernel's zeros (1 when absent: no block structure)."""
    base = BASE_PARAMS.get(k.type)
    return float(k.params[base]) if base is not None and len(k.params) > base else 1.0


def with_block(kind: str, params: Sequence[float], block: float) -> tuple[float, ...]:
    """`params` of a conv/linear kernel with its block height set (dropped when 1, the canonical form)."""
    base = list(params[:BASE_PARAMS[kind]])
    return tuple(float(v) for v in (base + [float(block)] if block != 1 else base))


def decision_block(scheme: str, n: int | None = None, block: tuple[int, int] | None = None,
                   density: float = 1.0) -> int:
    """Block height of a scheme decision's zeros: block1xn -> n, block_punched -> its rows, else 1.

    Layers kept nearly dense (density above 1 - `BLOCK_MIN_SPARSITY`) count as unstructured, as
    `weight_block` reads them off weights.
    """
    if density > 1.0 - BLOCK_MIN_SPARSITY:
        return 1
    if scheme == "block1xn" and n:
        return int(n)
    if scheme == "block_punched" and block:
        return int(block[0])
    return 1


def weight_block(weight: torch.Tensor) -> int:
    """Block height of a weight's zeros: the largest of `BLOCK_HEIGHTS` whose 1xN blocks along output
    channels they fill (the sparse kernels' own test, `block_fill`), else 1."""
    from latency_models.sparse_kernels.modules import MIN_FILL, block_fill

    w = weight.detach()
    if w.dim() < 2 or float((w == 0).sum()) < BLOCK_MIN_SPARSITY * w.numel():
        return 1
    for n in BLOCK_HEIGHTS:
        if w.shape[0] >= n and block_fill(w, n) >= MIN_FILL:
            return n
    return 1


@dataclass
class _Meta:
    owner: str | None
    cdim: int | None  # which dim holds the owner's channels (negative index), None if mixed


_ACTS = {F.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.sigmoid, F.leaky_relu, torch.relu,
         torch.sigmoid, torch.tanh, torch.Tensor.relu, torch.Tensor.relu_, torch.relu_, F.elu}
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
         torch.Tensor.add_, torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
         torch.Tensor.__sub__, torch.sub}
_POOLS = {F.adaptive_avg_pool2d, F.max_pool2d, F.avg_pool2d, F.adaptive_max_pool2d, torch.mean, torch.Tensor.mean}
_MATMUL = {torch.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.matmul}
_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}
_TRANSPOSE = {torch.transpose, torch.Tensor.transpose, torch.Tensor.permute, torch.permute}
_SHAPE = {torch.Tensor.reshape, torch.reshape, torch.Tensor.view, torch.flatten, torch.Tensor.flatten}
_CAT = {torch.cat}
#: calls that yield no tensor data op even when they return a tensor (factory calls of the input, metadata)
_NOT_GLUE = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.__len__, torch.zeros}


def _tensors(args: Any) -> list[torch.Tensor]:
    """The tensors among `args` (one level into lists and tuples: torch.cat's operands)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # tensors without storage (meta, functional wrappers)
        return -1


class _Tracer(TorchFunctionMode):
    def __init__(self, names: dict[int, str], heads: dict[str, int] | None = None):
        super().__init__()
        self.names = names
        self.heads = heads or {}  # layer name -> heads of the attention whose q/k/v it is
        self.kernels: list[dict[str, Any]] = []
        self.meta: dict[int, _Meta] = {}
        self.last: dict[int, int] = {}  # id(output tensor) -> index of the kernel that produced it
        #: id(tensor) -> index of the kernel whose output it is, glue included (`last` follows the fusion
        #: of BN / activations through views; this is the dataflow the layout rules read)
        self.src: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []

    def _m(self, t: Any) -> _Meta:
        return self.meta.get(id(t), _Meta(None, None)) if isinstance(t, torch.Tensor) else _Meta(None, None)

    def _set(self, out: Any, meta: _Meta, kernel: int | None) -> None:
        if isinstance(out, torch.Tensor):
            self.meta[id(out)] = meta
            self.keep.append(out)
            if kernel is not None:
                self.last[id(out)] = kernel

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = len(self.kernels)
        out = self._handle(func, args, kwargs)
        # the dataflow (`Kernel.inputs`): new kernels read the call's activations (tensors some kernel
        # produced, or the model's input; weights and buffers are not followed); a BN or activation
        # fused into the kernel before it passes that kernel's output on
        reads = [self.src[id(t)] for t in _tensors(list(args) + list(kwargs.values())) if id(t) in self.src]
        for k in self.kernels[first:]:
            k["inputs"] = reads
        if len(self.kernels) > first:
            producer = len(self.kernels) - 1
        else:
            producer = self.last.get(id(out)) if isinstance(out, torch.Tensor) else None
        if producer is not None:
            for t in _tensors(out if isinstance(out, (list, tuple)) else [out]):
                self.src[id(t)] = producer
        return out

    def _handle(self, func, args, kwargs):
        out = func(*args, **kwargs)
        x = args[0] if args else None
        if func is F.conv2d:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
            groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
            stride = stride[0] if isinstance(stride, (tuple, list)) else stride
            cout, cin_g, kh, _ = w.shape
            name = self.names.get(id(w))
            cin = cin_g * groups
            if groups > 1 and groups == cin == cout:
                k = {"type": "dwconv", "p": [cout, kh, stride, x.shape[-2], x.shape[-1], 0], "layer": name}
            else:
                k = {"type": "conv", "p": [cin, cout, kh, stride, x.shape[-2], x.shape[-1], 0, 0, 1.0, 0, 32, 32],
                     "layer": name, "groups": groups, "block": weight_block(w) if groups == 1 else 1}
            self.kernels.append(k)
            self._set(out, _Meta(name, -3), len(self.kernels) - 1)
        elif func is F.linear:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            name = self.names.get(id(w))
            tokens = x.numel() // x.shape[0] // x.shape[-1]
            self.kernels.append({"type": "linear", "p": [tokens, w.shape[1], w.shape[0], 0, 1.0, 0, 32, 32],
                                 "layer": name, "block": weight_block(w)})
            self._set(out, _Meta(name, -1), len(self.kernels) - 1)
        elif func is F.batch_norm:
            src = self.last.get(id(x))
            if src is not None and self.kernels[src]["type"] == "conv":
                self.kernels[src]["p"][6] = 1
                self._set(out, self._m(x), src)
            elif src is not None and self.kernels[src]["type"] == "dwconv":
                self._set(out, self._m(x), src)
            else:
                self._eltwise(out, x, 1)
        elif func in _ACTS:
            src = self.last.get(id(x))
            if src is not None:
                kind = self.kernels[src]["type"]
                idx = {"conv": 7, "dwconv": 5, "linear": 3, "eltwise": 2}.get(kind)
                if idx is not None and not self.kernels[src]["p"][idx]:
                    self.kernels[src]["p"][idx] = 1
                    self._set(out, self._m(x), src)
                    return out
            self._eltwise(out, x, 1)
        elif func in _ADDS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            big = max(tensors, key=lambda t: t.numel()) if tensors else None
            if big is not None and isinstance(out, torch.Tensor) and out.numel() > 1:
                self._eltwise(out, big, len(tensors), owner_from=[self._m(t) for t in tensors])
        elif func in _POOLS:
            if isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor):
                m = self._m(x)
                self.kernels.append({"type": "pool", "p": [x.numel() // x.shape[0], out.numel() // out.shape[0]],
                                     "owner": m.owner, "scaled": (0, 1) if m.owner else ()})
                cd = m.cdim if m.cdim is not None and out.dim() >= -m.cdim else None
                if func in (torch.mean, torch.Tensor.mean) and out.dim() == 2:
                    cd = -1
                self._set(out, _Meta(m.owner, cd), None)
        elif func is F.layer_norm:
            m = self._m(x)
            self.kernels.append({"type": "norm", "p": [x.numel() // x.shape[0], x.shape[-1]], "owner": m.owner,
                                 "scaled": (0, 1) if m.owner else ()})
            self._set(out, m, None)
        elif func in _SOFTMAX:
            m = self._m(x)
            self.kernels.append({"type": "softmax", "p": [x.numel() // x.shape[0]], "owner": m.owner,
                                 "scaled": (0,) if m.owner else ()})
            self._set(out, m, None)
        elif func in _MATMUL:
            a, b = args[0], args[1]
            ma, mb = self._m(a), self._m(b)
            batch = a.numel() // (a.shape[-1] * a.shape[-2]) // a.shape[0] if a.dim() > 2 else 1
            scaled, owner = [], None
            # whole heads pruned: the batch (heads) dims carry the owner's channels, the matmul runs
            # on fewer heads of the same size (and so do the softmax and scaling of its scores)
            on_heads = [mm for mm, t in ((ma, a), (mb, b)) if mm.owner and t.dim() > 2 and mm.cdim is not None
                        and -t.dim() <= mm.cdim < -2]
            if on_heads:
                scaled.append(0)
                owner = on_heads[-1].owner
            if ma.owner and ma.cdim == -1:
                scaled.append(2)
                owner = owner or ma.owner
            if mb.owner and mb.cdim == -1:
                scaled.append(3)
                owner = owner or mb.owner
            self.kernels.append({"type": "matmul", "p": [batch, a.shape[-2], a.shape[-1], b.shape[-1]],
                                 "owner": owner, "scaled": tuple(scaled)})
            self._set(out, _Meta(owner, on_heads[-1].cdim) if on_heads else
                      _Meta(mb.owner, -1) if 3 in scaled else _Meta(None, None), None)
        elif func in _TRANSPOSE:
            m = self._m(x)
            nd = x.dim()
            if func in (torch.transpose, torch.Tensor.transpose):
                d0, d1 = (a % nd for a in args[1:3])
                perm = list(range(nd))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            else:
                perm = list(args[1:]) if len(args) > 2 else list(args[1])
                perm = [p % nd for p in perm]
            cd = None
            if m.cdim is not None:
                pos = m.cdim % nd
                cd = perm.index(pos) - nd
            if x.shape[-1] != 1 and x.shape[-2] != 1 and not (x.dim() > 2 and perm[-1] == nd - 1):
                self.kernels.append({"type": "transpose", "p": [x.numel() // x.shape[0]], "owner": m.owner,
                                     "scaled": (0,) if m.owner else ()})
            else:
                self._glue(out, args, m)
            self._set(out, _Meta(m.owner, cd), None)
        elif func in _SHAPE:
            m = self._m(x)
            cd = m.cdim
            if isinstance(out, torch.Tensor) and cd is not None:
                heads = self.heads.get(m.owner or "")
                if (cd == -1 and heads and out.dim() >= 2 and out.shape[-2] == heads
                        and out.shape[-2] * out.shape[-1] == x.shape[-1]):
                    cd = -2  # split into whole heads: the heads dim carries the pruned channels
                elif cd == -2 and out.dim() > 0 and x.dim() >= 2 and out.shape[-1] == x.shape[-2] * x.shape[-1]:
                    cd = -1  # whole heads merged back into channels
                elif cd == -1 and out.dim() > 0 and x.shape[-1] % out.shape[-1] == 0:
                    cd = -1  # splitting or keeping the channel dim last (heads)
                elif cd == -3 and out.dim() == 2:
                    cd = -1  # flatten(N, C, 1, 1) -> (N, C)
                elif cd == -1 and out.dim() > 0 and out.shape[-1] % x.shape[-1] == 0:
                    cd = -1  # merging heads back
                else:
                    cd = None
            self._glue(out, args, m)
            self._set(out, _Meta(m.owner, cd), None)
        elif func in _CAT:
            self._glue(out, args, _Meta(None, None))
            self._set(out, _Meta(None, None), None)
        elif func not in _NOT_GLUE and _tensors(out if isinstance(out, (list, tuple)) else [out]):
            src = _tensors(args)
            m = self._m(src[0]) if src else _Meta(None, None)
            self._glue(out, args, m)
            if isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor):
                self._set(out, self._m(x), self.last.get(id(x)))
        return out

    def _glue(self, out: Any, args: Any, m: _Meta) -> None:
        """Record a tensor op that is no kernel of its own: its output size and whether it copied."""
        outs = _tensors(out if isinstance(out, (list, tuple)) else [out])
        if not outs:
            return
        numel = sum(t.numel() for t in outs)
        lead = outs[0].shape[0] if outs[0].dim() > 0 else 1
        ins = {_storage(t) for t in _tensors(args)}
        copies = float(_storage(outs[0]) not in ins)
        self.kernels.append({"type": "glue", "p": [max(1, numel // max(1, lead)), copies], "owner": m.owner,
                             "scaled": (0,) if m.owner else ()})

    def _eltwise(self, out: Any, x: torch.Tensor, n_inputs: int, owner_from: list[_Meta] | None = None) -> None:
        metas = owner_from or [self._m(x)]
        m = next((mm for mm in metas if mm.owner), _Meta(None, None))
        self.kernels.append({"type": "eltwise", "p": [x.numel() // x.shape[0], n_inputs, 0], "owner": m.owner,
                             "scaled": (0,) if m.owner else ()})
        self._set(out, m, len(self.kernels) - 1)


def attention_heads(model: nn.Module) -> dict[str, int]:
    """Linear layers whose parent module has `heads` (an attention's q/k/v/proj) -> its heads.

    The channel engine prunes such projections in whole heads (`search_spaces.channel`), so the
    tracer follows their channels into the heads dim once the output is split into heads: a
    pruned attention runs its score matmuls and softmax on fewer heads, not on narrower ones.
    """
    out = {}
    for name, m in model.named_modules():
        heads = getattr(m, "heads", None)
        if isinstance(heads, int) and heads > 0:
            for child, sub in m.named_children():
                if isinstance(sub, nn.Linear):
                    out[f"{name}.{child}" if name else child] = heads
    return out


@torch.no_grad()
def trace_kernels(model: nn.Module, input_shape: Sequence[int]) -> list[Kernel]:
    """The kernels of one forward pass of `model` on one sample of `input_shape` (C, H, W), in order."""
    names = {id(m.weight): name for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None}
    was_training = model.training
    model.eval()
    tracer = _Tracer(names, attention_heads(model))
    x = torch.zeros(1, *input_shape)
    tracer.src[id(x)] = -1
    try:
        with tracer:
            model(x)
    finally:
        model.train(was_training)
    out = []
    for k in tracer.kernels:
        p = tuple(float(v) for v in k["p"])
        if k["type"] == "conv" and k.get("groups", 1) > 1:  # grouped, not depthwise: cost like cin/groups
            p = (p[0] / k["groups"],) + p[1:]
        if k.get("block", 1) != 1:
            p = with_block(k["type"], p, k["block"])
        out.append(Kernel(k["type"], p, layer=k.get("layer"), owner=k.get("owner") or k.get("layer"),
                          scaled=tuple(k.get("scaled", ())), inputs=tuple(k.get("inputs", ()))))
    return out


def kernels_for_model(model: nn.Module, input_shape: Sequence[int]) -> list[Kernel]:
    """Kernels of a concrete (possibly already pruned) model, with masked weights' density read off the weights.

    A masked-but-dense-shaped layer keeps its full shape; its density is recorded so a runtime with a
    sparse kernel can profit and one without (onnxruntime here) is seen to gain nothing.
    """
    kernels = trace_kernels(model, input_shape)
    modules = dict(model.named_modules())
    out = []
    for k in kernels:
        if k.layer and k.type in ("conv", "linear"):
            w = modules[k.layer].weight
            density = float((w != 0).sum()) / max(1, w.numel())
            i = 8 if k.type == "conv" else 4
            p = list(k.params)
            p[i] = round(density, 4)
            k = replace(k, params=tuple(p))
        out.append(k)
    return out


# ------------------------------------------------------------------------------ compressed models
@dataclass
class Skeleton:
    """A dense model's kernels plus the dense output channels of each prunable layer (for scaling)."""

    kernels: list[Kernel]
    dense_out: dict[str, int] = field(default_factory=dict)


def skeleton(model: nn.Module, input_shape: Sequence[int]) -> Skeleton:
    kernels = trace_kernels(model, input_shape)
    modules = dict(model.named_modules())
    dense_out = {}
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d):
            dense_out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            dense_out[name] = m.out_features
    return Skeleton(kernels, dense_out)


def _bits(b: int | None) -> float:
    return 32.0 if b is None else float(b)


def compressed_kernels(skel: Skeleton, layers: Sequence[Any]) -> list[Kernel]:
    """The kernels of a compressed model from its dense skeleton and the post-policy layers.

    `layers` are `search_spaces.CompressedLayer`s (anything with their attribute names works): conv and
    linear kernels take their shapes, density, scheme and bits from them; the other kernels scale with
    their owner layer's kept-channel ratio. Runs per prediction, so it avoids dataclass `replace`.
    """
    by_name = {cl.name: cl for cl in layers}
    ratio = {name: by_name[name].out_channels / d for name, d in skel.dense_out.items() if name in by_name and d}
    out = []
    for k in skel.kernels:
        cl = by_name.get(k.layer) if k.layer else None
        if cl is not None and k.type in ("conv", "dwconv", "linear"):
            p = list(k.params)
            scheme = SCHEME_CODES.get(getattr(cl, "scheme", "dense"), 0)
            density = float(getattr(cl, "density", 1.0))
            wb, ab = _bits(getattr(cl, "weight_bits", None)), _bits(getattr(cl, "act_bits", None))
            block = decision_block(getattr(cl, "scheme", "dense"), getattr(cl, "n", None),
                                   getattr(cl, "block", None), density)
            if k.type == "conv":
                groups = max(1, int(getattr(cl, "groups", 1)))
                p[0], p[1] = cl.in_channels / groups, cl.out_channels
                p[8], p[9], p[10], p[11] = density, scheme, wb, ab
                p = p[:12] + ([block] if block != 1 else [])
            elif k.type == "dwconv":
                p[0] = cl.out_channels
            else:
                p[1], p[2] = cl.in_channels, cl.out_channels
                p[4], p[5], p[6], p[7] = density, scheme, wb, ab
                p = p[:8] + ([block] if block != 1 else [])
            out.append(Kernel(k.type, tuple(float(v) for v in p), k.layer, k.owner, k.scaled, inputs=k.inputs))
        elif k.scaled and ratio.get(k.owner, 1.0) != 1.0:
            r = ratio[k.owner]
            p = list(k.params)
            for i in k.scaled:
                p[i] = float(max(1.0, round(p[i] * r)))
            out.append(Kernel(k.type, tuple(p), k.layer, k.owner, k.scaled, inputs=k.inputs))
        else:
            out.append(k)
    return out


def weight_bytes(k: Kernel) -> float:
    """Bytes of a conv / dwconv / linear kernel's weights at their bit width (stored dense), else 0."""
    p = k.params
    if k.type == "conv":
        return p[0] * p[1] * p[2] ** 2 * p[10] / 8
    if k.type == "linear":
        return p[1] * p[2] * p[6] / 8
    if k.type == "dwconv":
        return p[0] * p[1] ** 2 * 4.0
    return 0.0


def total_macs(kernels: Sequence[Kernel]) -> float:
    """MACs per sample of conv/linear/matmul kernels (for reports; the predictor does not rely on it)."""
    t = 0.0
    for k in kernels:
        p = k.params
        if k.type == "conv":
            t += p[0] * p[1] * p[2] ** 2 * math.ceil(p[4] / p[3]) * math.ceil(p[5] / p[3])
        elif k.type == "linear":
            t += p[0] * p[1] * p[2]
        elif k.type == "matmul":
            t += p[0] * p[1] * p[2] * p[3]
    return t
