"""The reward model shared by step 2 (which trains it), step 3 (reward and critic) and the comparisons that
score answers: a causal-LM backbone with a scalar ``score`` head, as a standard Hugging Face class.

It is an ``AutoModelForSequenceClassification`` with ``num_labels=1``, so a saved directory loads with
``from_pretrained`` anywhere. We do not use the class's own pooling (it finds the last token by comparing ids
with the pad id, which fails when pad equals eos): we run the backbone and the head over every position, which
step 3 needs anyway for the critic, and take the value at the last real token of the attention mask.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from chatrlhf.utils.model.lm_forward import position_ids_from_mask
from chatrlhf.utils.model.loading import ModelOptions, load_hf_model
from chatrlhf.utils.model.unwrap import base_model

HEAD_NAME = "score"
HEAD_INIT_SEED = 1234


def load_reward_model(
    path: str, tokenizer: PreTrainedTokenizerBase, options: ModelOptions, *, seed: int = HEAD_INIT_SEED
) -> PreTrainedModel:
    """A reward model from a causal-LM directory (new head, seeded) or from a saved reward model (its head).

    Step 3 loads the reward model and the critic's initial weights with this.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_hf_model(AutoModelForSequenceClassification, path, tokenizer, options, num_labels=1)
    if not isinstance(getattr(model, HEAD_NAME, None), nn.Module):
        raise ValueError(
            f"{type(model).__name__} (from {path}) has no '{HEAD_NAME}' head; the reward model needs a family "
            f"whose sequence-classification class scores with a '{HEAD_NAME}' linear layer (OPT, LLaMA, GPT-2, ...)"
        )
    return model


def _takes_position_ids(backbone: nn.Module) -> bool:
    return "position_ids" in inspect.signature(backbone.forward).parameters


def backbone_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone's final hidden states, (B, T, H); works on the plain, LoRA-wrapped or engine module."""
    hf = base_model(model)
    backbone = getattr(hf, hf.base_model_prefix)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if _takes_position_ids(backbone):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    return backbone(**kwargs)[0]


def score_head(model: nn.Module) -> nn.Module:
    return getattr(base_model(model), HEAD_NAME)


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's scalar at every position, shape (B, T)."""
    return score_head(model)(backbone_hidden(model, input_ids, attention_mask)).squeeze(-1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for right and left padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def sequence_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sequence's reward, shape (B,): the token value at its last real token."""
    index = last_token_index(attention_mask)
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
