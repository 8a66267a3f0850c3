"""The plain decode step: one new token per row through the model's own forward, on any family and device.

The CPU speed paths (``cpu_fast/``) replace it where they fit and are tested against it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache as memoized

import torch
from torch import nn
from transformers.cache_utils import Cache

from chatrlhf.utils.model.unwrap import base_model

DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Cache], torch.Tensor]


@memoized
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_kwargs(model: nn.Module, cache: Cache | None) -> dict[str, Cache | None]:
    """``{name: cache}`` for the model's forward: transformers 5.24 renamed ``past_key_values`` to ``cache``."""
    return {_cache_keyword(type(base_model(model))): cache}


def model_step(model: nn.Module) -> DecodeStep:
    """``step(tokens (B,), position_ids (B, 1), attention_mask (B, L), cache) -> next-token logits (B, V)``
    through the model's own forward."""

    def step(tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, cache) -> torch.Tensor:
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, **cache_kwargs(model, cache))
        return out.logits[:, -1]

    return step
