"""``--save_lora_adapter``: the LoRA adapter alone, in peft's format, beside the merged model.

The run's LoRA layers are peft's own (``apply_lora``), so the adapter is peft's state dict of the trained model:
``adapter_config.json`` (r, lora_alpha, target_modules) and ``adapter_model.safetensors``, which
``peft.PeftModel.from_pretrained(base, folder)`` loads onto the model the run started from. Only a run with
``--only_optimize_lora`` has one: otherwise the base weights trained too and the adapter alone is not the model.
"""
from __future__ import annotations

import copy
import os

import torch
from torch import nn

from chatrlhf.training.lora import LORA_MARK, plain_name
from chatrlhf.utils.model.unwrap import base_model

ADAPTER_DIR = "adapter"
PEFT_PREFIX = "base_model.model."


def trained_whole(model: nn.Module) -> list[str]:
    """Modules outside the adapters that trained (e.g. the reward model's head): peft saves them whole."""
    names = {plain_name(name).rsplit(".", 1)[0] for name, param in model.named_parameters()
             if param.requires_grad and LORA_MARK not in name}
    return sorted(names)


def vocabulary_grew(model: nn.Module) -> bool:
    """Whether the run resized the embeddings (a pad token added, padding to a multiple of 8): the adapter then
    carries the embeddings, and the base must be resized to the saved tokenizer before loading it."""
    from transformers import AutoConfig

    hf = base_model(model)
    return hf.config.vocab_size != AutoConfig.from_pretrained(hf.name_or_path).vocab_size


def save_adapter(model: nn.Module, state: dict[str, torch.Tensor], folder: str) -> None:
    """Write the adapter of the LoRA ``model`` from its full (gathered) state dict ``state`` into ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config["default"])
    config.inference_mode = True
    whole = trained_whole(model)
    config.modules_to_save = whole or None
    weights = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=vocabulary_grew(model))
    for module in whole:
        prefix = f"{PEFT_PREFIX}{module}."
        weights.update({key: value for key, value in state.items() if key.startswith(prefix)})
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    save_file({key: value.contiguous() for key, value in weights.items()},
              os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
