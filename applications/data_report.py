"""``chatrlhf data``: record counts per source and step, drops by reason, and a check for prompt overlaps.

An overlap is a prompt (by hash) that lands in two steps' partitions or in both train and eval:
it would let a later step see what an earlier one was evaluated on.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from itertools import combinations

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.partitions import iter_sources, step_records
from chatrlhf.utils.data.splitting import parse_source_spec
from chatrlhf.utils.data.synthetic_tasks import IMPERFECT_NAME, PERFECT_NAME, data_card


def _hashes(records) -> set[str]:
    return {hashlib.sha256(r.prompt.encode()).hexdigest() for r in records}


def count_overlaps(steps: dict[int, tuple[list, list]]) -> dict[str, int]:
    """Prompts shared between any two steps' partitions (train+eval) and between train and eval of a step."""
    overlaps: dict[str, int] = {}
    everything = {s: _hashes(train) | _hashes(evals) for s, (train, evals) in steps.items()}
    for a, b in combinations(sorted(steps), 2):
        overlaps[f"step{a}-step{b}"] = len(everything[a] & everything[b])
    for s, (train, evals) in steps.items():
        overlaps[f"step{s} train-eval"] = len(_hashes(train) & _hashes(evals))
    return overlaps


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser

    parser = new_parser("chatrlhf data", __doc__.splitlines()[0])
    cli_args.add_data_args(parser)
    parser.add_argument("--seed", type=int, default=1234,
                        help="The seed of the run to check: it shuffles the splits and makes the synthetic data.")
    parser.add_argument("--max_seq_len", type=int, default=512,
                        help="Accepted so a training command's flags paste unchanged; no effect: the report counts "
                             "records before tokenisation.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.training.cli_args import data_config

    cfg = data_config(args)
    try:
        sources = list(iter_sources(cfg))
        steps = {s: step_records(cfg, s, [src for src in sources if s == 1 or not src.sft_only]) for s in (1, 2, 3)}
    except DataError as exc:
        print(f"chatrlhf data: {exc}", file=sys.stderr)
        return 1
    print(f"{'source':<48} {'step':>4} {'train':>7} {'eval':>6}")
    for step, records in steps.items():
        for name, (train, evals) in records.counts.items():
            print(f"{name[-48:]:<48} {step:>4} {train:>7} {evals:>6}")
    for src in sources:
        print(f"read {src.name}: {len(src.train)} train + {len(src.eval)} eval records; {src.report.summary()}")
        for origin, reason in src.report.examples:
            print(f"    {origin}: {reason}")
    if IMPERFECT_NAME in [parse_source_spec(spec)[0] for spec in cfg.data_path]:
        print(f"{IMPERFECT_NAME}: imperfect demonstrators ({PERFECT_NAME} has only right demonstrations)")
        for line in data_card():
            print(f"    {line}")
    overlaps = count_overlaps({s: (r.train, r.eval) for s, r in steps.items()})
    for pair, count in overlaps.items():
        print(f"overlap {pair}: {count}")
    total = sum(overlaps.values())
    print(f"overlaps found: {total}")
    return 0 if total == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
