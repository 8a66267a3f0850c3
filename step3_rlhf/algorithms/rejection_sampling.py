"""Rejection sampling (RAFT, expert iteration): of each prompt's answers, the one the reward sources rank highest
is fine-tuned on and the others teach nothing; every iteration is one round of sampling, choosing and
fine-tuning. With one update per rollout the first gradient is exactly fine-tuning's on the chosen answers
(the policy ratio starts at 1); the clip and the KL to the reference bound further epochs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, GroupAlgorithm

if TYPE_CHECKING:
    import torch


class RejectionSampling(GroupAlgorithm):
    def group_advantages(self, rewards: torch.Tensor, settings: AdvantageSettings) -> torch.Tensor:
        from chatrlhf.step3_rlhf.advantages import best_of_group

        return best_of_group(rewards, settings.samples_per_prompt)


ALGORITHM = RejectionSampling(
    name="rejection_sampling", display_name="Rejection sampling", kl_in_loss_by_default=True,
    advantages_text="1 on the best-rewarded answer to each prompt and 0 on the others (fine-tuning on the best of "
                    "N samples)",
    summary="fine-tune on the best of each prompt's samples by reward (RAFT / expert iteration).",
)
