"""PPO (DeepSpeed-Chat's step 3): a critic, and GAE advantages from its values."""
from __future__ import annotations

from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, Algorithm

if TYPE_CHECKING:
    import torch

    from chatrlhf.step3_rlhf.experience import Experience


class PPO(Algorithm):
    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        """Never called: GAE needs the critic's values, so the trainer computes it per micro-batch as the values
        come (``PPOTrainer._finish``)."""
        raise TypeError("--algorithm ppo has no critic-free advantages: its GAE advantages come from the critic's "
                        "values in PPOTrainer._finish; call advantages() only where uses_critic is False")


ALGORITHM = PPO(
    name="ppo", display_name="PPO", uses_critic=True,
    advantages_text="GAE advantages from the critic's values",
    summary="a critic and GAE (DeepSpeed-Chat).",
)
