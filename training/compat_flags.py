"""DeepSpeed-Chat flags that change nothing here: accepted, so its scripts run unchanged, with one notice each.

A flag given a value other than its default gets one line saying why it has no effect and what to use
instead, so nobody believes a setting took hold that did not.
"""
from __future__ import annotations

import argparse
import os

from chatrlhf.training.metrics_log import print_rank0

HYBRID_ENGINE_OFF = ("it configures DeepSpeed's hybrid engine, which runs only with --enable_hybrid_engine on a CUDA "
                     "device")
INERT_FLAGS = {
    "num_padding_at_beginning": "scores are read at the last real token of the attention mask, so leading pads "
                                "never matter; drop the flag",
    "no_fused_kernels": "the optimizer is DeepSpeed's FusedAdam on GPUs and torch's AdamW on CPU; use --offload "
                        "for DeepSpeed's CPU Adam instead",
    "align_overflow": "only fp16 loss scaling overflows, and the actor and critic each skip their own overflowing "
                      "steps; use --dtype bf16 to train without loss scaling",
    "enable_hybrid_engine": "DeepSpeed's hybrid engine needs a CUDA device; generation runs on the training model "
                            "with a KV cache instead",
    "inference_tp_size": HYBRID_ENGINE_OFF,
    "release_inference_cache": HYBRID_ENGINE_OFF,
    "unpin_actor_parameters": HYBRID_ENGINE_OFF,
    "tp_gather_partition_size": HYBRID_ENGINE_OFF,
    "deepspeed": "training always runs on DeepSpeed; drop the flag",
    "deepscale": "training always runs on DeepSpeed (--deepscale is its old name); drop the flag",
    "local_rank": "each process reads its rank from the launcher's LOCAL_RANK environment variable; drop the flag",
}
# Flags DeepSpeed's launcher or ``deepspeed.add_config_arguments`` put on every step's command line.
LAUNCHER_FLAGS = ("deepspeed", "deepscale", "local_rank")
HYBRID_ENGINE_FLAGS = ("enable_hybrid_engine", "inference_tp_size", "release_inference_cache",
                       "unpin_actor_parameters", "tp_gather_partition_size")


def inert_help(name: str) -> str:
    """The help of a flag of ``INERT_FLAGS`` that never has an effect here: the same reason its notice gives."""
    return f"Accepted for DeepSpeed-Chat compatibility; no effect: {INERT_FLAGS[name]}."


def notify_inert_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """Print (on rank 0) and return one line per flag of ``names`` (keys of ``INERT_FLAGS``) whose value
    differs from the parser's default."""
    lines = []
    for name in names:
        value = getattr(args, name)
        if value == parser.get_default(name) or _from_launcher(name, value):
            continue
        shown = f"--{name}" if isinstance(value, bool) else f"--{name} {value}"
        lines.append(f"{shown}: no effect here; {INERT_FLAGS[name]}")
    for line in lines:
        print_rank0(line)
    return lines


def _from_launcher(name: str, value: object) -> bool:
    """DeepSpeed's launcher adds ``--local_rank=N`` to every rank's command line and sets ``LOCAL_RANK=N``: that
    one the user never wrote, so there is nothing for them to drop."""
    return name == "local_rank" and os.environ.get("LOCAL_RANK") == str(value)
