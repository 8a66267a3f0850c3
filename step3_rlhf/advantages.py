"""Advantages of the critic-free algorithms (GRPO, RLOO, REINFORCE++, rejection sampling), and online DPO's
best-against-worst pairs.

A rollout holds the samples of each prompt in adjacent rows, so a (rows,) reward vector viewed as
(prompts, samples per prompt) puts every group on one row.
"""
from __future__ import annotations

import torch

from chatrlhf.utils import device

# Added to a group's standard deviation so a group of equal rewards gets zero advantages, not 0/0 (as TRL).
GROUP_STD_EPS = 1e-4


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} samples per prompt")
    return rewards.view(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO: a sample's reward minus its group's mean, divided by the group's (unbiased) std + eps when
    ``scale``; without it (``--scale_rewards none``, Dr. GRPO) groups of low spread are not amplified."""
    groups = _groups(rewards, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + GROUP_STD_EPS)
    return centred.flatten()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: a sample's reward minus the mean of the other samples of its prompt (an unbiased baseline)."""
    groups = _groups(rewards, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).flatten()


def best_of_group(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """1.0 for the best-rewarded answer of each prompt (the first of equals), 0.0 for the others."""
    groups = _groups(rewards, group_size)
    best = torch.zeros_like(groups)
    best[torch.arange(groups.shape[0], device=groups.device), groups.argmax(1)] = 1.0
    return best.flatten()


def preference_pairs(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online DPO's pairs: the rows of each prompt's best-rewarded answer (chosen) and of its worst (rejected),
    the first of equals each; a prompt whose answers all got the same reward gives no pair."""
    groups = _groups(rewards, group_size)
    starts = torch.arange(groups.shape[0], device=groups.device) * group_size
    differ = ~flat_groups(rewards, group_size)
    return (starts + groups.argmax(1))[differ], (starts + groups.argmin(1))[differ]


def flat_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per prompt: True when its samples all got the same reward (GRPO and RLOO learn nothing from them)."""
    groups = _groups(rewards, group_size)
    return (groups == groups[:, :1]).all(1)


def flat_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of prompts whose samples all got the same reward."""
    return float(flat_groups(rewards, group_size).float().mean())


def sequence_rewards(scores: torch.Tensor, kl: torch.Tensor | None, kl_coef: float,
                     clip_reward_value: float) -> torch.Tensor:
    """One reward per answer: the clipped score, minus ``kl_coef`` x the answer's summed KL when given."""
    rewards = scores.clamp(-clip_reward_value, clip_reward_value)
    return rewards if kl is None else rewards - kl_coef * kl.sum(1)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """REINFORCE's return at every answer token: the sum of the rewards from there to the end, discounted."""
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def whiten_across_ranks(values: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``values`` (one tensor per micro-batch) minus the mean, over the std, of every answer token of the
    global batch: the statistics are summed over all micro-batches and all ranks (REINFORCE++)."""
    def total(parts: list[torch.Tensor]) -> torch.Tensor:
        return device.all_reduce_sum(torch.stack([p.sum() for p in parts]).sum().double())

    count = total(masks).clamp(min=1)
    mean = total([v * m for v, m in zip(values, masks)]) / count
    var = total([(v - mean).square() * m for v, m in zip(values, masks)]) / count
    scale = torch.rsqrt(var + 1e-8)
    return [((v - mean) * scale).to(v.dtype) * m for v, m in zip(values, masks)]


def broadcast(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-answer value put on every one of its answer tokens."""
    return per_sequence.to(mask.dtype).unsqueeze(1) * mask
