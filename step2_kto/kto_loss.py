"""KTO's loss as pure functions, defined as TRL 1.16's ``KTOTrainer`` computes it (Kahneman-Tversky optimisation,
https://arxiv.org/abs/2402.01306).

``r`` below is a completion's policy-minus-reference log-ratio, ``log π(y|x) - log π_ref(y|x)`` summed over the
completion tokens. KTO compares it with a reference point ``z0``, the same log-ratio averaged over mismatched
prompt/completion rows of the batch (an estimate of KL(π || π_ref)), taken as a constant and clamped at 0:
a desirable completion costs ``1 - σ(β(r - z0))``, an undesirable one ``1 - σ(β(z0 - r))``, each weighted.
``apo_zero_unpaired`` (APO-zero, unpaired) uses no reference point: ``1 - σ(βr)`` and ``σ(βr)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chatrlhf.training.validation import ConfigError
from chatrlhf.utils import device

LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclass(frozen=True)
class KTOConfig:
    """``--loss_type``, ``--beta``, ``--desirable_weight`` and ``--undesirable_weight``, checked together."""

    loss_type: str = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"--loss_type {self.loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"--beta {self.beta}: must be a positive number (KTO's temperature, often 0.1)")
        for flag, weight in (("--desirable_weight", self.desirable_weight),
                             ("--undesirable_weight", self.undesirable_weight)):
            if not (weight > 0 and math.isfinite(weight)):
                raise ConfigError(f"{flag} {weight}: must be a positive number (the KTO paper keeps "
                                  "desirable_weight x desirable rows / (undesirable_weight x undesirable rows) "
                                  "between 1 and 4/3)")

    @property
    def estimates_kl(self) -> bool:
        """Whether the loss needs the reference point, and so the mismatched rows."""
        return self.loss_type == "kto"


@dataclass
class KTOLoss:
    """Per-completion weighted losses, implicit rewards β·r (detached) and the reference point used."""

    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor


def reference_point(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, *, across_ranks: bool = True) -> torch.Tensor:
    """z0: the mismatched rows' mean policy-minus-reference log-ratio, detached, averaged over the ranks (as TRL
    gathers it; ``across_ranks`` False for a rank's own held-out batch) and clamped at 0."""
    local = (kl_logps - ref_kl_logps).mean().detach()
    if across_ranks:
        local = device.all_reduce_sum(local) / device.world_size()
    return local.clamp(min=0)


def kto_loss(config: KTOConfig, logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl: torch.Tensor | None = None) -> KTOLoss:
    """The configured loss of each completion from its summed log-probs; ``desirable`` holds the labels and ``kl``
    the reference point (``reference_point``), which ``apo_zero_unpaired`` does not read."""
    ratio = logps - ref_logps
    beta = config.beta
    if config.estimates_kl:
        if kl is None:
            raise ValueError("--loss_type kto needs the reference point z0 (reference_point)")
        good = 1 - torch.sigmoid(beta * (ratio - kl))
        bad = 1 - torch.sigmoid(beta * (kl - ratio))
    else:
        kl = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
        good = 1 - torch.sigmoid(beta * ratio)
        bad = torch.sigmoid(beta * ratio)
    losses = torch.where(desirable.bool(), config.desirable_weight * good, config.undesirable_weight * bad)
    return KTOLoss(losses, beta * ratio.detach(), kl)
