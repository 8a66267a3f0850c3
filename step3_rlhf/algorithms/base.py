"""What step 3 needs to know about an algorithm, in one object: the flags it accepts, whether it trains a critic,
what its card says, how it turns a batch's rewards into advantages and which loss trains the actor.

This module and the algorithm modules import torch only inside the advantage methods, so the registry loads
without it (the e2e runner and ``chatrlhf memory`` read the names and display names before any training).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from chatrlhf.step3_rlhf.experience import Experience
    from chatrlhf.training.preference_losses import LossConfig


@dataclass(frozen=True)
class AdvantageSettings:
    """The run's settings that critic-free advantages read, handed over instead of the trainer."""

    kl_coef: float
    """Weight of the KL to the reference in the reward; 0 when the KL is a loss term instead."""
    clip_reward_value: float
    kl_estimator: str
    gamma: float
    samples_per_prompt: int
    scale_rewards: bool
    """``--scale_rewards group``: divide a group's centred rewards by its std (GRPO)."""


@dataclass(frozen=True)
class LossSettings:
    """The run's settings that the actor's loss reads, handed over instead of the trainer."""

    cliprange: float
    clip_high: float
    aggregation: str
    """``--loss_aggregation``."""
    norm_length: int
    """Dr. GRPO's constant divisor, ``--max_answer_seq_len``."""
    sequence_level: bool
    """``--importance_sampling_level sequence`` (GSPO)."""
    kl_in_loss: bool
    kl_coef: float
    """Weight of the KL to the reference as a loss term (read when ``kl_in_loss``)."""
    kl_estimator: str
    entropy_coef: float
    samples_per_prompt: int
    preference: LossConfig | None = None
    """Online DPO's loss (``--dpo_loss_type``, ``--dpo_beta``); None for the policy-gradient algorithms."""


@dataclass(frozen=True)
class Algorithm(ABC):
    """One policy-gradient algorithm of step 3; register an instance (``algorithms.register``) to offer it."""

    name: str
    """The ``--algorithm`` value."""
    display_name: str
    """As the model card, the report and the memory estimate write it."""
    advantages_text: str
    """The card's "a clipped policy-gradient loss with ..." part."""
    summary: str
    """Its part of ``--algorithm``'s help."""
    uses_critic: bool = False
    compares_answers: bool = False
    """Advantages compare the answers to one prompt: it needs 2+ samples per prompt, and logs ``flat_groups``."""
    kl_in_loss_by_default: bool = False
    """Where the KL to the reference goes when ``--kl_mode`` is unset: the loss (True) or the reward."""
    accepts_scale_rewards: bool = False
    """Whether ``--scale_rewards`` means anything to it."""
    uses_advantages: bool = True
    """Its loss reads advantages (the clipped surrogate); False for a loss on the answers' rewards themselves
    (online DPO): no advantages are computed, and ``--kl_ctl`` weighs nothing."""
    default_samples_per_prompt: int = 1
    """``--num_samples_per_prompt`` when unset."""
    ignored_flags: tuple[str, ...] = ()
    """Step-3 flags that mean nothing to it but that the training scripts pass (``--kl_ctl``): named in one warning
    when given, as the critic's flags are under a critic-free algorithm, so adding ``--algorithm`` to a script
    switches it."""
    refused_flags: tuple[str, ...] = ()
    """Step-3 flags that mean nothing to it: given, they are an error, so that none is accepted and ignored."""

    @abstractmethod
    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        """Each micro-batch's advantages on its answer tokens, computed over the whole batch (a prompt's answers
        may sit in different micro-batches). Old log-probs and ``kl`` are set when ``settings.kl_coef`` is."""

    def actor_loss(self, exp: Experience, logprobs: torch.Tensor, entropy: torch.Tensor,
                   settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
        """The actor's loss on one micro-batch and the figures to log of it: PPO's clipped surrogate on the
        advantages (with the KL and entropy terms the settings ask for) unless the algorithm trains otherwise."""
        from chatrlhf.step3_rlhf.actor_losses import clipped_surrogate

        return clipped_surrogate(exp, logprobs, entropy, settings)


def answer_masks(batches: list[Experience]) -> list[torch.Tensor]:
    """Each micro-batch's answer mask in its log-probs' dtype, as advantages are multiplied by it."""
    return [exp.answer_mask.to(exp.ref_logprobs.dtype) for exp in batches]


@dataclass(frozen=True)
class GroupAlgorithm(Algorithm):
    """An algorithm whose advantage of an answer depends only on the rewards of its prompt's answers (GRPO,
    RLOO): one reward per answer (clipped score minus the KL when it is in the reward), the same advantage on
    every token of the answer."""

    compares_answers: bool = True

    @abstractmethod
    def group_advantages(self, rewards: torch.Tensor, settings: AdvantageSettings) -> torch.Tensor:
        """One advantage per answer from one reward per answer, a prompt's answers in adjacent rows."""

    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        import torch

        from chatrlhf.step3_rlhf.advantages import broadcast, sequence_rewards

        kl_coef = settings.kl_coef
        rewards = torch.cat([sequence_rewards(exp.rewards_in, exp.kl if kl_coef else None, kl_coef,
                                              settings.clip_reward_value) for exp in batches])
        per_answer = self.group_advantages(rewards, settings).split([len(exp) for exp in batches])
        return [broadcast(part, mask) for part, mask in zip(per_answer, answer_masks(batches))]
