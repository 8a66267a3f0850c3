"""DeepSpeed engine set-up for a trained model: groups, optimizer, schedule, ZeRO and precision."""
from __future__ import annotations

from torch import nn

from chatrlhf.training.config import EngineSettings, LoraSettings, OptimSettings
from chatrlhf.training.ds_config import eval_ds_config, train_ds_config
from chatrlhf.training.optim import make_optimizer, make_scheduler, param_groups
from chatrlhf.utils import device


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward; LoRA needs inputs that require grad for it to work."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if hasattr(model, "config"):
        model.config.use_cache = False


def init_train_engine(
    model: nn.Module,
    engine: EngineSettings,
    optim: OptimSettings,
    lora: LoraSettings,
    num_training_steps: int,
):
    """A DeepSpeed engine that trains ``model``; ``num_training_steps`` counts optimizer steps."""
    import deepspeed

    if engine.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    groups = param_groups(model, optim.weight_decay, lora.learning_rate)
    optimizer = make_optimizer(groups, optim, offload=engine.offload)
    scheduler = make_scheduler(optimizer, optim, num_training_steps)
    config = train_ds_config(engine, device.world_size(), optim.max_grad_norm)
    ds_engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    if engine.zero_stage == 0 and device.world_size() == 1:
        # One process has nothing to average, yet DeepSpeed's stage-0 fallback would still flatten, reduce and
        # copy back every gradient after each backward (about 50 ms a step for a 24M-parameter model on a CPU).
        ds_engine.enable_backward_allreduce = False
    return ds_engine


def init_eval_engine(model: nn.Module, engine: EngineSettings):
    """A DeepSpeed engine for a frozen model (sharded by ZeRO-3 when asked), in eval mode."""
    import deepspeed

    for param in model.parameters():
        param.requires_grad_(False)
    ds_engine, *_ = deepspeed.initialize(model=model, config=eval_ds_config(engine, device.world_size()))
    ds_engine.eval()
    return ds_engine
