"""LoRA through ``peft`` with DeepSpeed-Chat's flags, and the merged weights a saved model carries."""
from __future__ import annotations

import torch
from torch import nn

from chatrlhf.training.config import LoraSettings
from chatrlhf.utils.model.unwrap import is_lora_model

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


def plain_name(key: str) -> str:
    """A LoRA model's parameter name as the plain model names it."""
    for prefix in ("base_model.model.",):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace(".base_layer.", ".")


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapter-wrapped layers of a LoRA model by qualified name (empty for a plain model)."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A}


def merged_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """A base weight with its LoRA delta ``scaling * B @ A`` folded in (computed in fp32)."""
    return (base.float() + (lora_b.float() @ lora_a.float()) * scaling).to(base.dtype)


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a plain model: LoRA deltas folded into the base weights, adapter tensors dropped.

    ``state`` is the full (gathered) state dict of ``model``; the model itself is not modified, so a
    run can save mid-training and go on.
    """
    if not is_lora_model(model):
        return dict(state)
    merged = {plain_name(k): v for k, v in state.items() if LORA_MARK not in k}
    for name, module in lora_layers(model).items():
        prefix = name + "."
        key = plain_name(prefix + "base_layer.weight")
        merged[key] = merged_weight(merged[key], state[prefix + "lora_A.default.weight"],
                                    state[prefix + "lora_B.default.weight"], module.scaling["default"])
    return merged
