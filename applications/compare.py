"""``chatrlhf compare MODEL_A MODEL_B …``: any models on the same prompts, answers side by side.

The prompts come from ``--prompts_file`` (plain lines, or ``.jsonl`` lines with a whole ``prompt`` or
MT-Bench/Vicuna ``turns``), from ``--synthetic N`` held-out ``synthetic/tasks`` prompts (then each model's
checker accuracy is given, overall and per task), or are built in. ``--reward_model`` adds each model's mean
reward and each later model's win rate over the first. The same comparison ends
the end-to-end report; here it runs on its own, e.g. on checkpoints of different runs.
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
    parser = new_parser("chatrlhf compare", __doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="Model directories, hub names or presets (tiny-opt, tiny-llama, smollm2-135m).")
    parser.add_argument("--labels", nargs="+", default=None, help="One label per model (default: the paths).")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompts_file", default=None,
                         help="Plain lines, or .jsonl lines with a whole 'prompt' (e.g. a multi-turn dialogue) or "
                              "MT-Bench/Vicuna 'turns' (unset: built-in prompts).")
    prompts.add_argument("--synthetic", type=int, default=0,
                         help="Use N held-out synthetic/tasks prompts and report checker accuracy (0: off).")
    parser.add_argument("--novel_words", action="store_true",
                        help="With --synthetic: ask the word tasks of words outside words.txt (memorisation check).")
    parser.add_argument("--sampled", type=int, default=0,
                        help="With --synthetic: also K answers a prompt sampled at temperature 1, for pass@1 "
                             "(0: none).")
    parser.add_argument("--prompt_template", default="hh", choices=["hh", "alpaca", "chatml", "model"],
                        help="How a --prompts_file or --synthetic question becomes a prompt (model: each model's own "
                             "chat template, --synthetic only).")
    parser.add_argument("--reward_model", default=None,
                        help="A step-2 output directory: adds each model's mean reward, and each later model's "
                             "share of prompts where it scores above the first model (ties half).")
    parser.add_argument("--output_file", default=None, help="Also write the comparison as markdown here.")
    parser.add_argument("--examples", type=int, default=5, help="How many prompts to show answers for.")
    parser.add_argument("--data_path", nargs="*", default=["synthetic/tasks"],
                        help="The data a preset's tokenizer is built from (preset model names only).")
    parser.add_argument("--seed", type=int, default=1234, help="Picks the synthetic prompts; keys preset tokenizers.")
    add_generation_args(parser)
    return parser


def labels_for(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Label → model; labels must be unique because the tables are keyed by them."""
    labels = args.labels or args.models
    if len(labels) != len(args.models):
        parser.error(f"--labels gives {len(labels)} labels for {len(args.models)} models")
    if len(set(labels)) != len(labels):
        parser.error("labels must be unique; give distinct --labels")
    return dict(zip(labels, args.models))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    models = labels_for(parser, args)
    if args.synthetic < 0 or args.examples < 0 or args.sampled < 0:
        parser.error("--synthetic, --examples and --sampled must be >= 0")
    if (args.novel_words or args.sampled) and not args.synthetic:
        parser.error("--novel_words and --sampled go with --synthetic N")
    if args.prompt_template == "model" and not args.synthetic:
        parser.error("--prompt_template model goes with --synthetic N (a --prompts_file is wrapped once, for all "
                     "models)")
    try:
        prompts = read_prompts(args.prompts_file, args.prompt_template) if args.prompts_file else None
    except DataError as exc:
        print(f"chatrlhf compare: {exc}", file=sys.stderr)
        return 1
    settings = ComparisonSettings(
        models=models,
        prompts=prompts if prompts is not None else (None if args.synthetic else list(BUILT_IN_PROMPTS)),
        synthetic=args.synthetic,
        seed=args.seed,
        generation=generation_settings(args),
        data=DataConfig(data_path=tuple(args.data_path), seed=args.seed),
        reward_model=args.reward_model,
        examples=args.examples,
        novel_words=args.novel_words,
        sampled=args.sampled,
        synthetic_template=args.prompt_template,
    )
    from chatrlhf.training.metrics_log import quiet_library_bars

    quiet_library_bars()
    try:
        comparison = compare_models(settings)
    except (OSError, ValueError) as exc:
        print(f"chatrlhf compare: cannot compare: {exc}", file=sys.stderr)
        return 1
    print(comparison.console())
    if args.output_file:
        write_markdown(comparison, args.output_file)
        print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
