"""The models of step 3 and their DeepSpeed engines.

Actor (trained), reference (frozen initial actor; the actor with its adapters off when LoRA trains the
adapters alone), critic (trained, initialised from the reward model; PPO only) and reward model (frozen;
absent when a reward function alone gives the reward); optionally an EMA of the actor. Each loads with its
own role's settings (``roles``).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from chatrlhf.step3_rlhf.roles import FrozenRole, TrainedRole
from chatrlhf.training.ds_config import frozen_overrides
from chatrlhf.training.engine import init_eval_engine, init_train_engine
from chatrlhf.training.lora import LORA_MARK, apply_lora, lora_layers, merged_weight, plain_name
from chatrlhf.utils import device
from chatrlhf.utils.model.loading import ModelOptions


@dataclass
class PPOEngines:
    actor: object
    critic: object | None
    reference: object | None
    reward: nn.Module | None
    ema: nn.Module | None = None
    # The actor is DeepSpeed's hybrid engine (a "hybrid_engine" section on CUDA): rollouts use its generate.
    hybrid_generation: bool = False

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


def _frozen(model: nn.Module, role: FrozenRole) -> nn.Module:
    """A frozen model: a DeepSpeed engine's module when it is sharded (ZeRO-3), offloaded, or configured by
    ``--deepspeed_config``, else a plain module."""
    settings = role.engine
    if settings.zero_stage == 3 or settings.offload or frozen_overrides(settings.deepspeed_config):
        return init_eval_engine(model, settings).module
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device.local_device()).eval()


def hybrid_engine_config(enabled: bool, max_out_tokens: int, inference_tp_size: int, release_cache: bool,
                         pin_parameters: bool, tp_gather_partition_size: int) -> dict | None:
    """DeepSpeed's hybrid engine (fast generation inside the training engine) where it is supported."""
    if not enabled or not device.has_cuda():
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
    actor_role: TrainedRole,
    critic_role: TrainedRole | None,
    reference_role: FrozenRole,
    reward_role: FrozenRole | None,
    tokenizer,
    options: ModelOptions,
    *,
    total_steps: int,
    enable_ema: bool,
) -> PPOEngines:
    """The engines of a run, each model loaded with its role's dropout and dtype over ``options``; no critic
    when ``critic_role`` is None, no reward model when ``reward_role`` is.

    The reference is a separate frozen model unless LoRA trains the actor's adapters alone: with the base
    weights training too, the actor with its adapters off would move with the actor and the KL would
    measure nothing. The critic is loaded before the reward model, as always, so a run draws the same
    random numbers.
    """
    from chatrlhf.utils.model.loading import load_causal_lm
    from chatrlhf.utils.model.reward_model import load_reward_model

    def role_options(role: TrainedRole | FrozenRole) -> ModelOptions:
        return replace(options, dropout=role.dropout, dtype=role.dtype)

    actor = load_causal_lm(actor_role.path, tokenizer, role_options(actor_role))
    ema = copy.deepcopy(actor).eval().requires_grad_(False) if enable_ema else None
    reference = None
    if actor_role.base_weights_train:
        reference = load_causal_lm(reference_role.path, tokenizer, role_options(reference_role))
        reference = _frozen(reference, reference_role)
    if actor_role.lora.enabled:
        actor = apply_lora(actor, actor_role.lora)
    actor_engine = init_train_engine(actor, actor_role.engine, actor_role.optim, actor_role.lora, total_steps)

    critic = load_reward_model(critic_role.path, tokenizer, role_options(critic_role)) if critic_role else None
    reward = None
    if reward_role is not None:
        reward = _frozen(load_reward_model(reward_role.path, tokenizer, role_options(reward_role)), reward_role)
    critic_engine = None
    if critic_role is not None:
        if critic_role.lora.enabled:
            critic = apply_lora(critic, critic_role.lora, trainable_modules=("score",))
        critic_engine = init_train_engine(critic, critic_role.engine, critic_role.optim, critic_role.lora,
                                          total_steps)
    if ema is not None:
        ema.to(device.local_device())
    # hybrid_engine_config builds the section on CUDA only; with it, DeepSpeed returns its hybrid engine.
    hybrid = bool((actor_role.engine.hybrid_engine or {}).get("enabled"))
    return PPOEngines(actor_engine, critic_engine, reference, reward, ema, hybrid_generation=hybrid)


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
