"""Step 2: train a reward model to score chosen answers above rejected ones, on DeepSpeed.

Runs as ``deepspeed step2_reward/main.py ...``, ``python step2_reward/main.py ...`` or ``chatrlhf reward ...``
and accepts DeepSpeed-Chat's step-2 flags (of its successive versions) with the same meaning.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator

configure_accelerator()

DEFAULT_EVAL_ITERS = 100


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser
    from chatrlhf.training.compat_flags import inert_help

    parser = new_parser("chatrlhf reward", __doc__.splitlines()[0], config_file=True)
    cli_args.add_data_args(parser, sft_only=False)
    cli_args.add_model_args(parser, eot=False)
    cli_args.add_training_args(parser, learning_rate=5e-5)
    parser.set_defaults(eval_iters=DEFAULT_EVAL_ITERS, tensorboard_path="step2_tensorboard")
    group = parser.add_argument_group("step 2")
    group.add_argument("--num_padding_at_beginning", type=int, default=1,
                       help=inert_help("num_padding_at_beginning"))
    group.add_argument("--center_rewards_coef", type=float, default=0.0,
                       help="Weight of mean((r_chosen + r_rejected)^2) in the loss, keeping scores centred on 0.")
    group.add_argument("--lm_loss_coef", type=float, default=0.0,
                       help="Weight of a next-token loss on the chosen rows (prompt and answer), predicted through "
                            "the tied input embeddings. It keeps the backbone a language model of good answers, which "
                            "regularises the ranking on small data (tied-embedding families, ZeRO stage 0-2).")
    group.add_argument("--use_margin", action="store_true",
                       help="Loss -log sigmoid(r_chosen - r_rejected - margin), with each pair's margin from the "
                            "'margin' column (or --margin_column) of a local pair file; every source must have one.")
    group.add_argument("--disable_dropout", action="store_true",
                       help="Set every dropout to 0 (older DeepSpeed-Chat flag; same as --dropout 0.0).")
    group.add_argument("--no_bf16_to_fp32_loss", action="store_false", dest="bf16_to_fp32_loss",
                       help="With --dtype bf16, compute the loss in bf16 instead of fp32.")
    group.add_argument("--no_fused_kernels", action="store_true", help=inert_help("no_fused_kernels"))
    group.add_argument("--print_loss", action="store_true", help="Print the loss at every optimizer step.")
    cli_args.add_deepspeed_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from chatrlhf.step2_reward.run import RewardRun
    from chatrlhf.training.compat_flags import LAUNCHER_FLAGS
    from chatrlhf.training.validation import run_step_command

    return run_step_command("chatrlhf reward", build_parser(), argv, lambda args: RewardRun.from_args(args),
                            ("num_padding_at_beginning", "no_fused_kernels", *LAUNCHER_FLAGS))


if __name__ == "__main__":
    sys.exit(main())
