"""Each model of step 3 with its own settings, so a flag meant for one role never reaches another.

Actor and critic train (``TrainedRole``); the reference and the reward model only score (``FrozenRole``).
As in DeepSpeed-Chat, the reference takes the actor's flags (dropout, ZeRO-3 or not) and the reward model
the critic's, each with its own ``--offload_*_model``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from chatrlhf.training.config import EngineSettings, LoraSettings, OptimSettings
from chatrlhf.training.validation import ConfigError
from chatrlhf.utils.device import DTYPES, resolve_dtype


def _check(flags: str, path: str, dropout: float | None, engine: EngineSettings) -> None:
    """The settings every role shares; ``flags`` is the prefix of the flags they come from (actor, critic)."""
    if not path:
        raise ConfigError(f"--{flags}_model_name_or_path is empty; give a model name or directory")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--{flags}_dropout {dropout} must be in [0, 1) (or unset: the model's own dropout)")
    if engine.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"--{flags}_zero_stage {engine.zero_stage} is not one of 0, 1, 2, 3")
    if engine.dtype not in DTYPES:
        raise ConfigError(f"--dtype {engine.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class TrainedRole:
    """A model step 3 trains (actor, critic): where it loads from, its dropout, engine, optimizer and LoRA."""

    name: str
    path: str
    dropout: float | None
    engine: EngineSettings
    optim: OptimSettings
    lora: LoraSettings

    def __post_init__(self) -> None:
        _check(self.name, self.path, self.dropout, self.engine)
        if self.lora.dim < 0:
            raise ConfigError(f"--{self.name}_lora_dim {self.lora.dim} must be 0 (off) or positive")

    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.engine.dtype)

    @property
    def base_weights_train(self) -> bool:
        """Whether the weights the model loaded with change: always without LoRA, and with it unless
        ``--only_optimize_lora`` trains the adapters alone."""
        return not self.lora.enabled or not self.lora.only_optimize_lora


@dataclass(frozen=True)
class FrozenRole:
    """A model step 3 scores with but never trains (reference, reward model).

    ``flags`` names the role whose flags it takes (``actor`` for the reference, ``critic`` for the reward
    model); its engine is ZeRO-3 when that role's is, else stage 0, offloaded by its ``--offload_*_model``.
    """

    name: str
    flags: str
    path: str
    dropout: float | None
    engine: EngineSettings

    def __post_init__(self) -> None:
        _check(self.flags, self.path, self.dropout, self.engine)
        if self.engine.zero_stage not in (0, 3):
            raise ConfigError(f"the {self.name} model runs at ZeRO stage 0 or 3 (parameters partitioned or not), "
                              f"not {self.engine.zero_stage}: it has no optimizer states or gradients to partition")

    @property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self.engine.dtype)
