"""Rollouts: sampling answers with a KV cache, every row stopping at its end-of-text token.

A hand-written loop instead of ``generate``: the per-token overhead of a general-purpose generator
dominates small models, and PPO needs only sampling with temperature, top-k and top-p. The forward
backend (``forward_backend``) picks the prefill and the decode step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from chatrlhf.step3_rlhf.config import GenerationConfig
from chatrlhf.utils import device
from chatrlhf.utils.model.decoding import DecodeStep, cache_kwargs
from chatrlhf.utils.model.lm_forward import position_ids_from_mask


@dataclass
class Rollout:
    """Prompts (left-padded to width ``prompt_width``) followed by answers (right-padded after their end)."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompt_width: int

    @property
    def answers(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width :]

    @property
    def answer_lengths(self) -> torch.Tensor:
        return self.answer_mask.sum(1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and the smallest set holding ``top_p`` of the mass."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row from the (unnormalised) distributions ``probs`` by inverting their CDF.

    Same distribution as ``torch.multinomial(probs, 1)``, at a fraction of its cost on a large
    vocabulary: one cumulative sum and one binary search instead of an exponential draw per entry.
    """
    cdf = probs.cumsum(-1)
    draw = (1.0 - torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def answer_mask_from(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including each row's first end-of-text token, 0 after it."""
    is_eos = (tokens == eos_id).long()
    ended_before = is_eos.cumsum(1) - is_eos
    return (ended_before == 0).long()


def plain_prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                  capacity: int) -> tuple[torch.Tensor, Cache]:
    """The same through the model's own forward: one padded pass into transformers' own cache."""
    return prompt_pass(model, prompt_ids, prompt_mask, DynamicCache())


Prefill = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, Cache]]


def prompt_pass(model, ids: torch.Tensor, mask: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
    """One forward pass of left-padded prompts into an empty ``cache``; the logits after each prompt."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    return out.logits[:, -1], cache


def answer_tokens(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: GenerationConfig,
                  decode: DecodeStep, prefill: Prefill, *, eos_id: int, pad_id: int, lockstep: bool) -> torch.Tensor:
    """The answer tokens, (B, answer length), pad after a row's end-of-text token.

    In ``lockstep`` every rank keeps decoding until all ranks' rows have ended (ZeRO-3 gathers weights
    with collectives at every step).
    """
    batch, width = prompt_ids.shape
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, cfg.max_answer_seq_len)], dim=1)
    logits, cache = prefill(model, prompt_ids, prompt_mask, width + cfg.max_answer_seq_len)
    next_position = prompt_mask.sum(1, keepdim=True)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens: list[torch.Tensor] = []
    for step in range(cfg.max_answer_seq_len):
        logits = logits.float()
        if step < cfg.min_answer_seq_len:
            logits[:, eos_id] = float("-inf")
        if cfg.temperature <= 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
            token = sample_tokens(probs)
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        finished |= token == eos_id
        if step + 1 == cfg.max_answer_seq_len:
            break
        done = bool(finished.all())
        if device.all_ranks(done) if lockstep else done:
            break
        logits = decode(token, next_position, mask[:, : width + step + 1], cache)
        next_position = next_position + 1
    return torch.stack(tokens, dim=1)


def rollout_of(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, tokens: torch.Tensor, *, eos_id: int,
               pad_id: int) -> Rollout:
    """Prompts and their generated tokens as a rollout: each answer cut after its first end-of-text token."""
    answer_mask = answer_mask_from(tokens, eos_id)
    answers = tokens.masked_fill(answer_mask == 0, pad_id)
    return Rollout(
        sequences=torch.cat([prompt_ids, answers], dim=1),
        attention_mask=torch.cat([prompt_mask, answer_mask], dim=1),
        answer_mask=answer_mask,
        prompt_width=prompt_ids.shape[1],
    )
