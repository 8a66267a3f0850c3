"""KL penalty coefficient: fixed (DeepSpeed-Chat) or adaptive toward a target KL (Ziegler et al., 2019)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KLController:
    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, num_episodes: int) -> None:
        """Move the coefficient so the measured KL drifts toward ``target`` (no-op when fixed)."""
        if self.target is None or self.target <= 0:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_episodes / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
