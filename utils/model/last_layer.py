"""Forward passes whose final decoder layer runs only for the positions a caller reads.

Every layer's keys and values are needed at every position, but the final layer's queries, attention
output and MLP only where its output is used: PPO reads the answer positions (about half of a rollout
on the peer workload) and the reward model one position per row. Skipping the rest of that layer
saves about a sixth of one layer's products per skipped position, with the same numbers at the
positions that are computed.

OPT (pre-norm) and LLaMA-family backbones are supported; other families, and training with dropout,
run the ordinary forward.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from chatrlhf.training.lora import base_model
from chatrlhf.utils.model.zero3 import lockstep_needed


def _attend(layer_attn_mask: torch.Tensor | None, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            first: int, scale: float) -> torch.Tensor:
    """Attention of queries at positions ``first..T-1`` over all T keys; returns (B, T - first, H * D)."""
    batch, heads, queries, dim = query.shape
    groups = heads // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    if layer_attn_mask is None:
        mask = torch.ones(queries, keys.shape[2], dtype=torch.bool, device=query.device).tril(diagonal=first)
    else:
        mask = layer_attn_mask[:, :, first:, :]
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, queries, heads * dim)


class _OPTTail(nn.Module):
    def __init__(self, layer: nn.Module, first: int) -> None:
        super().__init__()
        self.layer, self.first = layer, first

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, **_) -> torch.Tensor:
        layer, attn, first = self.layer, self.layer.self_attn, self.first
        _refuse_filled(past_key_values, attn.layer_idx)
        batch, length, _ = hidden_states.shape
        normed = layer.self_attn_layer_norm(hidden_states)
        query = (attn.q_proj(normed[:, first:]) * attn.scaling).view(batch, length - first, attn.num_heads, -1)
        keys, values = (proj(normed).view(batch, length, attn.num_heads, -1).transpose(1, 2)
                        for proj in (attn.k_proj, attn.v_proj))
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, attn.layer_idx)
        mixed = _attend(attention_mask, query.transpose(1, 2), keys, values, first, 1.0)
        tail = hidden_states[:, first:] + attn.out_proj(mixed)
        tail = tail + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(tail))))
        return torch.cat([hidden_states[:, :first], tail], dim=1)


class _LlamaTail(nn.Module):
    def __init__(self, layer: nn.Module, first: int) -> None:
        super().__init__()
        self.layer, self.first = layer, first

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, past_key_values=None,
                **_) -> torch.Tensor:
        layer, attn, first = self.layer, self.layer.self_attn, self.first
        _refuse_filled(past_key_values, attn.layer_idx)
        batch, length, _ = hidden_states.shape
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        normed = layer.input_layernorm(hidden_states)
        query = attn.q_proj(normed[:, first:]).view(batch, length - first, -1, attn.head_dim).transpose(1, 2)
        keys, values = (proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
                        for proj in (attn.k_proj, attn.v_proj))
        query = query * cos[:, :, first:] + rotate_half(query) * sin[:, :, first:]
        keys = keys * cos + rotate_half(keys) * sin
        if past_key_values is not None:
            keys, values = past_key_values.update(keys, values, attn.layer_idx)
        mixed = _attend(attention_mask, query, keys, values, first, attn.scaling)
        tail = hidden_states[:, first:] + attn.o_proj(mixed)
        tail = tail + layer.mlp(layer.post_attention_layernorm(tail))
        return torch.cat([hidden_states[:, :first], tail], dim=1)


def _refuse_filled(cache, layer_idx: int) -> None:
    """Queries start at ``first`` of the current positions, which matches the keys only if nothing came before."""
    if cache is not None and cache.get_seq_length(layer_idx) > 0:
        raise RuntimeError("outputs_from() serves full forward passes and prefills of an empty cache; a decode "
                           "step over a filled cache needs every position of the final layer")


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


@contextmanager
def outputs_from(model: nn.Module, first: int) -> Iterator[nn.Module]:
    """Within the block, the final layer computes its output at positions ``first..`` only.

    Positions before ``first`` hold the final layer's input instead: callers must not read them.
    A no-op for unsupported families, for ``first <= 0``, while dropout is active in training, and for
    ZeRO-3 partitions across ranks (every rank must make the same module calls; ``lockstep_needed``).
    """
    found = _decoder_layers(model) if first > 0 and not _dropout_active(model) and not lockstep_needed(model) else None
    if found is None:
        yield model
        return
    layers, tail = found
    last = layers[-1]
    layers[-1] = tail(last, first)
    try:
        yield model
    finally:
        layers[-1] = last
