"""Forward passes over a padded batch's rows laid end to end: no padding, one product per linear layer.

PPO scores and trains on rollouts whose prompts differ in length by up to ten times. Padding them to
one width wastes a third of the work; cutting them into length groups (``length_groups``) wastes
little padding but runs each linear layer as several smaller products. Packed, the rows form one
sequence of only their real tokens: every linear layer is one product over exactly those tokens, and
only attention is computed row by row (each row's span, causal), through an attention function
registered with transformers. Positions restart at 0 in every row, as ``position_ids_from_mask``
gives them for a padded row, so each row's numbers are those of its padded forward.

OPT and LLaMA-family backbones are served (their positions come from ``position_ids`` and their
attention goes through transformers' attention interface); ``packing_supported`` says when.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from chatrlhf.utils.model.cpu_fast.last_layer import outputs_at, shared_kv
from chatrlhf.utils.model.cpu_fast.shortcuts import assert_same, fits, left_padded_prompts, shortcut, tiny_model
from chatrlhf.utils.model.packing import PackedRows, backbone_of, pack_rows, unpack
from chatrlhf.utils.model.unwrap import base_model
from chatrlhf.utils.model.zero3 import lockstep_needed

ATTENTION = "chatrlhf_packed_rows"
FAMILIES = ("opt", "llama")


class SpanQueries:
    """Queries at ``ranges[r] = (first, stop)`` inside row ``r``'s span: the final layer's output is those only."""

    def __init__(self, rows: PackedRows, ranges: list[tuple[int, int]]) -> None:
        self.spans, self.ranges = rows.spans, ranges
        index = [torch.arange(first, stop) for first, stop in ranges]
        self.index = torch.cat(index).to(rows.input_ids.device) if index else rows.input_ids.new_zeros(0)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def attend(self, mask: torch.Tensor | None, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float) -> torch.Tensor:
        keys, values = shared_kv(query, keys, values)
        lengths = [end - start for start, end in self.spans]
        counts = [stop - first for first, stop in self.ranges]
        outputs = []
        for (start, _), (first, _), row_query, row_keys, row_values in zip(
                self.spans, self.ranges, query.split(counts, dim=2), keys.split(lengths, dim=2),
                values.split(lengths, dim=2)):
            if row_query.shape[2] == 0:
                continue
            causal = torch.ones(row_query.shape[2], row_keys.shape[2], dtype=torch.bool,
                                device=query.device).tril(first - start)
            outputs.append(F.scaled_dot_product_attention(row_query, row_keys, row_values, attn_mask=causal,
                                                          scale=scale))
        batch, heads, queries, dim = query.shape
        if not outputs:
            return query.new_zeros(batch, 0, heads * dim)
        return torch.cat(outputs, dim=2).transpose(1, 2).reshape(batch, queries, heads * dim)

    def merge(self, hidden: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return tail


def _span_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    packed_spans: list[tuple[int, int]] | None = None, **_) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: causal attention within each packed row's span."""
    if packed_spans is None:
        raise RuntimeError(f"the {ATTENTION!r} attention needs the packed row spans (pass packed_spans=...)")
    key, value = shared_kv(query, key, value)
    lengths = [end - start for start, end in packed_spans]
    # split(), not slices: its backward is one concatenation, where each slice's would fill a full-size zero tensor
    outputs = [F.scaled_dot_product_attention(*row, dropout_p=dropout, is_causal=True, scale=scaling)
               for row in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(outputs, dim=2).transpose(1, 2), None


def packing_supported(model: nn.Module) -> bool:
    """A family served here, not ZeRO-3 across ranks (whose lockstep forward passes keep one padded batch),
    and packed rows that match this transformers' padded forward."""
    model_type = base_model(model).config.model_type
    return model_type in FAMILIES and not lockstep_needed(model) and fits("packed_rows", model_type)


@contextmanager
def _span_attention_installed(config: PretrainedConfig) -> Iterator[None]:
    """Attention goes through ``_span_attention`` within the block: transformers reads the config per call."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _span_attention)
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_hidden(model: nn.Module, rows: PackedRows, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """The backbone's final hidden states at ``ranges`` of each row (positions in the packed sequence), (Q, H).

    The final layer runs at those positions only where ``outputs_at`` can trim it.
    """
    hf = base_model(model)
    backbone = getattr(hf, hf.base_model_prefix)
    queries = SpanQueries(rows, ranges)
    with _span_attention_installed(hf.config), outputs_at(model, queries) as trimmed:
        hidden = backbone(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False,
                          packed_spans=rows.spans)[0]
    return hidden[0] if trimmed else queries.select(hidden)[0]


def span_packed_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``packing.HiddenStates`` on CPU: the batch's rows packed end to end, attention computed row by row (no
    N x N mask), put back in the padded layout (``--packing`` in steps 1 and 2)."""
    rows = pack_rows(input_ids, attention_mask)
    with _span_attention_installed(base_model(model).config):
        hidden = backbone_of(model)(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False,
                                    packed_spans=rows.spans)[0]
    return unpack(hidden, attention_mask)


@shortcut("packed_rows", library="transformers")
@torch.no_grad()
def _probe_packed_rows(model_family: str | None) -> None:
    """Packed rows' final hidden states at each row's last two tokens against the padded forward's."""
    from chatrlhf.utils.model.lm_forward import position_ids_from_mask

    model = tiny_model(model_family)
    ids, mask = left_padded_prompts()
    rows = pack_rows(ids, mask)
    got = packed_hidden(model, rows, [(end - 2, end) for _, end in rows.spans])
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)[0]
    assert_same(got, hidden[:, -2:].reshape(-1, hidden.shape[-1]))
