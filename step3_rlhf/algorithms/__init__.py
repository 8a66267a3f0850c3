"""The registry of step 3's algorithms: the one list of their names. The flags, the settings' checks, the
trainer, the model card, the memory estimator and the e2e runner all read it.

Adding an algorithm: a module defining an ``Algorithm`` instance, and a ``register`` line below.
"""
from __future__ import annotations

from chatrlhf.step3_rlhf.algorithms import grpo, online_dpo, ppo, reinforce_pp, rejection_sampling, rloo
from chatrlhf.step3_rlhf.algorithms.base import AdvantageSettings, Algorithm, LossSettings

DEFAULT = "ppo"
"""DeepSpeed-Chat's algorithm, the default of ``--algorithm``."""
REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> None:
    """Offer ``algorithm`` as ``--algorithm <its name>`` (to parsers built from now on)."""
    if algorithm.name in REGISTRY:
        raise ValueError(f"an algorithm named {algorithm.name!r} is already registered; pick another name")
    REGISTRY[algorithm.name] = algorithm


def names() -> tuple[str, ...]:
    """The ``--algorithm`` choices, in registration order."""
    return tuple(REGISTRY)


register(ppo.ALGORITHM)
register(grpo.ALGORITHM)
register(rloo.ALGORITHM)
register(reinforce_pp.ALGORITHM)
register(rejection_sampling.ALGORITHM)
register(online_dpo.ALGORITHM)

__all__ = ["DEFAULT", "REGISTRY", "AdvantageSettings", "Algorithm", "LossSettings", "names", "register"]
