"""Padding-free forward passes (``--packing``): a batch's rows laid end to end as one sequence, positions
restarting at 0 in every row, so no work is spent on padding and each row's numbers are its padded forward's.

This is the plain path, the one GPUs take: transformers sees the restarting ``position_ids`` with no attention
mask and keeps attention inside each row (flash-attention's variable-length kernel, or a block-diagonal mask for
SDPA and eager). On CPU the speed layer (``cpu_fast.packed_rows``) attends row by row instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.utils.model.lm_forward import position_ids_from_mask
from chatrlhf.utils.model.unwrap import base_model

HiddenStates = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, input_ids, attention_mask) -> (B, T, H)``: the backbone's final hidden states of a padded batch
(zeros at the padding when packed), however they are computed."""


@dataclass(frozen=True)
class PackedRows:
    """The real tokens of a (B, W) batch as one (1, N) sequence; row ``r`` is ``spans[r] = (start, end)``."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    spans: list[tuple[int, int]]


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedRows:
    real = attention_mask != 0
    lengths = real.sum(1).tolist()
    ends = torch.tensor(lengths).cumsum(0).tolist()
    positions = (real.long().cumsum(1) - 1)[real]
    return PackedRows(input_ids[real].unsqueeze(0), positions.unsqueeze(0),
                      [(end - length, end) for length, end in zip(lengths, ends)])


def unpack(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(1, N, H) or (N, H) hidden states of packed rows back in their (B, W, H) padded places, zeros elsewhere."""
    real = attention_mask != 0
    out = hidden.new_zeros(*attention_mask.shape, hidden.shape[-1])
    out[real] = hidden.reshape(-1, hidden.shape[-1])
    return out


def backbone_of(model: nn.Module) -> nn.Module:
    """The decoder stack under the LM or score head (works on the plain, LoRA-wrapped or engine module)."""
    hf = base_model(model)
    return getattr(hf, hf.base_model_prefix)


def padded_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone over the padded batch, positions counted over real tokens (left padding is harmless)."""
    return backbone_of(model)(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids_from_mask(attention_mask), use_cache=False)[0]


def packed_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone over the batch's rows packed end to end, through transformers' own packed-sequence
    attention (restarting position ids, no mask), put back in the padded layout."""
    rows = pack_rows(input_ids, attention_mask)
    hidden = backbone_of(model)(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False)[0]
    return unpack(hidden, attention_mask)


@torch.no_grad()
def packing_mismatch(model: nn.Module, hidden_states: HiddenStates, vocab_size: int) -> float:
    """The largest difference between ``hidden_states`` and the padded forward on two short rows of unequal
    length: 0 (to rounding) when packing keeps attention inside each row for this model family."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids = torch.arange(14, device=device).remainder(max(vocab_size - 1, 1)).view(2, 7) + 1
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        real = mask.bool()
        got = hidden_states(model, ids, mask)[real].float()
        want = padded_hidden(model, ids, mask)[real].float()
        return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))
    finally:
        model.train(was_training)
