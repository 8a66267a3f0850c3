"""The DeepSpeed configuration of a trained model, with a user's ``--deepspeed_config`` laid over it."""
from __future__ import annotations

import json

from chatrlhf.training.config import EngineSettings
from chatrlhf.utils.device import has_cuda


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def train_ds_config(settings: EngineSettings, world_size: int, max_grad_norm: float = 1.0) -> dict:
    """ZeRO stage, offload, precision and batch sizes as DeepSpeed wants them."""
    zero: dict = {"stage": settings.zero_stage, "stage3_param_persistence_threshold": 1e4}
    if settings.offload and settings.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": has_cuda()}
        if settings.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": has_cuda()}
    config = {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "train_batch_size": settings.micro_batch_size * settings.gradient_accumulation_steps * world_size,
        "steps_per_print": 10**9,
        "zero_optimization": zero,
        "fp16": {"enabled": settings.dtype == "fp16", "loss_scale_window": 100},
        "bf16": {"enabled": settings.dtype == "bf16"},
        "gradient_clipping": max_grad_norm,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
    if settings.hybrid_engine:
        config["hybrid_engine"] = settings.hybrid_engine
    if settings.deepspeed_config:
        with open(settings.deepspeed_config) as handle:
            config = _merge(config, json.load(handle))
    return config


def eval_ds_config(settings: EngineSettings, world_size: int) -> dict:
    """A frozen model (reference, reward): ZeRO-3 shards it only when asked, no optimizer.

    DeepSpeed checks the batch arithmetic of every engine (train batch = micro batch x accumulation x
    ranks), so a frozen engine states one accumulation step on every rank."""
    zero: dict = {"stage": 3 if settings.zero_stage == 3 else 0, "stage3_param_persistence_threshold": 1e4}
    if settings.offload and settings.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": has_cuda()}
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": settings.micro_batch_size * world_size,
        "steps_per_print": 10**9,
        "zero_optimization": zero,
        "fp16": {"enabled": settings.dtype == "fp16"},
        "bf16": {"enabled": settings.dtype == "bf16"},
        "wall_clock_breakdown": False,
    }
