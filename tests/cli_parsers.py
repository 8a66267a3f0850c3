"""The commands' argument parsers, as the flag tests (test_cli_help, test_every_flag) enumerate them."""
from __future__ import annotations

import argparse
import importlib

PARSERS = ("chatrlhf.step1_sft.main", "chatrlhf.step1_sft.prompt_eval", "chatrlhf.step2_reward.main",
           "chatrlhf.step2_reward.rw_eval", "chatrlhf.step2_dpo.main", "chatrlhf.step2_kto.main",
           "chatrlhf.step3_rlhf.main",
           "chatrlhf.applications.e2e_rlhf", "chatrlhf.applications.chat", "chatrlhf.applications.compare",
           "chatrlhf.applications.data_report", "chatrlhf.applications.memory_cli")
# The training commands (steps 1-3 and the e2e runner): they take --config.
CONFIG_COMMANDS = ("chatrlhf.step1_sft.main", "chatrlhf.step2_reward.main", "chatrlhf.step2_dpo.main",
                   "chatrlhf.step2_kto.main", "chatrlhf.step3_rlhf.main", "chatrlhf.applications.e2e_rlhf")


def build(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.dest != "help"]
