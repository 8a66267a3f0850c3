"""The actor's losses on one training micro-batch, as the algorithms choose them (``Algorithm.actor_loss``):
PPO's clipped surrogate on advantages, which every policy-gradient algorithm trains with, and online DPO's
preference loss on each prompt's best and worst answers against the frozen reference."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from chatrlhf.step3_rlhf.advantages import preference_pairs
from chatrlhf.step3_rlhf.ppo_math import aggregate, kl_penalty, masked_mean, policy_loss
from chatrlhf.training.preference_losses import preference_loss

if TYPE_CHECKING:  # the algorithms call in here: importing them back would close a circle
    from chatrlhf.step3_rlhf.algorithms.base import LossSettings
    from chatrlhf.step3_rlhf.experience import Experience


def clipped_surrogate(exp: Experience, logprobs: torch.Tensor, entropy: torch.Tensor,
                      settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate, plus ``kl_coef`` x KL to the reference when it is in the loss, minus
    ``--entropy_coef`` x entropy; each part averaged by ``--loss_aggregation``."""
    mask = exp.answer_mask.to(logprobs.dtype)
    aggregation, norm_length = settings.aggregation, settings.norm_length
    pg_loss, pg_stats = policy_loss(logprobs, exp.old_logprobs, exp.advantages, mask, settings.cliprange,
                                    settings.clip_high, aggregation, norm_length=norm_length,
                                    sequence_level=settings.sequence_level)
    stats = {"actor_loss": float(pg_loss.detach()), "entropy": float(masked_mean(entropy.detach(), mask)),
             **pg_stats}
    loss = pg_loss
    if settings.kl_in_loss:
        kl_loss = aggregate(kl_penalty(logprobs, exp.ref_logprobs, settings.kl_estimator), mask, aggregation,
                            norm_length)
        loss = loss + settings.kl_coef * kl_loss
        stats["kl_loss"] = float(kl_loss.detach())
    if settings.entropy_coef:
        loss = loss - settings.entropy_coef * aggregate(entropy, mask, aggregation, norm_length)
    if loss is not pg_loss:
        stats["actor_total_loss"] = float(loss.detach())
    return loss, stats


def online_dpo(exp: Experience, logprobs: torch.Tensor, entropy: torch.Tensor,
               settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """Online DPO on one micro-batch holding whole prompts: each prompt's best-rewarded answer is chosen over
    its worst, and the preference loss (``settings.preference``) of the pair's summed answer log-probs, against
    the reference's, is averaged over the pairs. A micro-batch whose prompts' answers all tie has no pair: its
    loss is a zero that keeps the graph, so every rank still steps."""
    if settings.preference is None:
        raise ValueError("online DPO's loss needs settings.preference (--dpo_loss_type and --dpo_beta)")
    if len(exp) % settings.samples_per_prompt:
        raise ValueError(f"a micro-batch of {len(exp)} answers splits a prompt's --num_samples_per_prompt "
                         f"{settings.samples_per_prompt}: --per_device_training_batch_size must be a multiple of it")
    mask = exp.answer_mask.to(logprobs.dtype)
    chosen, rejected = preference_pairs(exp.rewards_in, settings.samples_per_prompt)
    prompts = len(exp) // settings.samples_per_prompt
    stats = {"dpo_pair_share": len(chosen) / prompts, "entropy": float(masked_mean(entropy.detach(), mask))}
    if len(chosen) == 0:
        return (logprobs * mask).sum() * 0.0, stats
    policy = (logprobs * mask).sum(1)
    reference = (exp.ref_logprobs.to(logprobs.dtype) * mask).sum(1)
    pairs = preference_loss(settings.preference, policy[chosen], policy[rejected], reference[chosen],
                            reference[rejected])
    loss = pairs.losses.mean()
    margins = pairs.chosen_rewards - pairs.rejected_rewards
    stats.update(dpo_loss=float(loss.detach()), dpo_chosen_reward=float(pairs.chosen_rewards.mean()),
                 dpo_rejected_reward=float(pairs.rejected_rewards.mean()),
                 dpo_reward_accuracy=float((margins > 0).float().mean()), dpo_reward_margin=float(margins.mean()))
    return loss, stats
