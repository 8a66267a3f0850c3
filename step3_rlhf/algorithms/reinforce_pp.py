"""REINFORCE++: discounted returns of the KL-penalised token rewards, normalised over the global batch; no
critic, no groups."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, Algorithm, answer_masks

if TYPE_CHECKING:
    import torch

    from chatrlhf.step3_rlhf.experience import Experience


class ReinforcePP(Algorithm):
    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        from chatrlhf.step3_rlhf.advantages import discounted_returns, whiten_across_ranks
        from chatrlhf.step3_rlhf.ppo_math import token_rewards

        masks = answer_masks(batches)
        returns = []
        for exp, mask in zip(batches, masks):
            # With the KL in the loss the old log-probs may not be known yet; a zero coefficient ignores them.
            logprobs = exp.old_logprobs if settings.kl_coef else exp.ref_logprobs
            rewards, _ = token_rewards(logprobs, exp.ref_logprobs, exp.rewards_in, mask, kl_coef=settings.kl_coef,
                                       clip_reward_value=settings.clip_reward_value, estimator=settings.kl_estimator)
            returns.append(discounted_returns(rewards, mask, settings.gamma))
        return whiten_across_ranks(returns, masks)


ALGORITHM = ReinforcePP(
    name="reinforce_pp", display_name="REINFORCE++",
    advantages_text="rewards normalised over the batch, with no critic",
    summary="REINFORCE++: discounted returns of KL-penalised token rewards, normalised over the "
            "global batch.",
)
