"""Step 3's rollout health: a KL far from the reference and a run of empty answers are warned about, and can stop
the run with a checkpoint (``--stop_kl_above``, ``--stop_empty_share_above``; off by default).

Either is the usual sign of a policy that is collapsing (a reward hacked by saying nothing, a learning rate
too high), and both are cheaper to catch at the iteration where they start than after the run.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatrlhf.utils import device

# Warnings come without a flag: half the answers empty, or a KL of this many nats per answer, is never healthy.
WARN_EMPTY_SHARE = 0.5
WARN_KL = 20.0


@dataclass(frozen=True)
class HealthLimits:
    stop_kl_above: float = 0.0  # 0: never stop for the KL
    stop_empty_share_above: float = 1.0  # 1: never stop for empty answers


def rollout_problems(metrics: dict[str, float], answers: int, limits: HealthLimits) -> tuple[list[str], list[str]]:
    """(warnings, reasons to stop) for one iteration's metrics; the stop is one decision of all ranks."""
    kl = metrics["kl_to_ref"]
    empty_share = metrics["empty_answers"] / max(answers, 1)
    warnings, stops = [], []
    if kl > WARN_KL:
        warnings.append(f"the KL to the reference is {kl:.2f} nats an answer (above {WARN_KL}): the policy is "
                        "drifting far; consider a lower learning rate or a higher --kl_ctl")
    if empty_share >= WARN_EMPTY_SHARE:
        warnings.append(f"{empty_share:.0%} of the answers are empty; the reward may favour saying nothing")
    if limits.stop_kl_above and kl > limits.stop_kl_above:
        stops.append(f"the KL to the reference, {kl:.3f} nats an answer, passed --stop_kl_above "
                     f"{limits.stop_kl_above}")
    if empty_share > limits.stop_empty_share_above:
        stops.append(f"{empty_share:.0%} of the answers were empty, above --stop_empty_share_above "
                     f"{limits.stop_empty_share_above}")
    if not device.all_ranks(not stops) and not stops:
        stops.append("another rank's rollouts passed a --stop_kl_above or --stop_empty_share_above limit")
    return warnings, stops
