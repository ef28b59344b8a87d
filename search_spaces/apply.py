"""Apply a policy to a real model: physical channel removal, 1xN rearrangement, masks, quantization.

Order matters: channels are removed first (masks are computed on the shrunk weights), 1xN filter
rearrangement runs before the 1xN masks are computed, fake-quant is attached last (it quantizes the
masked weights). Masks are kept in `CompressedModel.masks` and re-applied after each optimizer step
(`reapply_masks`, passed as `after_step` to `automl.training.train_epochs`), so pruned weights stay
exactly zero through fine-tuning even with momentum or weight decay.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from automl.models.layers import count_macs, prunable_layers
from automl.policy import CompressionPolicy
from search_spaces.channel import Importance, l1_importance, prune_channels
from search_spaces.rearrange import rearrange_filters
from search_spaces.schemes import get_scheme
from search_spaces.space import SearchSpace


@dataclass
class CompressedModel:
    """The compressed model, its policy, the keep-masks by layer name, and a report of what was done."""

    model: nn.Module
    policy: CompressionPolicy
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    _modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @torch.no_grad()
    def reapply_masks(self) -> None:
        """Zero the pruned weights again (call after every optimizer step)."""
        for name, mask in self.masks.items():
            module = self._modules.get(name) or self.model.get_submodule(name)
            module.weight.mul_(mask)

    def sparsity(self) -> dict[str, float]:
        """Achieved fraction of zero weights per masked layer (measured on the weights)."""
        out = {}
        for name in self.masks:
            w = (self._modules.get(name) or self.model.get_submodule(name)).weight
            out[name] = float((w == 0).sum()) / w.numel()
        return out


def apply_policy(model: nn.Module, policy: CompressionPolicy, example_input: torch.Tensor, *,
                 calib: torch.Tensor | None = None, inplace: bool = False,
                 importance: Importance = l1_importance) -> CompressedModel:
    """Compress `model` (a copy unless `inplace`) as `policy` says; `example_input` is one batch (N, C, H, W).

    Raises PolicyError / SchemeError before touching weights if the policy does not fit the model.
    """
    if not inplace:
        model = copy.deepcopy(model)
    input_shape = tuple(example_input.shape[1:])
    space = SearchSpace.from_model(model, policy.model, input_shape)
    space.validate(policy)
    decision_of = lambda name: space.effective_decision(policy, name)  # noqa: E731
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out_before = model(example_input[:1]).shape
    before = count_macs(model, input_shape)

    channel_report = prune_channels(model, example_input[:1], [lc.layer for lc in space.layers],
                                    decision_of, importance)
    infos = prunable_layers(model, input_shape)
    block_layers = [i.name for i in infos if decision_of(i.name).scheme == "block1xn"]
    rearranged = rearrange_filters(model, example_input[:1], block_layers)

    masks: dict[str, torch.Tensor] = {}
    modules: dict[str, nn.Module] = {}
    with torch.no_grad():
        for info in infos:
            d = decision_of(info.name)
            scheme = get_scheme(d.scheme)
            if scheme.physical or d.scheme == "dense":
                continue
            module = model.get_submodule(info.name)
            mask = scheme.mask(module.weight, d)
            module.weight.mul_(mask)
            masks[info.name], modules[info.name] = mask, module

    with torch.no_grad():
        out_after = model(example_input[:1]).shape
    if out_after != out_before:
        raise RuntimeError(f"compression changed the output shape {tuple(out_before)} -> {tuple(out_after)}; "
                           "this is a bug in the channel groups, please report it with the policy")
    after = count_macs(model, input_shape)

    decisions = [policy.layers.get(n) for n in policy.layers] + [policy.default]
    quantized = False
    if any(d is not None and (d.weight_bits is not None or d.act_bits is not None) for d in decisions):
        try:
            from search_spaces.quantization import attach_fake_quant
        except ImportError as exc:
            raise NotImplementedError("the policy asks for weight/act bits but search_spaces.quantization."
                                      f"attach_fake_quant is not available ({exc})") from exc
        result = attach_fake_quant(model, policy, calib)
        if isinstance(result, nn.Module):
            model = result
        quantized = True
    model.train(was_training)
    compressed = CompressedModel(model, policy, masks, {}, modules)
    compressed.report = {
        "macs_before": before.total, "macs_after": after.total, "params_before": before.params,
        "params_after": after.params, "channel_groups": channel_report, "rearranged": rearranged,
        "masked_sparsity": compressed.sparsity(), "quantized": quantized,
    }
    return compressed
