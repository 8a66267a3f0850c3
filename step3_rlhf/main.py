"""Step 3: online RL (PPO with an actor, a frozen reference, a critic and a reward model; GRPO, RLOO, REINFORCE++,
rejection sampling, online DPO).

Runs as ``deepspeed step3_rlhf/main.py ...``, ``python step3_rlhf/main.py ...`` or ``chatrlhf ppo ...``
and accepts DeepSpeed-Chat's step-3 flags with the same meaning. ``--algorithm grpo|rloo|reinforce_pp``
trains without a critic, and ``--reward_fn`` takes the reward from a Python function. The flags and their
mapping onto the run's settings are in ``flags``; the run itself in ``run``.
"""
from __future__ import annotations

import sys

from chatrlhf.utils.device import configure_accelerator
from chatrlhf.utils.host_memory import REUSED_BLOCK_BYTES

configure_accelerator(REUSED_BLOCK_BYTES)  # before anything imports DeepSpeed

from chatrlhf.step3_rlhf.flags import build_parser, explicit_flags, inert_flags, run_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from chatrlhf.training.validation import run_step_command

    parser = build_parser()
    return run_step_command("chatrlhf ppo", parser, argv,
                            lambda args: run_settings(args, explicit_flags(parser, argv, args)), inert_flags)


if __name__ == "__main__":
    sys.exit(main())
