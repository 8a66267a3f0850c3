"""DeepSpeed configurations: a trained model's with a user's ``--deepspeed_config`` laid over it, and a frozen
model's with the part of that file that concerns a model without optimizer or gradients."""
from __future__ import annotations

import json

from chatrlhf.training.config import EngineSettings
from chatrlhf.utils.device import accelerator_count, has_cuda

# What a --deepspeed_config can say about a frozen model (reference, reward): how its parameters are
# partitioned and offloaded, and its precision. Optimizer, gradient and batch keys concern trained models only.
FROZEN_KEYS = ("zero_optimization", "fp16", "bf16", "wall_clock_breakdown")
FROZEN_ZERO_KEYS = ("stage", "offload_param", "stage3_param_persistence_threshold", "stage3_max_live_parameters",
                    "stage3_max_reuse_distance", "stage3_prefetch_bucket_size", "memory_efficient_linear",
                    "zero_quantized_weights", "zero_hpz_partition_size")


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
    if settings.quantized_nontrainable_weights:
        zero["zero_quantized_nontrainable_weights"] = True
        # Within a node, hpZ keeps a secondary copy of the quantized weights, as DeepSpeed-Chat sets it up.
        per_node = accelerator_count()
        if world_size != per_node:
            zero["zero_hpz_partition_size"] = per_node
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
    return _merge(config, user_config(settings.deepspeed_config))


def user_config(path: str | None) -> dict:
    """The JSON object of ``--deepspeed_config`` (empty without one)."""
    if not path:
        return {}
    with open(path) as handle:
        return json.load(handle)


def frozen_overrides(path: str | None) -> dict:
    """The keys of ``--deepspeed_config`` that apply to a frozen model (``FROZEN_KEYS``).

    A ZeRO stage of 1 or 2 partitions optimizer states and gradients, which a frozen model has none of, so
    it becomes 0; stage 3 (parameter partitioning) stays.
    """
    overrides = {key: value for key, value in user_config(path).items() if key in FROZEN_KEYS}
    if "zero_optimization" in overrides:
        zero = {k: v for k, v in overrides["zero_optimization"].items() if k in FROZEN_ZERO_KEYS}
        if "stage" in zero:
            zero["stage"] = 3 if zero["stage"] == 3 else 0
        overrides["zero_optimization"] = zero
    return overrides


def eval_ds_config(settings: EngineSettings, world_size: int) -> dict:
    """A frozen model (reference, reward): ZeRO-3 shards it only when asked, no optimizer; the
    ``--deepspeed_config`` keys that concern it (``frozen_overrides``) laid over.

    DeepSpeed checks the batch arithmetic of every engine (train batch = micro batch x accumulation x
    ranks), so a frozen engine states one accumulation step on every rank."""
    zero: dict = {"stage": 3 if settings.zero_stage == 3 else 0, "stage3_param_persistence_threshold": 1e4}
    if settings.offload and settings.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": has_cuda()}
    if settings.quantized_nontrainable_weights:
        zero["zero_quantized_nontrainable_weights"] = True
        # Within a node, hpZ keeps a secondary copy of the quantized weights, as DeepSpeed-Chat sets it up.
        per_node = accelerator_count()
        if world_size != per_node:
            zero["zero_hpz_partition_size"] = per_node
    config = {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": settings.micro_batch_size * world_size,
        "steps_per_print": 10**9,
        "zero_optimization": zero,
        "fp16": {"enabled": settings.dtype == "fp16"},
        "bf16": {"enabled": settings.dtype == "bf16"},
        "wall_clock_breakdown": False,
    }
    return _merge(config, frozen_overrides(settings.deepspeed_config))
