"""Step 3: PPO RLHF with an actor, a frozen reference, a critic and a frozen reward model, on DeepSpeed.

Runs as ``deepspeed step3_rlhf/main.py ...``, ``python step3_rlhf/main.py ...`` or ``chatrlhf ppo ...``
and accepts DeepSpeed-Chat's step-3 flags with the same meaning.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator
from chatrlhf.utils.host_memory import REUSED_BLOCK_BYTES

configure_accelerator(REUSED_BLOCK_BYTES)


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training import cli_args
    from chatrlhf.training.optim import SCHEDULERS
    from chatrlhf.utils.device import DTYPES

    parser = argparse.ArgumentParser(prog="chatrlhf ppo", description=__doc__.splitlines()[0])
    cli_args.add_data_args(parser, sft_only=False)
    add = parser.add_argument
    add("--unsupervised_dataset_name", type=str, default=None,
        help="Pretraining-loss data: a .txt file, a data-layer source, or a dataset with a 'text' column.")
    add("--unsupervised_dataset_config_name", type=str, default=None)
    add("--unsup_coef", type=float, default=27.8)
    add("--actor_model_name_or_path", type=str, default="tiny-opt")
    add("--critic_model_name_or_path", type=str, default="tiny-opt")
    add("--num_padding_at_beginning", type=int, default=1, help="Accepted for compatibility; not needed.")
    add("--per_device_generation_batch_size", type=int, default=16)
    add("--per_device_training_batch_size", type=int, default=16)
    add("--generation_batches", type=int, default=1)
    add("--ppo_epochs", type=int, default=1)
    add("--max_prompt_seq_len", type=int, default=256)
    add("--max_answer_seq_len", type=int, default=256)
    add("--min_answer_seq_len", type=int, default=0)
    add("--actor_learning_rate", type=float, default=9.65e-6)
    add("--critic_learning_rate", type=float, default=5e-6)
    add("--actor_weight_decay", type=float, default=0.0)
    add("--critic_weight_decay", type=float, default=0.0)
    add("--num_train_epochs", type=int, default=1)
    add("--lr_scheduler_type", type=str, default="cosine", choices=SCHEDULERS)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--num_warmup_steps", type=int, default=100)
    add("--output_dir", type=str, default=None)
    add("--seed", type=int, default=1234)
    add("--preprocessing_num_workers", type=int, default=None, help="Accepted for compatibility.")
    add("--local_rank", type=int, default=-1)
    add("--enable_hybrid_engine", action="store_true")
    add("--unpin_actor_parameters", action="store_true")
    add("--release_inference_cache", action="store_true")
    add("--inference_tp_size", type=int, default=1)
    add("--tp_gather_partition_size", type=int, default=8)
    add("--offload", action="store_true")
    add("--offload_reference_model", action="store_true")
    add("--offload_reward_model", action="store_true")
    add("--dtype", type=str, default=None, choices=list(DTYPES))
    add("--actor_zero_stage", type=int, default=0, choices=[0, 1, 2, 3])
    add("--critic_zero_stage", type=int, default=0, choices=[0, 1, 2, 3])
    add("--actor_gradient_checkpointing", action="store_true")
    add("--critic_gradient_checkpointing", action="store_true")
    add("--actor_dropout", type=float, default=None)
    add("--critic_dropout", type=float, default=None)
    add("--actor_lora_dim", type=int, default=0)
    add("--actor_lora_module_name", type=str, default="decoder.layers.")
    add("--critic_lora_dim", type=int, default=0)
    add("--critic_lora_module_name", type=str, default="decoder.layers.")
    add("--only_optimize_lora", action="store_true")
    add("--actor_lora_learning_rate", type=float, default=5e-4)
    add("--critic_lora_learning_rate", type=float, default=5e-4)
    add("--enable_ema", action="store_true")
    add("--enable_mixed_precision_lora", action="store_true")
    add("--compute_fp32_loss", action="store_true")
    add("--enable_tensorboard", action="store_true")
    add("--tensorboard_path", type=str, default="step3_tensorboard")
    add("--add_eot_token", action="store_true")
    add("--eot_token", type=str, default="<|endoftext|>")
    add("--align_overflow", action="store_true", help="Accepted for compatibility (fp16 overflow alignment).")
    add("--print_answers", action="store_true")
    add("--print_answers_interval", type=int, default=1)
    add("--enable_test_mode", action="store_true")
    add("--test_stop_step", type=int, default=0)
    group = parser.add_argument_group("PPO hyper-parameters (DeepSpeed-Chat's values as defaults)")
    group.add_argument("--kl_ctl", type=float, default=0.1)
    group.add_argument("--clip_reward_value", type=float, default=5.0)
    group.add_argument("--cliprange", type=float, default=0.2)
    group.add_argument("--cliprange_value", type=float, default=0.2)
    group.add_argument("--gamma", type=float, default=1.0)
    group.add_argument("--lam", type=float, default=0.95)
    group.add_argument("--kl_estimator", choices=["k1", "k3"], default="k1")
    group.add_argument("--target_kl", type=float, default=None, help="Adaptive KL controller target (off if unset).")
    group.add_argument("--kl_horizon", type=int, default=10000)
    group.add_argument("--normalize_reward", action="store_true", help="Use the step-2 score mean and std.")
    group.add_argument("--whiten_advantages", action="store_true")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_p", type=float, default=1.0)
    group.add_argument("--top_k", type=int, default=0)
    group.add_argument("--max_steps", type=int, default=0, help="Stop after N PPO iterations (0: no cap).")
    group.add_argument("--eval_prompts", type=int, default=64, help="Held-out prompts scored at start and end.")
    group.add_argument("--log_interval", type=int, default=1)
    group.add_argument("--save_interval", type=int, default=0, help="Checkpoint every N PPO iterations.")
    cli_args.add_reliability_args(group)
    cli_args.add_deepspeed_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.step3_rlhf.run import PPORun
    from chatrlhf.training.validation import run_cli

    def body() -> int:
        PPORun.from_args(args).run()
        return 0

    return run_cli("chatrlhf ppo", body)


if __name__ == "__main__":
    sys.exit(main())
