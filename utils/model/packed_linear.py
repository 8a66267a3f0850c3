"""oneDNN pre-packed weights for every linear layer of a model on the CPU.

PyTorch's default CPU matmul for ``x @ W.T`` reaches 5-9 GB/s of weight traffic on the few rows of a
decode step and 110-180 GFLOP/s on a training batch; the same product with the weight reordered once
into oneDNN's blocked layout reaches 15-18 GB/s and 170-210 GFLOP/s (measured on the 2-core AMD EPYC
this project is tested on). Packing costs one copy of the weights, so it pays off whenever a packed
weight serves at least one forward pass; weights are packed on entering ``packed_linears`` and the
layers are restored on leaving it, so an optimizer step between two uses is always picked up.

The backward pass stays PyTorch's (``grad_out @ W`` and ``grad_out.T @ x``), so gradients are the
ordinary ones; only the forward product runs through the packed weight.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _PackedLinearFunction(torch.autograd.Function):
    """``x @ W.T + b`` forward through a packed weight, the standard gradients backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = flat_grad.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b, None


def packing_supported(model: nn.Module) -> bool:
    """True when every linear weight is a whole fp32 CPU tensor and this PyTorch has oneDNN.

    ZeRO-3 partitions (their weights are gathered only inside the forward), GPU tensors and half
    precision keep PyTorch's own kernels.
    """
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    return bool(linears) and all(
        m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 and m.weight.dim() == 2
        and m.weight.numel() > 0 and not hasattr(m.weight, "ds_id")
        for m in linears
    )


def _packed_forward(layer: nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return nn.functional.linear(x, layer.weight, layer.bias)
        needs_grad = any(t is not None and t.requires_grad for t in (x, layer.weight, layer.bias))
        if not (torch.is_grad_enabled() and needs_grad):
            return torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")
        return _PackedLinearFunction.apply(x, layer.weight, layer.bias, packed)

    return forward


class PackedWeights:
    """oneDNN-packed copies of a model's linear weights, valid for as long as those weights do not change.

    A frozen model (PPO's reference and reward models) is packed once for the whole run instead of on
    every use, at the cost of a second copy of its linear weights.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if type(m) is nn.Linear]
        with torch.no_grad():
            self.packs = [torch.ops.mkldnn._reorder_linear_weight(m.weight.detach()) for m in self.layers]


@contextmanager
def packed_linears(model: nn.Module, enabled: bool = True, weights: PackedWeights | None = None) -> Iterator[nn.Module]:
    """Within the block, ``model``'s ``nn.Linear`` layers use packed weights: ``weights``, or packed on entry.

    A no-op when ``enabled`` is False or ``packing_supported`` says no. Weights must not change inside
    the block (pack again after an optimizer step by entering the block again).
    """
    if not enabled or not packing_supported(model):
        yield model
        return
    weights = weights or PackedWeights(model)
    for layer, packed in zip(weights.layers, weights.packs):
        layer.forward = _packed_forward(layer, packed)
    try:
        yield model
    finally:
        for layer in weights.layers:
            del layer.forward
