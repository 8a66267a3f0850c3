"""The Hugging Face model inside a peft wrapper: speed paths and saving read the plain model's layout."""
from __future__ import annotations

from torch import nn


def is_lora_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (or the model itself).

    peft also sets ``peft_config`` on the wrapped model, so the model it returns is returned as it is.
    """
    return model.get_base_model() if is_lora_model(model) and hasattr(model, "get_base_model") else model
