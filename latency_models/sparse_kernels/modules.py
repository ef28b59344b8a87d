"""`SparseConv2d` / `SparseLinear`: drop-in modules that run a masked conv/linear on the sparse_cpu kernels.

A module is built once from a dense layer (whose zeros are the mask, or with an explicit mask), picks the
stored format from the mask's structure and packs the weight; `forward` is a single registered op, so it
runs in eager mode, under torch.compile and in torch.export. `convert_model` folds BatchNorm into convs,
swaps the layers whose sparsity makes the kernel pay, and fuses a following ReLU/ReLU6 into the kernel.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .build import load

#: Block heights tried in this order. Measured per layer, N=4 is 5-15% faster than N=8 on the same
#: 1x8-structured weight (docs/benchmarks.md), and 1x8 blocks are 1x4 blocks too, so 4 comes first;
#: N=8 is used only when forced (``n=8``); 2 serves block-punched row blocks of 2.
PREFERRED_N: tuple[int, ...] = (4, 8, 2)
#: A block height is used when at least this share of its stored weights are non-zero.
MIN_FILL = 0.95
#: Default sparsity from which a layer is swapped, per block height: below it the dense kernel is as fast
#: (per-layer benchmark medians, docs/benchmarks.md "Sparse CPU kernels (issue 11)").
MIN_SPARSITY: dict[int, float] = {1: 0.75, 2: 0.6, 4: 0.5, 8: 0.5}
ACTS = {"none": 0, "relu": 1, "relu6": 2}


def block_fill(weight: torch.Tensor, n: int) -> float:
    """Share of non-zeros among the weights stored when output channels are packed in blocks of n.

    1.0 means the zeros form exact 1xn blocks along output channels (block1xn, block_punched with row
    blocks of n); lower values mean the kernel would multiply stored zeros.
    """
    w = weight.detach().reshape(weight.shape[0], -1) != 0
    cout = w.shape[0]
    pad = (-cout) % n
    if pad:
        w = torch.cat([w, torch.zeros(pad, w.shape[1], dtype=torch.bool)])
    nnz = int(w.sum())
    if nnz == 0:
        return 1.0
    entries = int(w.reshape(-1, n, w.shape[1]).any(dim=1).sum())
    return nnz / (entries * n)


def choose_block(weight: torch.Tensor) -> int:
    """The block height for this weight's zero pattern: 4 (or 8) when it has 1xN structure, else 1."""
    for n in PREFERRED_N:
        if block_fill(weight, n) >= MIN_FILL:
            return n
    return 1


def sparsity(weight: torch.Tensor) -> float:
    return 1.0 - float((weight != 0).sum()) / max(1, weight.numel())


def _act_code(act: str | int) -> int:
    if isinstance(act, int):
        return act
    if act not in ACTS:
        raise ValueError(f"activation must be one of {', '.join(ACTS)}, got {act!r}")
    return ACTS[act]


class _Packed(nn.Module):
    """Shared storage: the packed weight as buffers (so state_dict, pickling and .to() work)."""

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None, n: int) -> None:
        load()
        w = weight.detach().to(torch.float32).contiguous()
        idx, vals, ptr = torch.ops.sparse_cpu.pack(w, n)
        self.register_buffer("idx", idx)
        self.register_buffer("vals", vals)
        self.register_buffer("ptr", ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.n = n
        self.density = float((w != 0).sum()) / max(1, w.numel())

    def __setstate__(self, state: dict) -> None:  # unpickling in a fresh process: make the ops exist
        load()
        super().__setstate__(state)


class SparseConv2d(_Packed):
    """A conv (groups 1, square stride, equal padding, zeros padding mode) on the sparse kernels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1, padding: int = 0,
                 n: int | None = None, act: str | int = "none") -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"SparseConv2d needs a (out, in, kh, kw) weight, got shape {tuple(weight.shape)}")
        n = choose_block(weight) if n is None else n
        self._pack(weight, bias, n)
        self.out_channels, self.in_channels, self.kernel_h, self.kernel_w = (int(s) for s in weight.shape)
        self.stride, self.padding, self.act = int(stride), int(padding), _act_code(act)

    @classmethod
    def depthwise(cls, conv: nn.Conv2d, act: str | int = "none") -> SparseConv2d:
        """A depthwise conv as a block-diagonal weight with N=1 (output channel c reads input channel c).

        Dense depthwise convs are not sparse, but torch's CPU path for them is slow at batch 1 here
        (~0.5 ms per layer in MobileNetV2 at 28 px), and they sit between the sparse 1x1 convs.
        """
        c = conv.in_channels
        if conv.groups != c or conv.out_channels != c:
            raise ValueError(f"{conv} is not depthwise (groups == in == out channels)")
        if conv.dilation != (1, 1) or conv.padding[0] != conv.padding[1] or conv.stride[0] != conv.stride[1]:
            raise ValueError(f"SparseConv2d.depthwise cannot run {conv}: needs dilation 1, equal padding/stride")
        load()
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        w = conv.weight.detach().to(torch.float32).reshape(c, -1)  # (c, kh*kw)
        kk = w.shape[1]
        keep = w != 0
        idx = (torch.arange(c).unsqueeze(1) * kk + torch.arange(kk)).masked_select(keep).to(torch.int32)
        vals = w.masked_select(keep).reshape(-1, 1).contiguous()
        ptr = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
        module.register_buffer("idx", idx)
        module.register_buffer("vals", vals)
        module.register_buffer("ptr", ptr)
        module.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        module.n, module.density = 1, float(keep.sum()) / max(1, c * c * kk)
        module.out_channels, module.in_channels = c, c
        module.kernel_h, module.kernel_w = conv.kernel_size
        module.stride, module.padding, module.act = conv.stride[0], conv.padding[0], _act_code(act)
        return module

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None, n: int | None = None,
                   act: str | int = "none") -> SparseConv2d:
        """Build from a dense conv; `mask` (same shape as the weight, 0 = pruned) is applied if given."""
        problem = unsupported_conv(conv)
        if problem:
            raise ValueError(f"SparseConv2d cannot run {conv}: {problem}")
        weight = conv.weight if mask is None else conv.weight * mask.to(conv.weight.dtype)
        return cls(weight, conv.bias, conv.stride[0], conv.padding[0], n, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.sparse_cpu.conv2d(x, self.idx, self.vals, self.ptr, self.bias, self.out_channels,
                                           self.kernel_h, self.kernel_w, self.stride, self.padding, self.n,
                                           self.act)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel=({self.kernel_h}, {self.kernel_w}), "
                f"stride={self.stride}, padding={self.padding}, n={self.n}, density={self.density:.3f}, "
                f"act={self.act}")


class SparseLinear(_Packed):
    """A linear layer on the sparse kernels (rows of the input are the kernel's pixels)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, n: int | None = None,
                 act: str | int = "none") -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"SparseLinear needs an (out, in) weight, got shape {tuple(weight.shape)}")
        n = choose_block(weight) if n is None else n
        self._pack(weight, bias, n)
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.act = _act_code(act)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor | None = None, n: int | None = None,
                   act: str | int = "none") -> SparseLinear:
        weight = linear.weight if mask is None else linear.weight * mask.to(linear.weight.dtype)
        return cls(weight, linear.bias, n, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.sparse_cpu.linear(x, self.idx, self.vals, self.ptr, self.bias, self.out_features,
                                           self.n, self.act)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, n={self.n}, density={self.density:.3f}, "
                f"act={self.act}")


def unsupported_conv(conv: nn.Conv2d) -> str | None:
    """Why the kernels cannot run this conv, or None when they can."""
    if conv.groups != 1:
        return f"groups={conv.groups} (grouped/depthwise convs stay dense)"
    if conv.dilation not in ((1, 1), 1):
        return f"dilation={conv.dilation}"
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1]:
        return f"padding={conv.padding} (needs one integer for both sides)"
    if conv.stride[0] != conv.stride[1]:
        return f"stride={conv.stride} (needs equal strides)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode}"
    if conv.weight.dtype != torch.float32:
        return f"dtype {conv.weight.dtype} (float32 only)"
    return None


def _fold_bn(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm into the preceding conv (torch.fx); fall back to Sequential pairs."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model, inplace=True)
    except Exception as exc:  # models fx cannot trace: fold conv->bn pairs inside nn.Sequential only
        warnings.warn(f"convert_model: fx tracing failed ({exc}); folding BatchNorm in nn.Sequential only",
                      stacklevel=3)
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if isinstance(module, nn.Sequential):
            keys = list(module._modules)
            for a, b in zip(keys, keys[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
    return model


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


def _fuse_activations(model: nn.Module) -> None:
    """In an fx GraphModule, fold ReLU/ReLU6 that is the only user of a sparse layer into its store."""
    if not isinstance(model, torch.fx.GraphModule):
        return
    modules = dict(model.named_modules())
    changed = False
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), SparseConv2d | SparseLinear):
            continue
        layer = modules[node.target]
        if layer.act != 0 or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        code = None
        if user.op == "call_module" and type(modules.get(user.target)) in (nn.ReLU, nn.ReLU6):
            code = 1 if isinstance(modules[user.target], nn.ReLU) else 2
        elif user.op == "call_function" and user.target in (F.relu, torch.relu) and len(user.args) == 1:
            code = 1
        elif user.op == "call_function" and user.target is F.relu6 and len(user.args) == 1:
            code = 2
        if code is None:
            continue
        layer.act = code
        user.replace_all_uses_with(node)
        model.graph.erase_node(user)
        changed = True
    if changed:
        model.graph.lint()
        model.recompile()


def _is_plain_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.padding[0] == module.padding[1] and module.stride[0] == module.stride[1])


def plan_layer(module: nn.Module, min_sparsity: float | None = None,
               depthwise: bool = True) -> tuple[str, int, str]:
    """What `convert_model` does with one module: (action, block height, why).

    action is "depthwise" (runs on the kernels, block-diagonal), "sparse" (swapped, block height n),
    "dense" (a conv/linear the kernels could run but that stays on torch's dense kernel) or "other"
    (not a conv/linear). One function decides for `convert_model` and for the reports of `automl apply`,
    so a report can never disagree with the converted model.
    """
    if depthwise and _is_plain_depthwise(module):
        return "depthwise", 1, "depthwise conv: the kernels' block-diagonal path (N=1)"
    if isinstance(module, nn.Conv2d):
        problem = unsupported_conv(module)
        if problem is not None:
            return "dense", 1, f"the kernels cannot run it: {problem}"
    elif isinstance(module, nn.Linear):
        if module.weight.dtype != torch.float32:
            return "dense", 1, f"dtype {module.weight.dtype} (float32 only)"
    else:
        return "other", 1, "not a conv or linear layer"
    n = choose_block(module.weight)
    need = MIN_SPARSITY[n] if min_sparsity is None else min_sparsity
    s = sparsity(module.weight)
    if s >= need:
        return "sparse", n, f"sparsity {s:.3f} >= {need:.2f} (N={n})"
    if s == 0.0:
        return "dense", 1, "no zeros"
    return "dense", n, f"sparsity {s:.3f} < {need:.2f} needed for N={n}: the dense kernel is as fast"


def convert_model(model: nn.Module, min_sparsity: float | None = None, inplace: bool = False,
                  fuse_activations: bool = True, depthwise: bool = True) -> nn.Module:
    """Swap masked convs/linears for sparse-kernel modules where the kernel is expected to pay.

    The model's zeros are the masks (apply the policy first). BatchNorm is folded into convs so the bias
    lands in the kernel's store; a ReLU/ReLU6 right after a swapped layer is fused too. A layer is swapped
    when its sparsity reaches `min_sparsity` (default: per block height, `MIN_SPARSITY`). Depthwise convs
    (dense or not) run on the kernels too when `depthwise` (torch's batch-1 depthwise path is slow here);
    other grouped convs stay dense. Returns an eval-mode model (an fx GraphModule when the model traces).
    The decision per layer is `plan_layer`'s.
    """
    load()
    model = (model if inplace else copy.deepcopy(model)).eval()
    model = _fold_bn(model)
    for name, module in list(model.named_modules()):
        action, n, _ = plan_layer(module, min_sparsity, depthwise)
        if action == "depthwise":
            _set_submodule(model, name, SparseConv2d.depthwise(module))
        elif action == "sparse" and isinstance(module, nn.Conv2d):
            _set_submodule(model, name, SparseConv2d.from_dense(module, n=n))
        elif action == "sparse":
            _set_submodule(model, name, SparseLinear.from_dense(module, n=n))
    if fuse_activations:
        _fuse_activations(model)
    if isinstance(model, torch.fx.GraphModule):
        # Annotations written under `from __future__ import annotations` reach the generated code as
        # strings, which GraphModule's pickler (torch 2.13) cannot import: drop them so the model pickles.
        for node in model.graph.nodes:
            node.type = None
        model.recompile()
    return model


def sparse_layers(model: nn.Module) -> dict[str, str]:
    """name -> short description of each layer that runs on the sparse kernels (for reports)."""
    return {name: m.extra_repr() for name, m in model.named_modules() if isinstance(m, SparseConv2d | SparseLinear)}
