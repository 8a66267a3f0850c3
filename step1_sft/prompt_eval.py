"""Compare a baseline and a fine-tuned model on the same prompts, answers side by side.

Prompts are built in, or read from ``--prompts_file`` (plain lines, or MT-Bench/Vicuna question
files), or drawn from ``synthetic/tasks`` held-out prompts, in which case each model's checker
accuracy is printed per task. The comparison is also written to a markdown file.
"""
from __future__ import annotations

import argparse
import sys

from chatrlhf.training.cli_parser import new_parser
from chatrlhf.training.generation_flags import add_generation_args, generation_settings
from chatrlhf.utils.comparison import ComparisonSettings, compare_models, write_markdown
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.prompt_files import BUILT_IN_PROMPTS, read_prompts


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("prompt_eval", __doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path_baseline", required=True,
                        help="The model before fine-tuning: a directory, hub name or preset.")
    parser.add_argument("--model_name_or_path_finetune", required=True,
                        help="The fine-tuned model (a step-1 output directory).")
    parser.add_argument("--prompts_file", default=None,
                        help="Plain lines, or MT-Bench/Vicuna .jsonl questions (unset: built-in prompts).")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="Use N held-out synthetic/tasks prompts and print checker accuracy (0: off).")
    parser.add_argument("--prompt_template", default="hh", choices=["hh", "alpaca", "chatml"],
                        help="How a --prompts_file question becomes a prompt.")
    parser.add_argument("--data_path", nargs="*", default=["synthetic/tasks"],
                        help="The data a preset's tokenizer is built from (preset model names only).")
    parser.add_argument("--seed", type=int, default=1234,
                        help="Picks the synthetic prompts; keys preset tokenizers.")
    add_generation_args(parser)
    parser.add_argument("--output_file", default="prompt_eval.md", help="Where the markdown comparison goes.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = read_prompts(args.prompts_file, args.prompt_template) if args.prompts_file else None
    except DataError as exc:
        print(f"prompt_eval: {exc}", file=sys.stderr)
        return 1
    settings = ComparisonSettings(
        models={"baseline": args.model_name_or_path_baseline, "finetuned": args.model_name_or_path_finetune},
        prompts=prompts if prompts is not None else (None if args.synthetic else list(BUILT_IN_PROMPTS)),
        synthetic=args.synthetic,
        seed=args.seed,
        generation=generation_settings(args),
        data=DataConfig(data_path=tuple(args.data_path), seed=args.seed),
    )
    comparison = compare_models(settings)
    print(comparison.console())
    write_markdown(comparison, args.output_file)
    print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
