"""Online DPO (Guo et al. 2024, TRL's ``OnlineDPOTrainer``): each iteration the policy answers every prompt
several times, the reward sources rank the answers, and the DPO loss against the frozen reference trains on each
prompt's best answer over its worst. No critic, no advantages, no clipped ratio, and no KL penalty: β
(``--dpo_beta``) is what holds the policy near the reference."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, Algorithm, LossSettings

if TYPE_CHECKING:
    import torch

    from chatrlhf.step3_rlhf.experience import Experience


class OnlineDPO(Algorithm):
    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        """Never called: the DPO loss reads the answers' rewards, not advantages."""
        raise TypeError("--algorithm online_dpo has no advantages: its loss ranks each prompt's answers by reward "
                        "(actor_loss); call advantages() only where uses_advantages is True")

    def actor_loss(self, exp: Experience, logprobs: torch.Tensor, entropy: torch.Tensor,
                   settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
        from chatrlhf.step3_rlhf.actor_losses import online_dpo

        return online_dpo(exp, logprobs, entropy, settings)


ALGORITHM = OnlineDPO(
    name="online_dpo", display_name="Online DPO", compares_answers=True, uses_advantages=False,
    default_samples_per_prompt=2,
    advantages_text="the DPO loss on each prompt's best-rewarded answer over its worst",
    summary="DPO on each prompt's best- over worst-rewarded sample, against the frozen reference "
            "(--dpo_beta, --dpo_loss_type; 2 samples per prompt unless set).",
    ignored_flags=("kl_ctl",),
    refused_flags=("kl_mode", "target_kl", "kl_horizon", "cliprange", "cliprange_high", "clip_reward_value", "gamma",
                   "whiten_advantages", "entropy_coef", "loss_aggregation", "importance_sampling_level"),
)
