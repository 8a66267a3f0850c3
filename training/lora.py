"""LoRA through ``peft`` with DeepSpeed-Chat's flags, and the merged weights a saved model carries."""
from __future__ import annotations

import torch
from torch import nn

from chatrlhf.training.config import LoraSettings

LORA_MARK = "lora_"


def lora_targets(model: nn.Module, module_name: str) -> list[str]:
    """Every linear layer whose qualified name contains ``module_name`` (DeepSpeed-Chat's substring rule)."""
    return [name for name, module in model.named_modules() if module_name in name and isinstance(module, nn.Linear)]


def apply_lora(model: nn.Module, settings: LoraSettings, *, trainable_modules: tuple[str, ...] = ()) -> nn.Module:
    """Wrap the matching linear layers with LoRA adapters.

    With ``only_optimize_lora`` only the adapters (and ``trainable_modules``, e.g. a reward head) train;
    otherwise the base weights train too, at the main learning rate.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, settings.module_name)
    if not targets:
        raise ValueError(
            f"--lora_module_name {settings.module_name!r} matches no linear layer of this model; "
            "use a substring of the decoder layers' names, e.g. 'decoder.layers.' for OPT or 'layers.' for LLaMA"
        )
    config = LoraConfig(r=settings.dim, lora_alpha=1, lora_dropout=0.0, target_modules=targets, bias="none")
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if LORA_MARK in name or any(part in name for part in trainable_modules):
            param.requires_grad_(True)
        elif not settings.only_optimize_lora:
            param.requires_grad_(True)
    return peft_model


def is_lora_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_lora_model(model) else model


def _clean_key(key: str) -> str:
    for prefix in ("base_model.model.",):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace(".base_layer.", ".")


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a plain model: LoRA deltas folded into the base weights, adapter tensors dropped.

    ``state`` is the full (gathered) state dict of ``model``; the model itself is not modified, so a
    run can save mid-training and go on.
    """
    if not is_lora_model(model):
        return dict(state)
    merged = {_clean_key(k): v for k, v in state.items() if LORA_MARK not in k}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        prefix = name + "."
        lora_a = state[prefix + "lora_A.default.weight"].float()
        lora_b = state[prefix + "lora_B.default.weight"].float()
        key = _clean_key(prefix + "base_layer.weight")
        delta = (lora_b @ lora_a) * module.scaling["default"]
        merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    return merged
