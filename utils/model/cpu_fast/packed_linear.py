"""oneDNN matrix products for every linear layer of a model on the CPU, forward and backward.

PyTorch's default CPU matmul (MKL) for ``x @ W.T`` reaches 5-9 GB/s of weight traffic on the few rows
of a decode step and 110-170 GFLOP/s on a training batch; oneDNN's product reaches 15-18 GB/s with
the weight reordered once into its blocked layout ("packed"), and 180-210 GFLOP/s on training-size
batches even from the plain weight (measured on the 2-core AMD EPYC this project is tested on).

Two ways in, both restoring the layers on leaving the block:
- ``packed_linears``: forward passes through packed weights. Packing costs one copy of the weights,
  so it pays off for generation (many small products per weight); an optimizer step between two
  uses is picked up by entering the block again.
- ``onednn_linears``: scoring and training passes through the plain weights, nothing copied. The backward's
  input gradient ``grad_out @ W`` also runs through oneDNN (on the transposed view of the weight);
  the weight gradient stays PyTorch's ``grad_out.T @ x``. Gradients are the ordinary ones up to
  floating-point rounding.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from chatrlhf.utils.model.cpu_fast.shortcuts import assert_same, fits, shortcut
from chatrlhf.utils.model.zero3 import zero3_partitioned


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN; ``weight`` is plain (any strides) or packed."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """``x @ W.T + b`` through oneDNN (from ``packed`` when given, else the plain weight), oneDNN backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_product(x, weight if packed is None else packed, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_product(grad_out, weight.t(), None)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = flat_grad.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b, None


def packing_supported(model: nn.Module) -> bool:
    """True when every linear weight is a whole fp32 CPU tensor and this PyTorch's oneDNN products check out.

    ZeRO-3 partitions (their weights are gathered only inside the forward), GPU tensors and half
    precision keep PyTorch's own kernels.
    """
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    return bool(linears) and all(
        m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 and m.weight.dim() == 2
        and m.weight.numel() > 0 for m in linears
    ) and not zero3_partitioned(model) and fits("onednn")


@shortcut("onednn", library="torch")
def _probe_onednn(_: str | None) -> None:
    """Plain and packed oneDNN products, and the input and weight gradients, against ``F.linear``'s."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this PyTorch is built without oneDNN (mkldnn)")
    layer = nn.Linear(8, 6)
    x = torch.randn(2, 3, 8)
    with torch.enable_grad():
        plain_x = x.clone().requires_grad_(True)
        want = nn.functional.linear(plain_x, layer.weight, layer.bias)
        want_grads = torch.autograd.grad(want.square().sum(), (plain_x, layer.weight))
        fast_x = x.clone().requires_grad_(True)
        with _installed([layer], [None]):
            got = layer(fast_x)
        got_grads = torch.autograd.grad(got.square().sum(), (fast_x, layer.weight))
    assert_same(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads):
        assert_same(got_grad, want_grad)
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())
        with _installed([layer], [packed]):
            assert_same(layer(x), want.detach())


def _onednn_forward(layer: nn.Linear, packed: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return nn.functional.linear(x, layer.weight, layer.bias)
        needs_grad = any(t is not None and t.requires_grad for t in (x, layer.weight, layer.bias))
        if not (torch.is_grad_enabled() and needs_grad):
            return onednn_product(x, layer.weight if packed is None else packed, layer.bias)
        return _OneDNNLinearFunction.apply(x, layer.weight, layer.bias, packed)

    return forward


@contextmanager
def _installed(layers: list[nn.Linear], packs: list[torch.Tensor | None]) -> Iterator[None]:
    """Each layer's forward replaced for the block; blocks nest (the outer one's forward comes back)."""
    outer = [vars(layer).get("forward") for layer in layers]
    for layer, packed in zip(layers, packs):
        layer.forward = _onednn_forward(layer, packed)
    try:
        yield
    finally:
        for layer, previous in zip(layers, outer):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s ``nn.Linear`` layers run their products through weights packed on entry.

    A no-op where ``packing_supported`` says no. Weights must not change inside
    the block (pack again after an optimizer step by entering the block again).
    """
    if not packing_supported(model):
        yield model
        return
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    with torch.no_grad():
        packs = [torch.ops.mkldnn._reorder_linear_weight(m.weight.detach()) for m in layers]
    with _installed(layers, packs):
        yield model


@contextmanager
def onednn_linears(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s ``nn.Linear`` layers run forward and backward products through oneDNN.

    Nothing is copied, so weights may change inside the block. A no-op where ``packing_supported``
    says no.
    """
    if not packing_supported(model):
        yield model
        return
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    with _installed(layers, [None] * len(layers)):
        yield model
