"""The models of step 3 and their DeepSpeed engines.

Actor (trained), reference (frozen initial actor; with LoRA the actor with adapters off), critic
(trained, initialised from the reward model; PPO only) and reward model (frozen; absent when a reward
function alone gives the reward); optionally an EMA of the actor.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.training.config import EngineSettings, LoraSettings, OptimSettings
from chatrlhf.training.engine import init_eval_engine, init_train_engine
from chatrlhf.training.lora import LORA_MARK, apply_lora, lora_layers, merged_weight, plain_name
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.utils import device


@dataclass(frozen=True)
class ModelRole:
    """How one trained model runs: its path, engine, optimizer and LoRA settings."""

    path: str
    engine: EngineSettings
    optim: OptimSettings
    lora: LoraSettings


@dataclass
class PPOEngines:
    actor: object
    critic: object | None
    reference: object | None
    reward: nn.Module | None
    ema: nn.Module | None = None

    def trained(self) -> dict[str, object]:
        """The engines a checkpoint holds, by tag."""
        engines = {"actor": self.actor}
        if self.critic is not None:
            engines["critic"] = self.critic
        return engines

    @contextmanager
    def reference_policy(self):
        """The reference model to score with: a frozen copy, or the LoRA actor with its adapters off."""
        if self.reference is not None:
            yield self.reference
            return
        with self.actor.module.disable_adapter():
            yield self.actor.module


def _frozen(model: nn.Module, settings: EngineSettings, offload: bool) -> nn.Module:
    """A frozen model: a ZeRO-3 (optionally offloaded) engine when the run shards, else a plain module."""
    if settings.zero_stage == 3 or offload:
        frozen_settings = EngineSettings(zero_stage=3 if settings.zero_stage == 3 else 0, offload=offload,
                                         dtype=settings.dtype, micro_batch_size=settings.micro_batch_size)
        return init_eval_engine(model, frozen_settings).module
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device.local_device()).eval()


def hybrid_engine_config(enabled: bool, max_out_tokens: int, inference_tp_size: int, release_cache: bool,
                         pin_parameters: bool, tp_gather_partition_size: int) -> dict | None:
    """DeepSpeed's hybrid engine (fast generation inside the training engine) where it is supported."""
    if not enabled:
        return None
    if not device.has_cuda():
        print_rank0("--enable_hybrid_engine: DeepSpeed's hybrid engine needs a CUDA device; "
                    "falling back to plain generation with the KV cache.")
        return None
    return {
        "enabled": True,
        "max_out_tokens": max_out_tokens,
        "inference_tp_size": inference_tp_size,
        "release_inference_cache": release_cache,
        "pin_parameters": pin_parameters,
        "tp_gather_partition_size": tp_gather_partition_size,
    }


def build_engines(
    actor_role: ModelRole,
    critic_role: ModelRole | None,
    tokenizer,
    options,
    *,
    reward_path: str | None,
    reward_engine: EngineSettings,
    total_steps: int,
    offload_reference: bool,
    offload_reward: bool,
    enable_ema: bool,
) -> PPOEngines:
    """The engines of a run; no critic when ``critic_role`` is None, no reward model when ``reward_path`` is.

    The critic is loaded before the reward model, as always, so a run draws the same random numbers.
    """
    from chatrlhf.step2_reward.reward_model import load_reward_model
    from chatrlhf.utils.model.loading import load_causal_lm

    actor = load_causal_lm(actor_role.path, tokenizer, options)
    ema = copy.deepcopy(actor).eval().requires_grad_(False) if enable_ema else None
    reference = None
    if actor_role.lora.enabled:
        actor = apply_lora(actor, actor_role.lora)
    else:
        reference = _frozen(load_causal_lm(actor_role.path, tokenizer, options), actor_role.engine, offload_reference)
    actor_engine = init_train_engine(actor, actor_role.engine, actor_role.optim, actor_role.lora, total_steps)

    critic = load_reward_model(critic_role.path, tokenizer, options) if critic_role is not None else None
    reward = None
    if reward_path is not None:
        reward = _frozen(load_reward_model(reward_path, tokenizer, options), reward_engine, offload_reward)
    critic_engine = None
    if critic_role is not None:
        if critic_role.lora.enabled:
            critic = apply_lora(critic, critic_role.lora, trainable_modules=("score",))
        critic_engine = init_train_engine(critic, critic_role.engine, critic_role.optim, critic_role.lora,
                                          total_steps)
    if ema is not None:
        ema.to(device.local_device())
    return PPOEngines(actor_engine, critic_engine, reference, reward, ema)


@torch.no_grad()
def update_ema(ema: nn.Module, actor_module: nn.Module, beta: float, zero_stage: int) -> None:
    """ema ← beta·ema + (1−beta)·actor, LoRA deltas folded in.

    Under ZeRO-3 only the tensors of one parameter (or of one adapted layer: base weight and both
    adapter matrices) are gathered at a time.
    """
    import deepspeed

    def gathered(params: list[nn.Parameter]):
        return deepspeed.zero.GatheredParameters(params) if zero_stage == 3 else nullcontext()

    def blend(name: str, value: torch.Tensor) -> None:
        target = targets[plain_name(name)]
        target.mul_(beta).add_(value.detach().to(target.dtype), alpha=1 - beta)

    targets = dict(ema.named_parameters())
    adapted = lora_layers(actor_module)
    merged_later = {f"{name}.base_layer.weight" for name in adapted}
    for name, param in actor_module.named_parameters():
        if LORA_MARK not in name and name not in merged_later:
            with gathered([param]):
                blend(name, param)
    for name, layer in adapted.items():
        base, lora_a, lora_b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with gathered([base, lora_a, lora_b]):
            blend(f"{name}.base_layer.weight", merged_weight(base, lora_a, lora_b, layer.scaling["default"]))
