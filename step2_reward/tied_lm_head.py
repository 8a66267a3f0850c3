"""Step 2's ``--lm_loss_coef``: next-token logits through the tied input embeddings, which a reward model keeps
while its LM head is dropped."""
from __future__ import annotations

import torch
from torch import nn

from chatrlhf.training.validation import ConfigError
from chatrlhf.utils.model.unwrap import base_model


def check_tied_embeddings(model: nn.Module, flag: str) -> None:
    """``flag`` needs the input embeddings to double as the LM head, as in the families that tie them."""
    config = base_model(model).config
    if not getattr(config, "tie_word_embeddings", False):
        raise ConfigError(
            f"{flag} predicts tokens with the input embedding matrix, which {config.model_type} models with "
            f"tie_word_embeddings=False do not use as their LM head; drop {flag} for this model"
        )


def tied_lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits from hidden states through the (tied) input embedding matrix."""
    return hidden @ base_model(model).get_input_embeddings().weight.t()
