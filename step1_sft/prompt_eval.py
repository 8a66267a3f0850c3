"""Compare a baseline and a fine-tuned model on the same prompts, answers side by side.

Prompts are built in, or read from ``--prompts_file`` (plain lines, or MT-Bench/Vicuna question
files), or drawn from ``synthetic/tasks`` held-out prompts, in which case each model's checker
accuracy is printed per task. The comparison is also written to a markdown file.
"""
from __future__ import annotations

import argparse
import json
import sys

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.templates import apply_prompt_template

BUILT_IN_PROMPTS = (
    "Human: Please tell me about Microsoft in a few sentence? Assistant:",
    "Human: Explain the moon landing to a 6 year old in a few sentences. Assistant:",
    "Human: Write a short poem about a wise frog. Assistant:",
    "Human: Who was president of the United States in 1955? Assistant:",
    "Human: How does a telescope work? Assistant:",
    "Human: Why do birds migrate south for the winter? Assistant:",
)


def read_prompts(path: str, template: str) -> list[str]:
    """Plain lines, or JSON lines with ``turns`` (MT-Bench, Vicuna bench) whose first turn is the prompt."""
    prompts: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        question = json.loads(line)["turns"][0]
                    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                        where = f"{path}:{number}"
                        raise DataError(f"expected a JSON object with 'turns' ({exc})", where=where) from exc
                else:
                    question = line
                prompts.append(apply_prompt_template(question, template))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the prompts file: {exc}", where=path) from exc
    if not prompts:
        raise DataError("no prompts in the file", where=path)
    return prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompt_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path_baseline", required=True)
    parser.add_argument("--model_name_or_path_finetune", required=True)
    parser.add_argument("--prompts_file", default=None, help="Plain lines, or MT-Bench/Vicuna .jsonl questions.")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="Use N held-out synthetic/tasks prompts and print checker accuracy.")
    parser.add_argument("--prompt_template", default="hh", choices=["hh", "alpaca", "chatml"])
    parser.add_argument("--data_path", nargs="*", default=["synthetic/tasks"],
                        help="The data a preset's tokenizer was trained on.")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output_file", default="prompt_eval.md", help="Where the markdown comparison goes.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.applications.comparison import ComparisonSettings, compare_models, write_markdown
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.model.generation import GenerationSettings

    generation = GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, num_beams=args.num_beams, batch_size=args.batch_size,
    )
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
        generation=generation,
        data=DataConfig(data_path=tuple(args.data_path), seed=args.seed),
    )
    comparison = compare_models(settings)
    print(comparison.console())
    write_markdown(comparison, args.output_file)
    print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
