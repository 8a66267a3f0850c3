"""RLOO: an answer's reward against the mean of the rewards of its prompt's other answers (an unbiased baseline);
no critic."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, GroupAlgorithm

if TYPE_CHECKING:
    import torch


class RLOO(GroupAlgorithm):
    def group_advantages(self, rewards: torch.Tensor, settings: AdvantageSettings) -> torch.Tensor:
        from chatrlhf.step3_rlhf.advantages import rloo_advantages

        return rloo_advantages(rewards, settings.samples_per_prompt)


ALGORITHM = RLOO(
    name="rloo", display_name="RLOO",
    advantages_text="each answer's reward against the mean of the other answers to its prompt",
    summary="reward minus the mean of the prompt's other samples.",
)
