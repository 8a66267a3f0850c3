"""The ``chatrlhf`` console command: one subcommand per job, each a module with ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("chatrlhf.step1_sft.main", "Step 1: supervised fine-tuning"),
    "reward": ("chatrlhf.step2_reward.main", "Step 2: reward model training"),
    "dpo": ("chatrlhf.step2_dpo.main", "Step 2 alternative: DPO (and IPO, SimPO, ORPO, ...) of the SFT model"),
    "kto": ("chatrlhf.step2_kto.main", "Step 2 alternative: KTO of the SFT model on unpaired good/bad completions"),
    "ppo": ("chatrlhf.step3_rlhf.main", "Step 3: online RL (PPO, GRPO, RLOO, REINFORCE++)"),
    "e2e": ("chatrlhf.applications.e2e_rlhf", "Run steps 1-3 end to end and write a report"),
    "chat": ("chatrlhf.applications.chat", "Chat with a model in the terminal"),
    "compare": ("chatrlhf.applications.compare", "Compare models on held-out prompts"),
    "memory": ("chatrlhf.applications.memory_cli", "Estimate memory per GPU and CPU for a run"),
    "data": ("chatrlhf.applications.data_report", "Inspect data sources, splits and overlaps"),
}


def usage() -> str:
    lines = ["usage: chatrlhf <command> [flags]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines.append("\n`chatrlhf <command> --help` lists a command's flags and their defaults. sft, reward, dpo, kto, ppo "
                 "and e2e also\ntake --config FILE.yaml|json; flags on the command line override the file.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"chatrlhf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
