"""Step 2 alternative: direct preference optimisation (DPO and its family) of the SFT model, on DeepSpeed.

Runs as ``deepspeed step2_dpo/main.py ...``, ``python step2_dpo/main.py ...`` or ``chatrlhf dpo ...`` and accepts
DeepSpeed-Chat's step2_dpo flags with the same meaning. It trains on step 2's pairs and saves a causal LM.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.utils.device import configure_accelerator

configure_accelerator()


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser
    from chatrlhf.training.preference_losses import DEFAULT_SIMPO_GAMMA, LOSS_TYPES

    parser = new_parser("chatrlhf dpo", __doc__.splitlines()[0], config_file=True)
    cli_args.add_data_args(parser, sft_only=False)
    cli_args.add_model_args(parser)
    cli_args.add_training_args(parser, learning_rate=1e-3)
    parser.set_defaults(tensorboard_path="step2_tensorboard")
    group = parser.add_argument_group("DPO")
    group.add_argument("--loss_type", choices=LOSS_TYPES, default="sigmoid",
                       help="sigmoid (DPO), ipo, hinge, robust (unbiased under label noise at --label_smoothing), "
                            "and the reference-free simpo and orpo.")
    group.add_argument("--beta", type=float, default=0.1,
                       help="Temperature of the loss (the KL weight of DPO; ORPO's odds-ratio weight).")
    group.add_argument("--label_smoothing", type=float, default=0.0,
                       help="Probability that a preference label is flipped: conservative DPO (sigmoid) or the "
                            "flip rate of robust.")
    group.add_argument("--simpo_gamma", type=float, default=None,
                       help=f"SimPO's target reward margin (--loss_type simpo only; default {DEFAULT_SIMPO_GAMMA}).")
    group.add_argument("--reference_model_name_or_path", type=str, default=None,
                       help="The frozen reference; default the model the policy starts from (--model_name_or_path).")
    group.add_argument("--offload_reference_model", action="store_true",
                       help="Keep the reference's parameters on the CPU (ZeRO-3 parameter offload).")
    group.add_argument("--precompute_ref_log_probs", action="store_true",
                       help="Score every pair with the reference once before training (cached on disk beside the "
                            "tokenised data, keyed by a hash of the reference's weights), then free it.")
    group.add_argument("--print_loss", action="store_true", help="Print the loss at every optimizer step.")
    cli_args.add_deepspeed_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from chatrlhf.step2_dpo.run import DPORun
    from chatrlhf.training.compat_flags import LAUNCHER_FLAGS
    from chatrlhf.training.validation import run_step_command

    return run_step_command("chatrlhf dpo", build_parser(), argv, lambda args: DPORun.from_args(args),
                            LAUNCHER_FLAGS)


if __name__ == "__main__":
    sys.exit(main())
