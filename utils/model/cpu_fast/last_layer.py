"""Forward passes whose final decoder layer runs only for the positions a caller reads.

Every layer's keys and values are needed at every position, but the final layer's queries, attention
output and MLP only where its output is used: PPO reads the answer positions (about half of a rollout
on the peer workload) and the reward model one position per row. Skipping the rest of that layer
saves about a sixth of one layer's products per skipped position, with the same numbers at the
positions that are computed.

Two layouts are served: a padded batch whose callers read columns ``first..`` (``outputs_from``) and
rows packed end to end whose callers read given spans (``outputs_at``, see ``packed_rows``).
OPT (pre-norm) and LLaMA-family backbones are supported; other families, and training with dropout,
run the ordinary forward.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from chatrlhf.utils.model.cpu_fast.shortcuts import assert_same, family, fits, left_padded_prompts, shortcut, tiny_model
from chatrlhf.utils.model.unwrap import base_model
from chatrlhf.utils.model.zero3 import lockstep_needed


def shared_kv(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values repeated for grouped-query heads, so every query head has its own."""
    groups = query.shape[1] // keys.shape[1]
    if groups == 1:
        return keys, values
    return keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)


class Queries(Protocol):
    """Where the final layer computes its output, and how those queries attend."""

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, ...) at the query positions."""

    def attend(self, mask: torch.Tensor | None, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Attention of (B, H, Q, D) queries over (B, KV, T, D) keys; returns (B, Q, H * D)."""

    def merge(self, hidden: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """The layer's output from its input and its output at the query positions."""


class ColumnsFrom:
    """A padded batch's columns ``first..T-1``; the output keeps its width (earlier columns hold the input)."""

    def __init__(self, first: int) -> None:
        self.first = first

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.first :]

    def attend(self, mask: torch.Tensor | None, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               scale: float) -> torch.Tensor:
        batch, heads, queries, dim = query.shape
        keys, values = shared_kv(query, keys, values)
        if mask is None:
            mask = torch.ones(queries, keys.shape[2], dtype=torch.bool, device=query.device).tril(diagonal=self.first)
        else:
            mask = mask[:, :, self.first :, :]
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(batch, queries, heads * dim)

    def merge(self, hidden: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return torch.cat([hidden[:, : self.first], tail], dim=1)


class _OPTTail(nn.Module):
    def __init__(self, layer: nn.Module, queries: Queries) -> None:
        super().__init__()
        self.layer, self.queries = layer, queries

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, cache=None, **_) -> torch.Tensor:
        layer, attn, queries = self.layer, self.layer.self_attn, self.queries
        past_key_values = _filled_check(cache if cache is not None else past_key_values, attn.layer_idx)
        batch, length, _ = hidden_states.shape
        normed = layer.self_attn_layer_norm(hidden_states)
        query = (attn.q_proj(queries.select(normed)) * attn.scaling).view(batch, -1, attn.num_heads, attn.head_dim)
        keys, values = (proj(normed).view(batch, length, attn.num_heads, -1).transpose(1, 2)
                        for proj in (attn.k_proj, attn.v_proj))
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, attn.layer_idx)
        mixed = queries.attend(attention_mask, query.transpose(1, 2), keys, values, 1.0)
        tail = queries.select(hidden_states) + attn.out_proj(mixed)
        tail = tail + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(tail))))
        return queries.merge(hidden_states, tail)


class _LlamaTail(nn.Module):
    def __init__(self, layer: nn.Module, queries: Queries) -> None:
        super().__init__()
        self.layer, self.queries = layer, queries

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, past_key_values=None,
                cache=None, **_) -> torch.Tensor:
        layer, attn, queries = self.layer, self.layer.self_attn, self.queries
        past_key_values = _filled_check(cache if cache is not None else past_key_values, attn.layer_idx)
        batch, length, _ = hidden_states.shape
        cos, sin = position_embeddings
        normed = layer.input_layernorm(hidden_states)
        query = attn.q_proj(queries.select(normed)).view(batch, -1, attn.config.num_attention_heads, attn.head_dim)
        query = query * queries.select(cos).unsqueeze(2) + rotate_half(query) * queries.select(sin).unsqueeze(2)
        keys, values = (proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
                        for proj in (attn.k_proj, attn.v_proj))
        keys = keys * cos.unsqueeze(1) + rotate_half(keys) * sin.unsqueeze(1)
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, attn.layer_idx)
        mixed = queries.attend(attention_mask, query.transpose(1, 2), keys, values, attn.scaling)
        tail = queries.select(hidden_states) + attn.o_proj(mixed)
        tail = tail + layer.mlp(layer.post_attention_layernorm(tail))
        return queries.merge(hidden_states, tail)


def _filled_check(cache, layer_idx: int):
    """The layer's cache (transformers 5.24 passes it as ``cache``, earlier ones as ``past_key_values``), if empty.

    Queries start at ``first`` of the current positions, which matches the keys only if nothing came before.
    """
    if cache is not None and cache.get_seq_length(layer_idx) > 0:
        raise RuntimeError("outputs_from() serves full forward passes and prefills of an empty cache; a decode "
                           "step over a filled cache needs every position of the final layer")
    return cache


def _decoder_layers(model: nn.Module) -> tuple[nn.ModuleList, type[nn.Module]] | None:
    """The backbone's decoder layers and the tail that replaces the last one, for the families supported."""
    hf = base_model(model)
    config = hf.config
    backbone = getattr(hf, "base_model", hf)
    if config.model_type == "opt" and config.do_layer_norm_before:
        return backbone.decoder.layers, _OPTTail
    if config.model_type == "llama" and getattr(config, "pretraining_tp", 1) == 1:
        return backbone.layers, _LlamaTail
    return None


def _dropout_active(model: nn.Module) -> bool:
    config = base_model(model).config
    return model.training and any((getattr(config, key, 0) or 0) > 0
                                  for key in ("dropout", "attention_dropout", "activation_dropout"))


def trimmable(model: nn.Module) -> bool:
    """Whether the final layer can be trimmed: a supported family, no active dropout, no lockstep ZeRO-3,
    and the trimmed layer matches this transformers' own."""
    return (not _dropout_active(model) and not lockstep_needed(model) and _decoder_layers(model) is not None
            and fits("last_layer", family(model)))


@contextmanager
def outputs_at(model: nn.Module, queries: Queries) -> Iterator[bool]:
    """Within the block, the final layer computes its output at ``queries`` only; yields whether it does.

    A no-op (yielding False) unless ``trimmable(model)``: other families, dropout active in training,
    and ZeRO-3 partitions across ranks (every rank must make the same module calls) run the full layer.
    """
    if not trimmable(model):
        yield False
        return
    layers, tail = _decoder_layers(model)
    last = layers[-1]
    layers[-1] = tail(last, queries)
    try:
        yield True
    finally:
        layers[-1] = last


@contextmanager
def outputs_from(model: nn.Module, first: int) -> Iterator[nn.Module]:
    """Within the block, the final layer computes its output at columns ``first..`` only.

    Columns before ``first`` hold the final layer's input instead: callers must not read them. A no-op
    for ``first <= 0`` and wherever ``outputs_at`` is.
    """
    if first <= 0:
        yield model
        return
    with outputs_at(model, ColumnsFrom(first)):
        yield model


@shortcut("last_layer", library="transformers")
@torch.no_grad()
def _probe_trimmed(model_family: str | None) -> None:
    """A trimmed prefill against the full one: the read logits and every layer's cached keys and values."""
    from transformers.cache_utils import DynamicCache

    from chatrlhf.utils.model.decoding import cache_kwargs
    from chatrlhf.utils.model.lm_forward import position_ids_from_mask

    model = tiny_model(model_family)
    ids, mask = left_padded_prompts()
    first = 2

    def prefill(trim: bool) -> tuple[torch.Tensor, DynamicCache]:
        cache = DynamicCache()
        with outputs_from(model, first if trim else 0):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                           use_cache=True, **cache_kwargs(model, cache)).logits
        return logits[:, first:], cache

    got, got_cache = prefill(trim=True)
    want, want_cache = prefill(trim=False)
    assert_same(got, want)
    layers = len(want_cache.layers)
    if len(got_cache.layers) != layers:
        raise RuntimeError(f"the trimmed layer left {len(got_cache.layers)} of {layers} layers in the cache")
    for got_layer, want_layer in zip(got_cache.layers, want_cache.layers):
        assert_same(got_layer.keys, want_layer.keys)
        assert_same(got_layer.values, want_layer.values)
