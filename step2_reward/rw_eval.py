"""Score chosen/rejected answer pairs with a reward model and print each pair's scores and the accuracy.

The pairs are built in (a few HH-style ones and one held-out synthetic/tasks right-vs-wrong pair per task)
or read with ``--pairs_file`` from any source the data layer reads (JSON/JSONL/CSV/Parquet pair files,
``local/jsonfile``, a DeepSpeed-Chat dataset name, ``synthetic/tasks``).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.templates import apply_prompt_template, fit_response

HH_EXAMPLES = (
    (
        "Please tell me about Microsoft in a few sentences.",
        "Microsoft is a software company that develops, licenses and supports software products, including "
        "Windows and Office. It was founded in 1975 by Bill Gates and Paul Allen and is one of the largest "
        "technology companies in the world.",
        "I'm not sure. Human: What's your job? Assistant: I'm not sure. Human: What's your favorite color? "
        "Assistant: I'm not sure.",
    ),
    (
        "Explain the moon landing to a 6 year old in a few sentences.",
        "A long time ago, some astronauts flew all the way to the moon in a big rocket. They walked on the "
        "moon, picked up some rocks, and then flew back home to Earth.",
        "I don't know, I don't know.",
    ),
    (
        "How does a telescope work?",
        "A telescope uses lenses or mirrors to collect more light than your eye can and focus it, so that "
        "faraway things look bigger and brighter.",
        "Telescope telescope telescope telescope telescope.",
    ),
)
SYNTHETIC_EXAMPLES = 5


@dataclass
class Pairs:
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    tasks: list[str] = field(default_factory=list)
    mistakes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: list[int]) -> Pairs:
        """The pairs at ``indices``, in that order."""
        return Pairs(*([column[i] for i in indices] for column in (self.prompts, self.chosen, self.rejected,
                                                                  self.tasks, self.mistakes)))


def built_in_pairs(seed: int, template: str = "hh") -> Pairs:
    """The HH-style examples and the first held-out synthetic/tasks pair of each task (never trained on)."""
    from chatrlhf.utils.data.options import SourceOptions
    from chatrlhf.utils.data.synthetic_tasks import SyntheticTasks

    pairs = Pairs([], [], [], [], [])
    for question, good, bad in HH_EXAMPLES:
        prompt = apply_prompt_template(question, template)
        _add(pairs, prompt, fit_response(prompt, good), fit_response(prompt, bad), "hh", "")
    options = SourceOptions(seed=seed, prompt_template=template)
    synthetic = SyntheticTasks("", seed, 0, options=options, num_train=0, num_eval=SYNTHETIC_EXAMPLES)
    for sample in synthetic.get_eval_data():
        _add(pairs, sample["prompt"], sample["chosen"], sample["rejected"], sample["task"], sample["mistake"])
    return pairs


def read_pairs(name: str, args: argparse.Namespace) -> Pairs:
    """Every pair of a source through the data layer's validation; a held-out (eval) part comes first."""
    from chatrlhf.utils.data.options import SourceOptions
    from chatrlhf.utils.data.sources import open_source, to_records

    options = SourceOptions(seed=args.seed, skip_bad_records=args.skip_bad_records,
                            prompt_template=args.prompt_template)
    raw = open_source(name, seed=args.seed, options=options)
    records = []
    if raw.get_eval_data() is not None:
        records += to_records(raw, "eval", skip_bad_records=args.skip_bad_records)[0]
    records += to_records(raw, "train", skip_bad_records=args.skip_bad_records)[0]
    records = [r for r in records if r.is_pair]
    if not records:
        raise DataError("no chosen/rejected pairs (only prompt/response rows?)", where=name,
                        hint="Give a file with prompt, chosen and rejected fields.")
    if args.max_pairs:
        records = records[: args.max_pairs]
    pairs = Pairs([], [], [], [], [])
    for r in records:
        _add(pairs, r.prompt, r.chosen, r.rejected, str(r.meta.get("task", "")), str(r.meta.get("mistake", "")))
    return pairs


def _add(pairs: Pairs, prompt: str, chosen: str, rejected: str, task: str, mistake: str) -> None:
    pairs.prompts.append(prompt)
    pairs.chosen.append(chosen)
    pairs.rejected.append(rejected)
    pairs.tasks.append(task)
    pairs.mistakes.append(mistake)


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def report(pairs: Pairs, chosen: list[float], rejected: list[float],
           dropped: dict[str, int] | None = None) -> dict[str, float]:
    """Print each pair's scores, then the accuracy (per task and mistake kind when the pairs are labelled).

    ``dropped`` holds ``fit_pair``'s counts: the pairs left out (identical once cut to ``--max_seq_len``, so a tie
    that must not count as wrong) and the kept pairs whose prompt or answers were cut. The returned metrics hold
    ``dropped_pairs``, the number left out.
    """
    from chatrlhf.training.pair_metrics import ScoredPairs, pair_metrics
    from chatrlhf.utils.data.tokenized import DROPPING_REASONS

    dropped = dropped or {}
    for index in range(len(pairs)):
        verdict = "ok" if chosen[index] > rejected[index] else "WRONG"
        label = "/".join(x for x in (pairs.tasks[index], pairs.mistakes[index]) if x)
        print(f"==== pair {index + 1}{f' [{label}]' if label else ''}: {_short(pairs.prompts[index])!r}")
        print(f"  chosen   {chosen[index]:+.4f}  {_short(pairs.chosen[index])!r}")
        print(f"  rejected {rejected[index]:+.4f}  {_short(pairs.rejected[index])!r}  -> {verdict}")
    left_out = sum(n for reason, n in dropped.items() if reason in DROPPING_REASONS)
    for reason, count in sorted(dropped.items()):
        kind = "pairs not scored" if reason in DROPPING_REASONS else "pairs scored"
        print(f"{kind}: {reason}: {count}")
    metrics = pair_metrics(ScoredPairs(chosen, rejected, pairs.tasks, pairs.mistakes))
    if not metrics:
        print(f"\nno pairs left to score ({left_out} dropped); raise --max_seq_len so the answers fit.")
        return {"dropped_pairs": left_out}
    print(f"\naccuracy {metrics['accuracy']:.1%} on {len(pairs)} pairs ({left_out} dropped); mean chosen "
          f"{metrics['chosen_score']:.4f}, mean rejected {metrics['rejected_score']:.4f}, mean margin "
          f"{metrics['margin']:.4f}")
    breakdown = [f"{k[4:]} {v:.0%}" for k, v in metrics.items() if k.startswith("acc_")]
    if breakdown:
        print("  " + ", ".join(breakdown))
    return {**metrics, "dropped_pairs": left_out}


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training.cli_parser import new_parser
    from chatrlhf.training.compat_flags import inert_help

    parser = new_parser("rw_eval", __doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True, help="A step-2 output directory.")
    parser.add_argument("--num_padding_at_beginning", type=int, default=1, help=inert_help("num_padding_at_beginning"))
    parser.add_argument("--add_eot_token", action="store_true",
                        help="Use <|endoftext|> as the end token (as the model was trained with it).")
    parser.add_argument("--pairs_file", default=None,
                        help="Pairs to score: any --data_path source with prompt/chosen/rejected.")
    parser.add_argument("--prompt_template", default="hh", choices=["hh", "alpaca", "chatml"],
                        help="How a bare instruction of the pairs becomes a prompt.")
    parser.add_argument("--max_pairs", type=int, default=0, help="Score at most N pairs of --pairs_file (0: all).")
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="Skip and count broken records of --pairs_file instead of failing.")
    parser.add_argument("--data_path", nargs="*", default=["synthetic/tasks"],
                        help="The data a preset's tokenizer is built from (preset model names only).")
    parser.add_argument("--max_seq_len", type=int, default=512,
                        help="Longest scored sequence in tokens (prompt and answer); a longer prompt loses its "
                        "oldest tokens first, as in step 2's data.")
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences scored at once.")
    parser.add_argument("--seed", type=int, default=1234,
                        help="Picks the built-in synthetic pairs; keys preset tokenizers.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from chatrlhf.training.compat_flags import notify_inert_flags
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.model.reward_scoring import RewardScorer

    notify_inert_flags(parser, args, ("num_padding_at_beginning",))

    try:
        pairs = read_pairs(args.pairs_file, args) if args.pairs_file else built_in_pairs(args.seed,
                                                                                          args.prompt_template)
    except DataError as exc:
        print(f"rw_eval: {exc}", file=sys.stderr)
        return 1
    data = DataConfig(data_path=tuple(args.data_path), seed=args.seed, max_seq_len=args.max_seq_len)
    scorer = RewardScorer.load(args.model_name_or_path, data, add_eot_token=args.add_eot_token,
                               batch_size=args.batch_size)
    encoded = scorer.encode_pairs(pairs.prompts, pairs.chosen, pairs.rejected)
    report(pairs.subset(encoded.kept), scorer.score_ids(encoded.chosen), scorer.score_ids(encoded.rejected),
           encoded.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
