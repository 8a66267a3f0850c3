"""PPO settings: DeepSpeed-Chat's hard-coded hyper-parameters as fields with its values as defaults."""
from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class RunConfig:
    """Loop-level settings of a PPO run."""

    output_dir: str
    num_train_epochs: int = 1
    max_steps: int = 0
    seed: int = 1234
    per_device_generation_batch_size: int = 16
    per_device_training_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    enable_ema: bool = False
    print_answers: bool = False
    print_answers_interval: int = 1
    enable_test_mode: bool = False
    test_stop_step: int = 0
    log_interval: int = 1
    save_interval: int = 0
    save_total_limit: int = 0
    resume: bool = False
    resume_from: str | None = None
