"""Parameter groups, the optimizer and the learning-rate schedule of a trained model."""
from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

from chatrlhf.training.config import OptimSettings
from chatrlhf.training.lora import LORA_MARK
from chatrlhf.utils.device import has_cuda

NO_DECAY = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def param_groups(model: nn.Module, weight_decay: float, lora_learning_rate: float) -> list[dict]:
    """Decay for weights, none for biases and norms; LoRA adapters at their own learning rate."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not any(mark in name.lower() for mark in NO_DECAY)
        buckets.setdefault((decay, LORA_MARK in name), []).append(param)
    groups = []
    for (decay, is_lora), params in sorted(buckets.items()):
        group: dict = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if is_lora:
            group["lr"] = lora_learning_rate
        groups.append(group)
    return groups


def make_optimizer(groups: list[dict], optim: OptimSettings, *, offload: bool) -> torch.optim.Optimizer:
    """DeepSpeed's CPU Adam under ZeRO-Offload, its fused Adam on GPUs, torch's fused AdamW on CPU."""
    kwargs = dict(lr=optim.learning_rate, betas=optim.betas, weight_decay=optim.weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if has_cuda():
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(groups, fused=True, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSettings, num_training_steps: int):
    if optim.lr_scheduler_type not in SCHEDULERS:
        raise ValueError(f"--lr_scheduler_type {optim.lr_scheduler_type!r} is not one of {', '.join(SCHEDULERS)}")
    return get_scheduler(
        optim.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=optim.num_warmup_steps,
        num_training_steps=max(num_training_steps, 1),
    )
