"""The reward model's score statistics: step 2 saves them beside the model, step 3 normalises rewards with them."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch

REWARD_STATS_FILE = "reward_stats.json"


@dataclass(frozen=True)
class RewardStats:
    """Score statistics on the held-out pairs, saved with the model so step 3 can normalise rewards."""

    mean: float
    std: float
    chosen_mean: float
    chosen_std: float
    rejected_mean: float
    rejected_std: float
    accuracy: float
    count: int

    @classmethod
    def from_scores(cls, chosen: list[float], rejected: list[float]) -> RewardStats:
        if not chosen or len(chosen) != len(rejected):
            raise ValueError(
                f"reward statistics need as many chosen as rejected scores, at least one; got "
                f"{len(chosen)} and {len(rejected)} (is the step-2 eval set empty?)"
            )
        both = chosen + rejected
        correct = sum(c > r for c, r in zip(chosen, rejected))
        return cls(
            mean=_mean(both), std=_std(both), chosen_mean=_mean(chosen), chosen_std=_std(chosen),
            rejected_mean=_mean(rejected), rejected_std=_std(rejected), accuracy=correct / len(chosen),
            count=len(chosen),
        )

    def to_json(self) -> dict:
        return asdict(self)

    def normalise(self, scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return (scores - self.mean) / max(self.std, eps)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def load_reward_stats(path: str) -> RewardStats | None:
    """The statistics saved by step 2 in ``path``, or None for a reward model trained elsewhere (no file)."""
    file = os.path.join(path, REWARD_STATS_FILE)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as handle:
            return RewardStats(**json.load(handle))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{file}: not a step-2 reward statistics file ({exc}); re-run step 2 or delete it") from exc
