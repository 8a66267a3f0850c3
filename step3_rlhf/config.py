"""Step-3 settings: DeepSpeed-Chat's hard-coded PPO hyper-parameters as fields with its values as defaults,
the policy-gradient algorithm, and where the reward comes from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf import algorithms
from chatrlhf.step3_rlhf.algorithms import Algorithm
from chatrlhf.step3_rlhf.health import HealthLimits
from chatrlhf.training.validation import ConfigError

if TYPE_CHECKING:
    from chatrlhf.training.preference_losses import LossConfig

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("reward", "loss")
SCALE_REWARDS = ("group", "none")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SYNTHETIC_TASKS_FN = "synthetic_tasks"
ONLINE_DPO_LOSS_TYPES = ("sigmoid", "ipo")
"""``--dpo_loss_type`` choices: the losses of ``training/preference_losses.py`` that read the reference (TRL's)."""
DEFAULT_DPO_BETA = 0.1


@dataclass(frozen=True)
class GenerationConfig:
    max_prompt_seq_len: int = 256
    max_answer_seq_len: int = 256
    min_answer_seq_len: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass(frozen=True)
class PPOConfig:
    kl_ctl: float = 0.1
    clip_reward_value: float = 5.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    kl_estimator: str = "k1"
    target_kl: float | None = None
    kl_horizon: int = 10000
    normalize_reward: bool = False
    whiten_advantages: bool = False
    ppo_epochs: int = 1
    generation_batches: int = 1
    unsup_coef: float = 27.8
    ema_beta: float = 0.992
    cliprange_high: float | None = None

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"--kl_estimator {self.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
        if self.cliprange_high is not None and self.cliprange_high <= 0:
            raise ConfigError(f"--cliprange_high {self.cliprange_high} must be above 0 (or unset: --cliprange)")

    @property
    def clip_high(self) -> float:
        """The upper clip of the probability ratio: ``1 + clip_high`` (``--cliprange`` unless set apart)."""
        return self.cliprange if self.cliprange_high is None else self.cliprange_high


@dataclass(frozen=True)
class AlgorithmConfig:
    """Which policy-gradient estimator step 3 runs (a name in ``algorithms.REGISTRY``) and how the actor's loss
    is built.

    ``kl_mode`` None means the algorithm's own choice (``Algorithm.kl_in_loss_by_default``): GRPO puts the KL to
    the reference into the loss, the others into the reward. ``num_samples_per_prompt`` None means the
    algorithm's default (2 for online DPO, 1 for the others); ``dpo_beta`` and ``dpo_loss_type`` None mean
    online DPO's defaults under it, and given under another algorithm they are an error.
    """

    name: str = algorithms.DEFAULT
    num_samples_per_prompt: int | None = None
    scale_rewards: str = "group"
    kl_mode: str | None = None
    entropy_coef: float = 0.0
    loss_aggregation: str = "token_mean"
    importance_sampling_level: str = "token"
    # DAPO's dynamic sampling: groups whose answers all score the same are dropped and more prompts drawn, at
    # most ``dynamic_sampling_max_batches`` extra generation batches an iteration.
    dynamic_sampling: bool = False
    dynamic_sampling_max_batches: int = 4
    dpo_beta: float | None = None
    dpo_loss_type: str | None = None

    def __post_init__(self) -> None:
        if self.name not in algorithms.names():
            raise ConfigError(f"--algorithm {self.name!r} is not one of {', '.join(algorithms.names())}")
        if self.num_samples_per_prompt is None:
            object.__setattr__(self, "num_samples_per_prompt", self.definition.default_samples_per_prompt)
        self._check_preference_loss()
        for flag, value, choices in (("--scale_rewards", self.scale_rewards, SCALE_REWARDS),
                                     ("--loss_aggregation", self.loss_aggregation, LOSS_AGGREGATIONS),
                                     ("--importance_sampling_level", self.importance_sampling_level,
                                      IMPORTANCE_SAMPLING_LEVELS)):
            if value not in choices:
                raise ConfigError(f"{flag} {value!r} is not one of {', '.join(choices)}")
        if self.kl_mode is not None and self.kl_mode not in KL_MODES:
            raise ConfigError(f"--kl_mode {self.kl_mode!r} is not one of {', '.join(KL_MODES)}")
        if self.num_samples_per_prompt < 1:
            raise ConfigError(f"--num_samples_per_prompt {self.num_samples_per_prompt} must be 1 or more")
        if self.definition.compares_answers and self.num_samples_per_prompt < 2:
            raise ConfigError(
                f"--algorithm {self.name} compares the answers to one prompt with each other: it needs "
                f"--num_samples_per_prompt 2 or more (got {self.num_samples_per_prompt}); 4 to 16 is usual")
        if self.scale_rewards != "group" and not self.definition.accepts_scale_rewards:
            takers = " or ".join(a.name for a in algorithms.REGISTRY.values() if a.accepts_scale_rewards)
            raise ConfigError(f"--scale_rewards applies to --algorithm {takers} only (got --algorithm {self.name})")
        if not math.isfinite(self.entropy_coef):
            raise ConfigError(f"--entropy_coef {self.entropy_coef} is not a finite number")
        if self.dynamic_sampling and not self.definition.compares_answers:
            takers = " or ".join(a.name for a in algorithms.REGISTRY.values() if a.compares_answers)
            raise ConfigError(f"--dynamic_sampling drops groups of answers to one prompt that all score the same: "
                              f"it needs --algorithm {takers} (got --algorithm {self.name})")
        if self.dynamic_sampling_max_batches < 0:
            raise ConfigError(f"--dynamic_sampling_max_batches {self.dynamic_sampling_max_batches} must be 0 or more")

    def _check_preference_loss(self) -> None:
        """Online DPO's β and loss type: its defaults under it, an error under any other algorithm."""
        if self.definition.uses_advantages:
            given = [flag for flag, value in (("--dpo_beta", self.dpo_beta), ("--dpo_loss_type", self.dpo_loss_type))
                     if value is not None]
            if given:
                takers = " or ".join(a.name for a in algorithms.REGISTRY.values() if not a.uses_advantages)
                one = len(given) == 1
                raise ConfigError(f"{' and '.join(given)} {'applies' if one else 'apply'} to --algorithm {takers} "
                                  f"only (got --algorithm {self.name}); drop {'it' if one else 'them'} or switch the "
                                  "algorithm")
            return
        if self.dpo_beta is None:
            object.__setattr__(self, "dpo_beta", DEFAULT_DPO_BETA)
        if self.dpo_loss_type is None:
            object.__setattr__(self, "dpo_loss_type", ONLINE_DPO_LOSS_TYPES[0])
        if not (self.dpo_beta > 0 and math.isfinite(self.dpo_beta)):
            raise ConfigError(f"--dpo_beta {self.dpo_beta}: must be a positive number (how tightly the policy stays "
                              "near the reference; 0.1 is usual)")
        if self.dpo_loss_type not in ONLINE_DPO_LOSS_TYPES:
            raise ConfigError(f"--dpo_loss_type {self.dpo_loss_type!r} is not one of "
                              f"{', '.join(ONLINE_DPO_LOSS_TYPES)}")

    def preference_loss(self) -> LossConfig | None:
        """Online DPO's ``LossConfig`` (None for the policy-gradient algorithms); imported here, as it loads torch."""
        if self.definition.uses_advantages:
            return None
        from chatrlhf.training.preference_losses import LossConfig

        return LossConfig(loss_type=self.dpo_loss_type, beta=self.dpo_beta)

    @property
    def definition(self) -> Algorithm:
        """The registered algorithm: its critic, defaults and advantages."""
        return algorithms.REGISTRY[self.name]

    @property
    def uses_critic(self) -> bool:
        return self.definition.uses_critic

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_mode == "loss" if self.kl_mode is not None else self.definition.kl_in_loss_by_default

    @property
    def default_kl_estimator(self) -> str:
        """k3 where the KL is a loss term (unbiased, always >= 0, a useful gradient), k1 in the reward."""
        return "k3" if self.kl_in_loss else "k1"

    @property
    def kl_weighted(self) -> bool:
        """The KL to the reference is weighted by ``--kl_ctl`` in the reward or the loss (False for online DPO,
        where β holds the policy near the reference)."""
        return self.definition.uses_advantages

    @property
    def advantages_need_old_logprobs(self) -> bool:
        """Critic-free advantages with the KL in the reward need every sample's old log-probs first."""
        return self.definition.uses_advantages and not self.uses_critic and not self.kl_in_loss


@dataclass(frozen=True)
class RewardConfig:
    """Where the reward comes from: ``model_weight`` x a reward model's score + each of ``fn_weights`` x its
    Python function's value (``fn_specs``, in order). Either kind may be absent, not both."""

    model_path: str | None = None
    fn_specs: tuple[str, ...] = ()
    model_weight: float = 1.0
    fn_weights: tuple[float, ...] = ()  # one per function; empty: 1.0 each
    fn_format_credit: float = 0.0
    fn_partial_credit: float = 0.0
    # DAPO's soft overlong penalty: answers longer than this many tokens lose up to 1 (0: off).
    overlong_penalty: int = 0

    def __post_init__(self) -> None:
        if self.model_path is None and not self.fn_specs:
            raise ConfigError("no reward source: give --reward_model_name_or_path, --reward_fn, or both")
        if not self.fn_weights:
            object.__setattr__(self, "fn_weights", (1.0,) * len(self.fn_specs))
        if len(self.fn_weights) != len(self.fn_specs):
            raise ConfigError(f"{len(self.fn_weights)} function weights for {len(self.fn_specs)} --reward_fn; give "
                              "one weight per function")
        for flag, value in (("--reward_model_weight", self.model_weight),
                            *(("--reward_weights", weight) for weight in self.fn_weights)):
            if not math.isfinite(value):
                raise ConfigError(f"{flag} {value} is not a finite number")
        for flag, value in (("--reward_fn_format_credit", self.fn_format_credit),
                            ("--reward_fn_partial_credit", self.fn_partial_credit)):
            if value and SYNTHETIC_TASKS_FN not in self.fn_specs:
                raise ConfigError(f"{flag} applies to --reward_fn {SYNTHETIC_TASKS_FN} only (got --reward_fn "
                                  f"{' '.join(self.fn_specs) or 'none'})")
        if self.overlong_penalty < 0:
            raise ConfigError(f"--overlong_penalty {self.overlong_penalty} must be 0 (off) or a length in tokens")
        if not (self.fn_format_credit >= 0 and self.fn_partial_credit >= 0
                and self.fn_format_credit + self.fn_partial_credit < 1.0):
            raise ConfigError(f"--reward_fn_format_credit {self.fn_format_credit} and --reward_fn_partial_credit "
                              f"{self.fn_partial_credit} must be >= 0 and add up to less than the 1.0 of a right "
                              "answer")


@dataclass(frozen=True)
class IterationSettings:
    """How a step-3 iteration is made and shown, beside the loop settings every step shares (``LoopSettings``)."""

    per_device_generation_batch_size: int = 16
    per_device_training_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    enable_ema: bool = False
    print_answers: bool = False
    print_answers_interval: int = 1
    enable_test_mode: bool = False
    test_stop_step: int = 0
    health: HealthLimits = field(default_factory=HealthLimits)


@dataclass(frozen=True)
class UnsupervisedData:
    """DeepSpeed-Chat's pretraining-loss data (``--unsupervised_dataset_name``), weighted by ``--unsup_coef``."""

    name: str | None = None
    config_name: str | None = None
