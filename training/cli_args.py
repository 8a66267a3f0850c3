"""Command-line flags shared by the steps (DeepSpeed-Chat's names and defaults) and their typed configs.

Flags are parsed once here at the edge; the library below takes the dataclasses built from them.
"""
from __future__ import annotations

import argparse

from chatrlhf.training.compat_flags import inert_help
from chatrlhf.training.config import EngineSettings, LoopSettings, LoraSettings, OptimSettings
from chatrlhf.training.optim import SCHEDULERS
from chatrlhf.training.validation import ConfigError
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.options import PROMPT_TEMPLATES, ColumnMap, SourceOptions
from chatrlhf.utils.device import DTYPES, default_dtype_name


def add_data_args(parser: argparse.ArgumentParser, *, sft_only: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", nargs="*", default=["synthetic/tasks"],
                       help="Sources: a DeepSpeed-Chat dataset name, local/jsonfile, a file or folder path, or "
                            "synthetic/tasks; NAME:WEIGHT weights a source in the blend.")
    group.add_argument("--data_split", type=str, default="2,4,4",
                       help="Comma-separated shares of each source for steps 1, 2 and 3.")
    if sft_only:
        group.add_argument("--sft_only_data_path", nargs="*", default=[], help="Sources used by step 1 only.")
    group.add_argument("--data_output_path", type=str, default="/tmp/data_files/",
                       help="Where tokenised datasets are cached (keyed by a hash of what changes them); "
                            "node-local: local rank 0 of each node builds its own copy.")
    group.add_argument("--prompt_template", choices=PROMPT_TEMPLATES, default="hh",
                       help="How a bare instruction becomes a prompt.")
    group.add_argument("--prompt_column", default=None, help="Column holding the prompt.")
    group.add_argument("--response_column", default=None, help="Column holding the response (SFT sources).")
    group.add_argument("--chosen_column", default=None, help="Column holding the preferred response.")
    group.add_argument("--rejected_column", default=None, help="Column holding the rejected response.")
    group.add_argument("--margin_column", default=None,
                       help="Column holding a pair's margin, read by step 2's --use_margin (unset: 'margin').")
    group.add_argument("--skip_bad_records", action="store_true", help="Skip and count broken records.")
    group.add_argument("--strict_data", action="store_true",
                       help="Fail instead of dropping: unusable records, records dropped while splitting between "
                            "steps, and samples cut or dropped to fit the length limits.")
    group.add_argument("--allow_cross_step_duplicates", action="store_true",
                       help="Split each source on its own, as DeepSpeed-Chat does: a prompt found in two sources may "
                            "then land in two steps' partitions (unset: the first source holding it decides).")


def add_model_args(parser: argparse.ArgumentParser, *, eot: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model_name_or_path", type=str, default="tiny-opt",
                       help="A Hugging Face name or directory, or a preset: tiny-opt, tiny-llama, smollm2-135m.")
    group.add_argument("--dropout", type=float, default=None,
                       help="Set every dropout probability of the model to this (unset: the model's own).")
    add_eot_args(group, eot=eot)


def add_eot_args(group, *, eot: bool = True) -> None:
    group.add_argument("--add_eot_token", action="store_true",
                       help="Add an end-of-text token to the tokenizer as a special token and use it as EOS"
                            + (" (--eot_token)." if eot else " (<|endoftext|>)."))
    if eot:
        group.add_argument("--eot_token", type=str, default="<|endoftext|>",
                           help="The token --add_eot_token adds.")


def add_training_args(parser: argparse.ArgumentParser, *, learning_rate: float) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--per_device_train_batch_size", type=int, default=16,
                       help="Training samples per device and micro-batch.")
    group.add_argument("--per_device_eval_batch_size", type=int, default=16,
                       help="Evaluation samples per device and batch.")
    group.add_argument("--max_seq_len", type=int, default=512,
                       help="Longest sample in tokens: answers are cut to fit; samples whose prompt alone fills it "
                            "are dropped.")
    group.add_argument("--learning_rate", type=float, default=learning_rate,
                       help="Peak learning rate of the AdamW optimizer.")
    group.add_argument("--weight_decay", type=float, default=0.0,
                       help="AdamW weight decay of the weights (never of biases and norms).")
    add_schedule_args(group, num_warmup_steps=0)
    add_output_args(group, saved="the model, metrics.json, checkpoints and the resolved flags",
                    seeds="model initialisation, data order and the synthetic data")
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute activations in the backward pass: less memory, slower steps.")
    add_precision_args(group, offloaded="the optimizer, whose states move to the CPU with --zero_stage 1-3",
                       tensorboard_path=None)
    group.add_argument("--zero_stage", type=int, default=0, choices=[0, 1, 2, 3],
                       help="DeepSpeed ZeRO stage: partition optimizer states (1), also gradients (2), also "
                            "parameters (3) across ranks.")
    group.add_argument("--lora_dim", type=int, default=0,
                       help="LoRA rank of adapters on the linear layers matched by --lora_module_name (0: no LoRA); "
                            "the adapters are merged into the saved model.")
    group.add_argument("--lora_module_name", type=str, default="decoder.layers.",
                       help="LoRA goes on every linear layer whose name contains this ('layers.' for LLaMA).")
    group.add_argument("--only_optimize_lora", action="store_true",
                       help="Train only the LoRA adapters (with --lora_dim); otherwise the base weights train too.")
    group.add_argument("--lora_learning_rate", type=float, default=5e-4,
                       help="Learning rate of the LoRA adapters.")
    group.add_argument("--save_lora_adapter", action="store_true",
                       help="With --only_optimize_lora, also save the adapter alone in peft's format in "
                            "OUTPUT_DIR/adapter/ (load it with peft.PeftModel.from_pretrained(base, path)).")
    add_progress_args(group, unit="optimizer steps", log_interval=10)
    group.add_argument("--eval_interval", type=int, default=0, help="Evaluate every N optimizer steps (0: per epoch).")
    group.add_argument("--eval_iters", type=int, default=0, help="Evaluate on at most N batches (0: all).")
    group.add_argument("--group_by_length", action="store_true",
                       help="Batch samples of similar length together: far less padding, faster steps.")
    group.add_argument("--packing", action="store_true",
                       help="Lay each batch's samples end to end in one row, positions restarting per sample, so "
                            "no work goes to padding; the batches and the loss stay the unpacked run's (TRL's "
                            "padding-free packing). Checked against the padded forward on the model first.")


def add_schedule_args(group, *, num_warmup_steps: int) -> None:
    """Epochs, accumulation and the learning-rate schedule: every step's (DeepSpeed-Chat's defaults differ only in
    the warmup, 100 steps in step 3)."""
    group.add_argument("--num_train_epochs", type=int, default=1,
                       help="Passes over the training data (step 3: over its prompts).")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="Micro-batches per optimizer step.")
    group.add_argument("--lr_scheduler_type", type=str, default="cosine", choices=SCHEDULERS,
                       help="Learning-rate schedule after the warmup (transformers' get_scheduler).")
    group.add_argument("--num_warmup_steps", type=int, default=num_warmup_steps,
                       help="Optimizer steps of linear learning-rate warmup from 0.")


def add_output_args(group, *, saved: str, seeds: str) -> None:
    """Where the run writes, its seed, and the launcher's --local_rank."""
    group.add_argument("--output_dir", type=str, default=None, help=f"Where {saved} are saved (required).")
    group.add_argument("--seed", type=int, default=1234, help=f"Seed of {seeds}.")
    group.add_argument("--local_rank", type=int, default=-1, help=inert_help("local_rank"))


def add_precision_args(group, *, offloaded: str, tensorboard_path: str | None) -> None:
    """Offload, precision and TensorBoard: the same flags in every step (step 3 keeps DeepSpeed-Chat's log folder)."""
    group.add_argument("--offload", action="store_true",
                       help=f"ZeRO-Offload: DeepSpeed's CPU Adam steps {offloaded} (and the parameters too at "
                            "stage 3).")
    group.add_argument("--dtype", type=str, default=None, choices=list(DTYPES),
                       help="Training precision; unset: bf16 on GPUs and fp32 on CPU.")
    group.add_argument("--compute_fp32_loss", action="store_true",
                       help="With --dtype fp16/bf16, compute the loss (step 3: log-probs, values and losses) in fp32 "
                            "(else in the model's dtype).")
    group.add_argument("--enable_tensorboard", action="store_true",
                       help="Write TensorBoard logs to --tensorboard_path.")
    group.add_argument("--tensorboard_path", type=str, default=tensorboard_path,
                       help="Folder of the TensorBoard logs, in a subfolder per job"
                            + (" (unset: JOB_tensorboard, e.g. step1_model_tensorboard)." if tensorboard_path is None
                               else " (step3_ppo)."))


def add_progress_args(group, *, unit: str, log_interval: int) -> None:
    """When to stop, log and checkpoint, counted in ``unit``, then the reliability flags."""
    group.add_argument("--max_steps", type=int, default=0, help=f"Stop after this many {unit} (0: no cap).")
    group.add_argument("--save_interval", type=int, default=0,
                       help=f"Write a resumable checkpoint every N {unit} (0: none).")
    group.add_argument("--log_interval", type=int, default=log_interval, help=f"Log train metrics every N {unit}.")
    add_reliability_args(group)


def add_reliability_args(group) -> None:
    """Checkpoints, resume and the health guard: the same flags for all three steps."""
    group.add_argument("--save_total_limit", type=int, default=0,
                       help="Keep only the newest K checkpoints (0: keep all).")
    group.add_argument("--resume", action="store_true", help="Continue from the newest complete checkpoint.")
    group.add_argument("--resume_from", type=str, default=None, help="Continue from this checkpoint folder.")
    group.add_argument("--resume_ignore_settings", action="store_true",
                       help="Resume even though the data, seed, batch sizes, accumulation or number of ranks differ "
                            "from the checkpoint's (the resumed run then draws other batches).")
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="Start afresh in an --output_dir that holds another job's files or this step's "
                            "checkpoints (the earlier checkpoints are deleted at the start).")
    group.add_argument("--max_bad_steps", type=int, default=10,
                       help="Stop after this many non-finite losses in a row.")


def add_deepspeed_args(parser: argparse.ArgumentParser) -> None:
    """The flags of ``deepspeed.add_config_arguments``, which DeepSpeed-Chat's scripts pass, with what they do here."""
    group = parser.add_argument_group("DeepSpeed")
    group.add_argument("--deepspeed", action="store_true", help=inert_help("deepspeed"))
    group.add_argument("--deepspeed_config", type=str, default=None,
                       help="A DeepSpeed JSON config laid over the one the flags build (frozen models take its "
                            "zero_optimization, fp16 and bf16 keys).")
    group.add_argument("--deepscale", action="store_true", help=inert_help("deepscale"))
    group.add_argument("--deepscale_config", type=str, default=None,
                       help="DeepSpeed's deprecated name of --deepspeed_config, read the same way.")


def deepspeed_config_path(args: argparse.Namespace) -> str | None:
    """``--deepspeed_config``, or the same file under DeepSpeed's old name ``--deepscale_config``."""
    new, old = getattr(args, "deepspeed_config", None), getattr(args, "deepscale_config", None)
    if new and old and new != old:
        raise ConfigError(f"--deepspeed_config {new} and --deepscale_config {old} name two files; --deepscale_config "
                          "is the old name of --deepspeed_config, so give only --deepspeed_config")
    return new or old


def data_config(args: argparse.Namespace, *, max_prompt_seq_len: int = 256) -> DataConfig:
    columns = ColumnMap(prompt=args.prompt_column, response=args.response_column, chosen=args.chosen_column,
                        rejected=args.rejected_column, margin=args.margin_column)
    return DataConfig(
        data_path=tuple(args.data_path),
        data_split=args.data_split,
        sft_only_data_path=tuple(getattr(args, "sft_only_data_path", ()) or ()),
        data_output_path=args.data_output_path,
        seed=args.seed,
        max_seq_len=getattr(args, "max_seq_len", 512),
        max_prompt_seq_len=max_prompt_seq_len,
        skip_bad_records=args.skip_bad_records,
        strict_data=args.strict_data,
        allow_cross_step_duplicates=args.allow_cross_step_duplicates,
        source=SourceOptions(prompt_template=args.prompt_template, columns=columns),
        preprocessing_num_workers=getattr(args, "preprocessing_num_workers", None),
        data_share=getattr(args, "data_share", None),
    )


def lora_settings(args: argparse.Namespace) -> LoraSettings:
    if args.save_lora_adapter and not (args.lora_dim > 0 and args.only_optimize_lora):
        raise ConfigError(
            "--save_lora_adapter needs --lora_dim > 0 and --only_optimize_lora: without them the base weights train "
            "too, so an adapter alone would not reproduce the model; add both flags, or drop --save_lora_adapter "
            "(the saved model has any adapters merged in)")
    return LoraSettings(args.lora_dim, args.lora_module_name, args.only_optimize_lora, args.lora_learning_rate,
                        args.save_lora_adapter)


def optim_settings(args: argparse.Namespace) -> OptimSettings:
    return OptimSettings(
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler_type,
        num_warmup_steps=args.num_warmup_steps,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )


def engine_settings(args: argparse.Namespace, job_name: str) -> EngineSettings:
    return EngineSettings(
        zero_stage=args.zero_stage,
        offload=args.offload,
        dtype=args.dtype or default_dtype_name(),
        gradient_checkpointing=args.gradient_checkpointing,
        micro_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        compute_fp32_loss=args.compute_fp32_loss,
        deepspeed_config=deepspeed_config_path(args),
        enable_tensorboard=args.enable_tensorboard,
        tensorboard_path=args.tensorboard_path or f"{job_name}_tensorboard",
        job_name=job_name,
    )


def loop_settings(args: argparse.Namespace, output_dir: str) -> LoopSettings:
    return LoopSettings(
        output_dir=output_dir,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        save_interval=args.save_interval,
        log_interval=args.log_interval,
        print_loss=getattr(args, "print_loss", False),
        seed=args.seed,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        group_by_length=args.group_by_length,
        packing=args.packing,
        save_total_limit=args.save_total_limit,
        resume=args.resume,
        resume_from=args.resume_from,
        overwrite_output_dir=args.overwrite_output_dir,
        resume_ignore_settings=args.resume_ignore_settings,
        max_bad_steps=args.max_bad_steps,
    )
