"""Typed settings shared by the three steps' training, parsed once from the command line."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSettings:
    dim: int = 0
    module_name: str = "decoder.layers."
    only_optimize_lora: bool = False
    learning_rate: float = 5e-4
    save_adapter: bool = False  # --save_lora_adapter: the adapter alone too, in peft's format

    @property
    def enabled(self) -> bool:
        return self.dim > 0


@dataclass(frozen=True)
class OptimSettings:
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    num_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass(frozen=True)
class EngineSettings:
    """How DeepSpeed runs one trained model: ZeRO stage, offload, precision, micro-batch."""

    zero_stage: int = 0
    offload: bool = False
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    micro_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    compute_fp32_loss: bool = False
    deepspeed_config: str | None = None
    enable_tensorboard: bool = False
    tensorboard_path: str = ""
    job_name: str = "step1"
    hybrid_engine: dict | None = None
    # --enable_mixed_precision_lora: ZeRO-3 keeps the frozen (non-LoRA) weights quantized, as DeepSpeed-Chat.
    quantized_nontrainable_weights: bool = False


@dataclass(frozen=True)
class LoopSettings:
    """When to stop, evaluate, log and checkpoint."""

    output_dir: str
    num_train_epochs: int = 1
    max_steps: int = 0
    eval_interval: int = 0
    eval_iters: int = 0
    save_interval: int = 0
    log_interval: int = 10
    print_loss: bool = False
    seed: int = 1234
    per_device_eval_batch_size: int = 16
    group_by_length: bool = False
    packing: bool = False
    """``--packing``: each batch's rows laid end to end in the forward (``training/packing.py``)."""
    save_total_limit: int = 0
    resume: bool = False
    resume_from: str | None = None
    overwrite_output_dir: bool = False
    resume_ignore_settings: bool = False
    max_bad_steps: int = 10
