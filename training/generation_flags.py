"""Decoding flags shared by the commands that compare models (step 1's ``prompt_eval``, ``chatrlhf compare``)."""
from __future__ import annotations

import argparse

from chatrlhf.utils.model.generation import GenerationSettings


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """The decoding flags of every comparison command, so they mean the same everywhere."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max_new_tokens", type=int, default=100, help="Longest answer, in tokens.")
    group.add_argument("--do_sample", action="store_true", help="Sample the answers instead of greedy decoding.")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --do_sample).")
    group.add_argument("--top_p", type=float, default=1.0,
                       help="With --do_sample: sample from the most likely tokens holding this probability mass.")
    group.add_argument("--top_k", type=int, default=0,
                       help="With --do_sample: sample from the K most likely tokens (0: all).")
    group.add_argument("--num_beams", type=int, default=1, help="Beam search with this many beams (1: none).")
    group.add_argument("--batch_size", type=int, default=16, help="Prompts generated for at once.")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The flags of ``add_generation_args`` as the settings ``generate`` takes."""
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, num_beams=args.num_beams, batch_size=args.batch_size,
    )
