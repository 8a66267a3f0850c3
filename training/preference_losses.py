"""DPO and its family as pure functions: per-pair losses and implicit rewards from sequence log-probs. Shared
by DPO (step 2) and the preference-based algorithms of step 3, which may not import each other.

``h`` below is the policy's log-ratio of chosen over rejected minus the reference's,
``(log π(y_c) - log π(y_r)) - (log π_ref(y_c) - log π_ref(y_r))``, with sequence log-probs summed over the
answer tokens. SimPO and ORPO use no reference and average the log-probs over the answer tokens instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chatrlhf.training.validation import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo")
REFERENCE_FREE = frozenset({"simpo", "orpo"})
SMOOTHED = frozenset({"sigmoid", "robust"})
DEFAULT_SIMPO_GAMMA = 0.5


@dataclass(frozen=True)
class LossConfig:
    """``--loss_type``, ``--beta``, ``--label_smoothing`` and ``--simpo_gamma``, checked together.

    ``simpo_gamma`` None means SimPO's default under ``simpo``; any value under another loss is an error, as is
    label smoothing under a loss that has none, so no flag is accepted and then ignored.
    """

    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float | None = None

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"--loss_type {self.loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"--beta {self.beta}: must be a positive number (DPO's temperature, often 0.1 to 0.5)")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label_smoothing {self.label_smoothing}: must be in [0, 0.5), the probability "
                              "that a preference label is flipped")
        if self.label_smoothing and self.loss_type not in SMOOTHED:
            raise ConfigError(f"--label_smoothing applies to --loss_type sigmoid or robust, not {self.loss_type}; "
                              "drop it or switch the loss")
        if self.simpo_gamma is not None and self.loss_type != "simpo":
            raise ConfigError(f"--simpo_gamma is SimPO's target margin and applies to --loss_type simpo only, "
                              f"not {self.loss_type}; drop it or pass --loss_type simpo")
        if self.loss_type == "simpo":
            gamma = DEFAULT_SIMPO_GAMMA if self.simpo_gamma is None else self.simpo_gamma
            if not (gamma >= 0 and math.isfinite(gamma)):
                raise ConfigError(f"--simpo_gamma {gamma}: must be 0 or a positive number")
            object.__setattr__(self, "simpo_gamma", gamma)

    @property
    def reference_free(self) -> bool:
        return self.loss_type in REFERENCE_FREE

    def sequence_logps(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The sequence log-prob a loss reads: the sum over answer tokens, or their mean for SimPO and ORPO."""
        return sums / counts.clamp(min=1).to(sums.dtype) if self.reference_free else sums


def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: -log σ(βh); with label smoothing ε, the expected loss when each label is flipped with probability ε
    (conservative DPO)."""
    z = beta * h
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO: (h - 1/(2β))², which pulls the log-ratio gap to a finite target instead of ever wider."""
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC's hinge: max(0, 1 - βh), no gradient once the pair is separated by the margin."""
    return torch.relu(1 - beta * h)


def robust_loss(h: torch.Tensor, beta: float, flip_rate: float) -> torch.Tensor:
    """Robust DPO: the unbiased loss under labels flipped with probability ε,
    ((1-ε)(-log σ(βh)) - ε(-log σ(-βh))) / (1 - 2ε)."""
    z = beta * h
    return ((1 - flip_rate) * -F.logsigmoid(z) - flip_rate * -F.logsigmoid(-z)) / (1 - 2 * flip_rate)


def simpo_loss(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO: -log σ(β(mean log π(y_c) - mean log π(y_r)) - γ), on log-probs averaged over the answer tokens."""
    return -F.logsigmoid(beta * (mean_chosen - mean_rejected) - gamma)


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = exp(mean_logp), computed stably for p near 0 and near 1."""
    log1m = torch.where(mean_logp > -math.log(2), torch.log(-torch.expm1(mean_logp)),
                        torch.log1p(-torch.exp(mean_logp)))
    return mean_logp - log1m


def orpo_loss(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """ORPO: the chosen answer's mean next-token loss plus β × -log σ(log odds(y_c) - log odds(y_r))."""
    return -mean_chosen - beta * F.logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected))


@dataclass
class PairLoss:
    """Per-pair losses and implicit rewards (what accuracy and margin are measured on)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_loss(
    config: LossConfig,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> PairLoss:
    """The configured loss of each pair from its sequence log-probs (``config.sequence_logps``).

    Rewards are β × (policy - reference) log-probs, or β × the mean log-prob for the reference-free losses.
    """
    beta = config.beta
    if config.reference_free:
        if config.loss_type == "simpo":
            losses = simpo_loss(chosen, rejected, beta, config.simpo_gamma)
        else:
            losses = orpo_loss(chosen, rejected, beta)
        return PairLoss(losses, beta * chosen.detach(), beta * rejected.detach())
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"--loss_type {config.loss_type} needs the reference's log-probs")
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if config.loss_type == "sigmoid":
        losses = sigmoid_loss(h, beta, config.label_smoothing)
    elif config.loss_type == "ipo":
        losses = ipo_loss(h, beta)
    elif config.loss_type == "hinge":
        losses = hinge_loss(h, beta)
    else:
        losses = robust_loss(h, beta, config.label_smoothing)
    return PairLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
