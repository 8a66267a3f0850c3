"""Forward passes that compute the LM head only where it is needed.

The vocabulary projection is a large share of a small model's compute; a completion-only loss
needs it on the response tokens alone, and PPO on the answer tokens alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from chatrlhf.utils.model.unwrap import base_model

if TYPE_CHECKING:
    from chatrlhf.utils.model.packing import HiddenStates


def split_lm(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The backbone (token ids -> final hidden states) and the output head, when the family exposes them."""
    hf = base_model(model)
    backbone = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is hf:
        return None
    return backbone, head


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    fp32_loss: bool = False,
    hidden_states: HiddenStates | None = None,
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the labelled positions, and how many there were.

    ``hidden_states`` replaces the backbone's padded forward (``--packing``).
    """
    targets = labels[:, 1:]
    keep = targets != -100
    count = int(keep.sum())
    logits = _logits_at(model, input_ids, attention_mask, keep, hidden_states)
    if fp32_loss:
        logits = logits.float()
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits, targets[keep]), count


def _logits_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
               hidden_states: HiddenStates | None) -> torch.Tensor:
    """The logits predicting the next token at the ``keep`` positions of ``[:, :-1]``; the head runs there only."""
    parts = split_lm(model)
    if parts is None:
        if hidden_states is not None:
            raise ValueError(f"{type(base_model(model)).__name__} exposes no separate backbone and head, which a "
                             "packed forward needs; drop --packing")
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][keep]
    backbone, head = parts
    if hidden_states is None:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    else:
        hidden = hidden_states(model, input_ids, attention_mask)
    return head(hidden[:, :-1][keep])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so left-padded rows get the positions of unpadded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def answer_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  start: int) -> torch.Tensor:
    """Logits predicting tokens ``start..T-1`` (the answer of a left-padded prompt of width ``start``), (B, T-start, V).

    The head runs on those positions only; positions come from the mask so left padding is harmless.
    """
    position_ids = position_ids_from_mask(attention_mask)
    parts = split_lm(model)
    if parts is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.logits[:, start - 1 : -1]
    backbone, head = parts
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False)[0]
    return head(hidden[:, start - 1 : -1])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, fp32: bool = True) -> torch.Tensor:
    """log p(token) under ``logits`` (computed in fp32 unless ``fp32`` is False: then in the logits' dtype)."""
    return torch.log_softmax(logits.float() if fp32 else logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def answer_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    *,
    fp32: bool = True,
    hidden_states: HiddenStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a right-padded batch: the summed log-probs of the answer tokens, in fp32, and how many there are.

    The answer is everything after the row's first ``prompt_len`` tokens that the mask keeps; the prompt's own
    tokens never count (though they condition the answer). The head runs on the answer positions only;
    ``fp32`` says whether the log-softmax runs in fp32 or the model's dtype (``--compute_fp32_loss``);
    ``hidden_states`` replaces the backbone's padded forward (``--packing``).
    """
    rows, width = input_ids.shape
    positions = torch.arange(1, width, device=input_ids.device)
    keep = (positions.unsqueeze(0) >= prompt_len.to(input_ids.device).unsqueeze(1)) & attention_mask[:, 1:].bool()
    logits = _logits_at(model, input_ids, attention_mask, keep, hidden_states)
    logp = token_logprobs(logits, input_ids[:, 1:][keep], fp32=fp32).float()
    owner = torch.arange(rows, device=input_ids.device).unsqueeze(1).expand(-1, width - 1)[keep]
    sums = torch.zeros(rows, dtype=torch.float32, device=logp.device).index_add(0, owner, logp)
    return sums, keep.sum(dim=1)


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, *,
                               fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and the (gradient-free) entropy of each position, from one log-softmax (in fp32
    unless ``fp32`` is False: then in the logits' dtype)."""
    logp = torch.log_softmax(logits.float() if fp32 else logits, dim=-1)
    with torch.no_grad():
        ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ent
