"""GRPO: an answer's reward against the mean (and std) of the rewards of its prompt's answers; no critic, the KL
to the reference in the loss."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, GroupAlgorithm

if TYPE_CHECKING:
    import torch


class GRPO(GroupAlgorithm):
    def group_advantages(self, rewards: torch.Tensor, settings: AdvantageSettings) -> torch.Tensor:
        from chatrlhf.step3_rlhf.advantages import grpo_advantages

        return grpo_advantages(rewards, settings.samples_per_prompt, settings.scale_rewards)


ALGORITHM = GRPO(
    name="grpo", display_name="GRPO", kl_in_loss_by_default=True, accepts_scale_rewards=True,
    advantages_text="each answer's reward against the mean of the answers to its prompt",
    summary="advantage = reward minus its prompt group's mean, over the group's std.",
)
