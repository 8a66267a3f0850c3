"""Step 1: supervised fine-tuning of a causal LM on prompt/response data, on DeepSpeed.

Runs as ``deepspeed step1_sft/main.py ...``, ``python step1_sft/main.py ...`` or ``chatrlhf sft ...``
and accepts DeepSpeed-Chat's step-1 flags with the same meaning.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator

configure_accelerator()


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser

    parser = new_parser("chatrlhf sft", __doc__.splitlines()[0], config_file=True)
    cli_args.add_data_args(parser)
    parser.add_argument("--data_share", type=int, choices=(1, 2, 3), default=None, metavar="STEP",
                        help="Train on step STEP's share of --data_split instead of step 1's: 2 fine-tunes on the "
                             "step-2 pairs' chosen answers, the likelihood-only ablation of a preference step "
                             "(unset: step 1's own share).")
    cli_args.add_model_args(parser)
    cli_args.add_training_args(parser, learning_rate=1e-3)
    parser.add_argument("--train_on_prompt", action="store_true", help="Put the prompt tokens in the loss too.")
    parser.add_argument("--print_loss", action="store_true", help="Print the loss at every optimizer step.")
    cli_args.add_deepspeed_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from chatrlhf.step1_sft.run import SFTRun
    from chatrlhf.training.compat_flags import LAUNCHER_FLAGS
    from chatrlhf.training.validation import run_step_command

    return run_step_command("chatrlhf sft", build_parser(), argv, lambda args: SFTRun.from_args(args),
                            LAUNCHER_FLAGS)


if __name__ == "__main__":
    sys.exit(main())
