"""One decode step of an OPT- or LLaMA-family model as a flat loop, without transformers' per-call machinery.

At a few rows and tens of millions of parameters, a decode step's matrix products take a few
milliseconds on a CPU, and the Hugging Face forward's module calls, mask building, attention dispatch
and output objects take as long again. ``fast_decoder`` runs the same arithmetic on the same KV cache:
the q/k/v products (and LLaMA's gate/up products) fused into one oneDNN-packed weight each, attention
written out for a single query, norms and activations the model's own modules.

It serves plain fp32 CPU models of the two families only (checked below); for anything else it
returns None and the caller keeps the model's own forward. Weights are packed when the decoder is
built, so build one per rollout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.llama.modeling_llama import rotate_half

from chatrlhf.utils.model.cpu_fast.packed_linear import onednn_product, packing_supported
from chatrlhf.utils.model.cpu_fast.shortcuts import assert_same, family, fits, left_padded_prompts, shortcut, tiny_model
from chatrlhf.utils.model.decoding import DecodeStep, cache_kwargs, model_step
from chatrlhf.utils.model.unwrap import base_model


class _Packed:
    """``x @ W.T + b`` through a oneDNN-packed copy of one or more linear layers stacked along outputs."""

    def __init__(self, *layers: nn.Linear) -> None:
        self.bias = None if layers[0].bias is None else _stacked([layer.bias for layer in layers])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(_stacked([layer.weight for layer in layers]))
        self.sizes = [layer.out_features for layer in layers]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_product(x, self.weight, self.bias)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)


def _stacked(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The parameters concatenated along dim 0; a single one as it is (packing copies it anyway)."""
    tensors = [param.detach() for param in parameters]
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            scale: float) -> torch.Tensor:
    """Attention of one query per row, (B, H, D), over cached (B, KV, L, D) keys/values; grouped heads share them.

    The heads sharing a key/value head are that head's queries, so GQA needs no repeated keys. ``mask``
    is boolean, (B, 1, 1, L), True where a key may be attended. Returns (B, H * D).
    """
    batch, heads, dim = query.shape
    kv_heads = keys.shape[1]
    query = query.view(batch, kv_heads, heads // kv_heads, dim)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale).reshape(batch, heads * dim)


def _visible(attention_mask: torch.Tensor) -> torch.Tensor:
    """The keys each row may attend, as SDPA's boolean mask (about a fifth faster than an additive one here)."""
    return (attention_mask != 0)[:, None, None, :]


def _plain_linears(*layers: nn.Module) -> bool:
    return all(type(layer) is nn.Linear for layer in layers)


def _opt_decoder(hf: nn.Module) -> DecodeStep | None:
    config, decoder = hf.config, hf.model.decoder
    if not config.do_layer_norm_before:
        return None
    blocks = []
    for layer in decoder.layers:
        attn = layer.self_attn
        if not _plain_linears(attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, layer.fc1, layer.fc2):
            return None
        blocks.append((layer, _Packed(attn.q_proj, attn.k_proj, attn.v_proj), _Packed(attn.out_proj),
                       _Packed(layer.fc1), _Packed(layer.fc2), attn.scaling))
    ends = [m for m in (decoder.project_in, decoder.project_out, hf.lm_head) if m is not None]
    if not _plain_linears(*ends):
        return None
    project_in, project_out = (_Packed(m) if m is not None else None for m in (decoder.project_in, decoder.project_out))
    head = _Packed(hf.lm_head)
    heads = config.num_attention_heads

    def step(tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
             cache: Cache) -> torch.Tensor:
        batch = tokens.shape[0]
        x = decoder.embed_tokens(tokens)
        if project_in is not None:
            x = project_in(x)
        x = x + decoder.embed_positions(attention_mask, 0, position_ids=position_ids[:, -1])
        mask = _visible(attention_mask)
        for index, (layer, qkv, out, fc1, fc2, scaling) in enumerate(blocks):
            q, k, v = qkv.split(layer.self_attn_layer_norm(x))
            k, v = (t.view(batch, heads, 1, -1) for t in (k, v))
            keys, values = cache.update(k, v, index)
            x = x + out(_attend(q.view(batch, heads, -1), keys, values, mask, scaling))
            x = x + fc2(layer.activation_fn(fc1(layer.final_layer_norm(x))))
        if decoder.final_layer_norm is not None:
            x = decoder.final_layer_norm(x)
        if project_out is not None:
            x = project_out(x)
        return head(x)

    return step


def _llama_decoder(hf: nn.Module) -> DecodeStep | None:
    config, body = hf.config, hf.model
    if getattr(config, "pretraining_tp", 1) != 1:
        return None
    blocks = []
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if not _plain_linears(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
                              mlp.down_proj):
            return None
        blocks.append((layer, _Packed(attn.q_proj, attn.k_proj, attn.v_proj), _Packed(attn.o_proj),
                       _Packed(mlp.gate_proj, mlp.up_proj), _Packed(mlp.down_proj), attn.scaling, attn.head_dim))
    if not _plain_linears(hf.lm_head):
        return None
    head = _Packed(hf.lm_head)

    def step(tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
             cache: Cache) -> torch.Tensor:
        batch = tokens.shape[0]
        x = body.embed_tokens(tokens)
        cos, sin = body.rotary_emb(x, position_ids)
        cos, sin = cos.view(batch, 1, -1), sin.view(batch, 1, -1)
        mask = _visible(attention_mask)
        for index, (layer, qkv, out, gate_up, down, scaling, head_dim) in enumerate(blocks):
            q, k, v = qkv.split(layer.input_layernorm(x))
            q, k = (_rotate(t.view(batch, -1, head_dim), cos, sin) for t in (q, k))
            keys, values = cache.update(k.unsqueeze(2), v.view(batch, -1, 1, head_dim), index)
            x = x + out(_attend(q, keys, values, mask, scaling))
            gate, up = gate_up.split(layer.post_attention_layernorm(x))
            x = x + down(layer.mlp.act_fn(gate) * up)
        return head(body.norm(x))

    return step


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of (B, H, D) vectors, as transformers' ``apply_rotary_pos_emb``."""
    return x * cos + rotate_half(x) * sin


FAMILIES = {"OPTForCausalLM": _opt_decoder, "LlamaForCausalLM": _llama_decoder}


@torch.no_grad()
def fast_decoder(model: nn.Module) -> DecodeStep | None:
    """``step(tokens (B,), position_ids (B, 1), attention_mask (B, L), cache) -> next-token logits (B, V)``, or None.

    ``cache`` already holds the earlier positions (the prefill runs through the model's own forward)
    and receives the new one; ``attention_mask`` covers the cache plus the new token. None unless the
    model is an OPT or LLaMA causal LM in eval mode whose projections are plain fp32 CPU ``nn.Linear``
    layers (not LoRA, not ZeRO-3 partitions), and the flat step matches this transformers' own.
    """
    hf = base_model(model)
    build = FAMILIES.get(type(hf).__name__)
    if build is None or hf.training or not packing_supported(hf) or not fits("flat_decoder", family(hf)):
        return None
    return build(hf)



@shortcut("flat_decoder", library="transformers")
@torch.no_grad()
def _probe_flat_decoder(model_family: str | None) -> None:
    """Two decode steps of the flat decoder against the model's own, after the same left-padded prefill."""
    from chatrlhf.utils.model.lm_forward import position_ids_from_mask

    model = tiny_model(model_family)
    step = fast_decoder(model)
    if step is None:
        raise RuntimeError("the flat decoder declined the probe model")
    ids, mask = left_padded_prompts()
    tokens = torch.randint(2, 64, (2, ids.shape[0]))

    def run(decode: DecodeStep) -> torch.Tensor:
        cache = DynamicCache()
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
              **cache_kwargs(model, cache))
        seen, position, full = [], mask.sum(1, keepdim=True), mask
        for token in tokens:
            full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
            seen.append(decode(token, position, full, cache))
            position = position + 1
        return torch.stack(seen)

    assert_same(run(step), run(model_step(model)))
