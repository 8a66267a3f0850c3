"""Preference pairs scored chosen against rejected: the ranking loss and the held-out metrics that step 2's reward
model and DPO's implicit rewards both report, so their numbers mean the same."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pairwise_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """-log sigmoid(r_c - r_r - margin), averaged, plus ``center_coef * mean((r_c + r_r)^2)``.

    The centring term pins the scores' offset, which the ranking loss leaves free, so step 3 sees
    rewards near zero; the margin asks for a larger gap where the data says the preference is strong.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


@dataclass
class ScoredPairs:
    """Every held-out pair's scores and labels, gathered from all ranks."""

    chosen: list[float]
    rejected: list[float]
    tasks: list[str]
    mistakes: list[str]


def pair_metrics(scored: ScoredPairs) -> dict[str, float]:
    """Accuracy, mean scores and margin, loss, and accuracy per task and per mistake kind when labelled."""
    if not scored.chosen:
        return {}
    chosen = torch.tensor(scored.chosen, dtype=torch.float64)
    rejected = torch.tensor(scored.rejected, dtype=torch.float64)
    correct = (chosen > rejected).tolist()
    metrics = {
        "accuracy": sum(correct) / len(correct),
        "chosen_score": float(chosen.mean()),
        "rejected_score": float(rejected.mean()),
        "margin": float((chosen - rejected).mean()),
        "loss": float(pairwise_loss(chosen, rejected)),
    }
    for prefix, labels in (("task", scored.tasks), ("mistake", scored.mistakes)):
        groups: dict[str, list[bool]] = defaultdict(list)
        for label, ok in zip(labels, correct):
            if label:
                groups[label].append(ok)
        for label in sorted(groups):
            metrics[f"acc_{prefix}_{label}"] = sum(groups[label]) / len(groups[label])
    return metrics
