"""Fake (meta) kernels: output shapes only, so the ops trace under torch.compile / torch.export."""

from __future__ import annotations

import torch


@torch.library.register_fake("sparse_cpu::conv2d")
def _conv2d_fake(x, idx, vals, ptr, bias, out_channels, kernel_h, kernel_w, stride, padding, n, act):
    hout = (x.shape[2] + 2 * padding - kernel_h) // stride + 1
    wout = (x.shape[3] + 2 * padding - kernel_w) // stride + 1
    return x.new_empty((x.shape[0], out_channels, hout, wout))


@torch.library.register_fake("sparse_cpu::linear")
def _linear_fake(x, idx, vals, ptr, bias, out_features, n, act):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("sparse_cpu::pack")
def _pack_fake(weight, n):
    ctx = torch.library.get_ctx()
    entries = ctx.new_dynamic_size()
    blocks = (weight.shape[0] + n - 1) // n
    return (weight.new_empty((entries,), dtype=torch.int32), weight.new_empty((entries, n)),
            weight.new_empty((blocks + 1,), dtype=torch.int64))
