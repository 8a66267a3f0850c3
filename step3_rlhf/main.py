"""Step 3: PPO RLHF with an actor, a frozen reference, a critic and a frozen reward model, on DeepSpeed.

Runs as ``deepspeed step3_rlhf/main.py ...``, ``python step3_rlhf/main.py ...`` or ``chatrlhf ppo ...``
and accepts DeepSpeed-Chat's step-3 flags with the same meaning. ``--algorithm grpo|rloo|reinforce_pp``
trains without a critic, and ``--reward_fn`` takes the reward from a Python function.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator
from chatrlhf.utils.host_memory import REUSED_BLOCK_BYTES

configure_accelerator(REUSED_BLOCK_BYTES)


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.step3_rlhf.config import KL_ESTIMATORS
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
    add("--num_padding_at_beginning", type=int, default=1,
        help="Accepted for DeepSpeed-Chat compatibility; scores use the attention mask, so it changes nothing.")
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
    add("--preprocessing_num_workers", type=int, default=None,
        help="Processes that tokenise the data cache (default: this one).")
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
    add("--compute_fp32_loss", action="store_true",
        help="With --dtype fp16/bf16, compute log-probs, values and losses in fp32 (else in the model's dtype).")
    add("--enable_tensorboard", action="store_true")
    add("--tensorboard_path", type=str, default="step3_tensorboard")
    add("--add_eot_token", action="store_true")
    add("--eot_token", type=str, default="<|endoftext|>")
    add("--align_overflow", action="store_true",
        help="Accepted for DeepSpeed-Chat compatibility (fp16 overflow alignment of actor and critic); no effect.")
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
    group.add_argument("--kl_estimator", choices=KL_ESTIMATORS, default=None,
                       help="Per-token KL to the reference, with r = policy / reference: k1 = log r, "
                            "k2 = (log r)^2 / 2, k3 = 1/r - 1 + log r. Default: k1 with the KL in the reward, "
                            "k3 with it in the loss (--kl_mode).")
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
    add_algorithm_args(parser)
    cli_args.add_deepspeed_args(parser)
    return parser


def add_algorithm_args(parser: argparse.ArgumentParser) -> None:
    """The policy-gradient algorithm and the reward sources (defaults: DeepSpeed-Chat's PPO and reward model)."""
    from chatrlhf.step3_rlhf.config import ALGORITHMS, KL_MODES, LOSS_AGGREGATIONS, SCALE_REWARDS, SYNTHETIC_TASKS_FN

    group = parser.add_argument_group("algorithm and rewards")
    add = group.add_argument
    add("--algorithm", choices=ALGORITHMS, default="ppo",
        help="ppo: a critic and GAE (DeepSpeed-Chat). Critic-free, no critic loaded: grpo (advantage = reward "
             "minus its prompt group's mean, over the group's std), rloo (reward minus the mean of the prompt's "
             "other samples), reinforce_pp (REINFORCE++: discounted returns of KL-penalised token rewards, "
             "normalised over the global batch).")
    add("--num_samples_per_prompt", type=int, default=1,
        help="Answers sampled per prompt (default 1; grpo and rloo need 2 or more). A rollout holds "
             "--per_device_generation_batch_size prompts x this many answers.")
    add("--scale_rewards", choices=SCALE_REWARDS, default="group",
        help="grpo: divide each group's centred rewards by the group's std (group, the default), or not "
             "(none: Dr. GRPO).")
    add("--kl_mode", choices=KL_MODES, default=None,
        help="Where the KL to the reference goes, weighted by --kl_ctl: subtracted from the reward, or added "
             "to the loss. Default: loss for grpo, reward for the others.")
    add("--cliprange_high", type=float, default=None,
        help="Upper clip of the probability ratio, 1 + this (asymmetric clipping); default --cliprange.")
    add("--entropy_coef", type=float, default=0.0,
        help="Entropy bonus: the loss subtracts this x the entropy (default 0: none).")
    add("--loss_aggregation", choices=LOSS_AGGREGATIONS, default="token_mean",
        help="How the actor's per-token losses become one: token_mean (every answer token alike) or "
             "sequence_mean (each answer's mean over its tokens, then the mean over answers).")
    add("--reward_model_name_or_path", type=str, default=None,
        help="The frozen reward model. Default: --critic_model_name_or_path, unless --reward_fn is given "
             "(then no reward model is loaded unless named here).")
    add("--reward_fn", type=str, default=None,
        help=f"A reward function (prompt: str, response: str) -> float, called per sample: "
             f"{SYNTHETIC_TASKS_FN} (synthetic/tasks' exact checker: 1.0 right, 0.0 wrong), path/to/file.py:function "
             "(relative to the current directory) or package.module:function.")
    add("--reward_model_weight", type=float, default=1.0,
        help="Reward = this (default 1.0) x the reward model's score + ...")
    add("--reward_fn_weight", type=float, default=1.0, help="... + this (default 1.0) x the reward function's value.")
    add("--reward_fn_format_credit", type=float, default=0.0,
        help=f"--reward_fn {SYNTHETIC_TASKS_FN}: reward of a wrong answer in the right answer's sentence "
             "(the checker's format with another value), below the 1.0 of a right answer; default 0.")
    add("--reward_fn_partial_credit", type=float, default=0.0,
        help=f"--reward_fn {SYNTHETIC_TASKS_FN}: plus this x the share of the result's units right and in place "
             "(digits, letters, the sorted numbers) for a wrong answer in the right sentence; default 0.")


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None,
                   args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the flags given on the command line, even those given their default value.

    argparse only fills a default into a namespace that lacks the attribute, so parsing again into a
    namespace preset with a marker leaves the marker exactly where no flag was given.
    """
    unset = object()
    probe = parser.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(args)}))
    return frozenset(name for name, value in vars(probe).items() if value is not unset)


def inert_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The DeepSpeed-Chat flags that change nothing in this run: the hybrid-engine ones too unless the engine
    runs (--enable_hybrid_engine on a CUDA device)."""
    from chatrlhf.training.compat_flags import HYBRID_ENGINE_FLAGS
    from chatrlhf.utils.device import has_cuda

    names = ("num_padding_at_beginning", "align_overflow")
    return names if args.enable_hybrid_engine and has_cuda() else names + HYBRID_ENGINE_FLAGS


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv, args)
    from chatrlhf.step3_rlhf.run import PPORun
    from chatrlhf.training.compat_flags import notify_inert_flags
    from chatrlhf.training.validation import run_cli

    notify_inert_flags(parser, args, inert_flags(args))

    def body() -> int:
        PPORun.from_args(args, given).run()
        return 0

    return run_cli("chatrlhf ppo", body)


if __name__ == "__main__":
    sys.exit(main())
