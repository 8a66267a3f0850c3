"""Step 2 alternative: Kahneman-Tversky optimisation (KTO) of the SFT model on unpaired good/bad completions.

Runs as ``deepspeed step2_kto/main.py ...``, ``python step2_kto/main.py ...`` or ``chatrlhf kto ...`` with the flags
of ``chatrlhf dpo`` where they mean the same. It trains on step 2's share of the data as labelled completions
(prompt/completion/label rows, and every pair unpaired into a desirable and an undesirable one) and saves a
causal LM.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator

configure_accelerator()


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.step2_kto.kto_loss import LOSS_TYPES
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser

    parser = new_parser("chatrlhf kto", __doc__.splitlines()[0], config_file=True)
    cli_args.add_data_args(parser, sft_only=False)
    cli_args.add_model_args(parser)
    cli_args.add_training_args(parser, learning_rate=1e-3)
    parser.set_defaults(tensorboard_path="step2_tensorboard")
    group = parser.add_argument_group("KTO")
    group.add_argument("--loss_type", choices=LOSS_TYPES, default="kto",
                       help="kto, or apo_zero_unpaired (no reference point: for desirable completions better than "
                            "the model's own).")
    group.add_argument("--beta", type=float, default=0.1,
                       help="Temperature of the loss: how far the policy may move from the reference.")
    group.add_argument("--desirable_weight", type=float, default=1.0,
                       help="Weight of a desirable completion's loss; with unbalanced data keep desirable_weight x "
                            "desirable rows / (undesirable_weight x undesirable rows) between 1 and 4/3.")
    group.add_argument("--undesirable_weight", type=float, default=1.0,
                       help="Weight of an undesirable completion's loss.")
    group.add_argument("--offload_reference_model", action="store_true",
                       help="Keep the frozen reference's parameters on the CPU (ZeRO-3 parameter offload).")
    group.add_argument("--print_loss", action="store_true", help="Print the loss at every optimizer step.")
    cli_args.add_deepspeed_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from chatrlhf.step2_kto.run import KTORun
    from chatrlhf.training.compat_flags import LAUNCHER_FLAGS
    from chatrlhf.training.validation import run_step_command

    return run_step_command("chatrlhf kto", build_parser(), argv, lambda args: KTORun.from_args(args),
                            LAUNCHER_FLAGS)


if __name__ == "__main__":
    sys.exit(main())
