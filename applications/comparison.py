"""Compare models on the same prompts: answers side by side, checker accuracy and mean reward.

Used by step 1's ``prompt_eval``, ``chatrlhf compare`` and the end-to-end report, which share the prompt
reading and generation flags defined here.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.templates import apply_prompt_template
from chatrlhf.utils.model.generation import GenerationSettings, generate

BUILT_IN_PROMPTS = (
    "Human: Please tell me about Microsoft in a few sentence? Assistant:",
    "Human: Explain the moon landing to a 6 year old in a few sentences. Assistant:",
    "Human: Write a short poem about a wise frog. Assistant:",
    "Human: Who was president of the United States in 1955? Assistant:",
    "Human: How does a telescope work? Assistant:",
    "Human: Why do birds migrate south for the winter? Assistant:",
)


def read_prompts(path: str, template: str) -> list[str]:
    """Plain lines, or JSON lines: with ``prompt`` (a whole prompt, e.g. a multi-turn HH-RLHF dialogue up to its
    last ``Assistant:``), or with ``turns`` (MT-Bench, Vicuna bench), whose first turn is the prompt."""
    prompts: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        record = json.loads(line)
                        question = record["prompt"] if "prompt" in record else record["turns"][0]
                    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                        where = f"{path}:{number}"
                        raise DataError(f"expected a JSON object with 'prompt' or 'turns' ({exc})",
                                        where=where) from exc
                else:
                    question = line
                prompts.append(apply_prompt_template(question, template))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the prompts file: {exc}", where=path) from exc
    if not prompts:
        raise DataError("no prompts in the file", where=path)
    return prompts


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
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, num_beams=args.num_beams, batch_size=args.batch_size,
    )


@dataclass(frozen=True)
class ComparisonSettings:
    models: dict[str, str]
    prompts: list[str] | None = None
    synthetic: int = 0
    seed: int = 1234
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    data: DataConfig = field(default_factory=DataConfig)
    reward_model: str | None = None
    examples: int = 5
    novel_words: bool = False  # word tasks asked of words outside words.txt (``novel_word_prompts``)
    sampled: int = 0  # answers sampled per prompt at temperature 1 for pass@1, besides the greedy one
    # Fixed answers shown and scored beside the models (label -> one answer a prompt), e.g. the demonstrators the
    # models learnt from; one draw each, so their pass@1 is their accuracy.
    references: dict[str, list[str]] = field(default_factory=dict)
    # How the synthetic questions are wrapped for each model (``model``: its own tokenizer's chat template).
    synthetic_template: str = "hh"


@dataclass
class Comparison:
    prompts: list[str]
    answers: dict[str, list[str]]
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    pass_at_1: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_reward: dict[str, float] = field(default_factory=dict)
    # Each later model's share of prompts whose answer the reward model scores above the first model's (ties half).
    win_rate: dict[str, float] = field(default_factory=dict)
    examples: int = 5

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for label in self.answers:
            acc = self.accuracy.get(label, {}).get("overall")
            sampled = self.pass_at_1.get(label, {}).get("overall")
            reward = self.mean_reward.get(label)
            rows.append((label, "-" if acc is None else f"{acc:.1%}", "-" if sampled is None else f"{sampled:.1%}",
                         "-" if reward is None else f"{reward:.3f}"))
        return rows

    def _win_lines(self) -> list[str]:
        first = next(iter(self.answers))
        return [f"{label} wins over {first} on {rate:.1%} of {len(self.prompts)} prompts (reward model; ties count "
                "half)" for label, rate in self.win_rate.items()]

    def console(self) -> str:
        lines = []
        for index, prompt in enumerate(self.prompts[: max(self.examples, 1)]):
            lines.append(f"==== prompt {index + 1}: {prompt.strip()!r}")
            lines += [f"  [{label}] {answers[index].strip()!r}" for label, answers in self.answers.items()]
        lines.append("")
        for label, acc, sampled, reward in self.summary_rows():
            pass_at_1 = f", sampled pass@1 {sampled}" if self.pass_at_1 else ""
            lines.append(f"{label}: checker accuracy {acc}{pass_at_1}, mean reward {reward}")
        lines += self._win_lines()
        for label, per_task in self.accuracy.items():
            tasks = ", ".join(f"{t} {v:.0%}" for t, v in per_task.items() if t != "overall")
            lines.append(f"  {label} per task: {tasks}")
        return "\n".join(lines)

    def markdown(self) -> str:
        labels = list(self.answers)
        rows = self.summary_rows()
        if self.pass_at_1:
            lines = ["| model | checker accuracy (greedy) | pass@1 (sampled) | mean reward |",
                     "| --- | --- | --- | --- |"]
            lines += [f"| {label} | {acc} | {sampled} | {reward} |" for label, acc, sampled, reward in rows]
        else:
            lines = ["| model | checker accuracy | mean reward |", "| --- | --- | --- |"]
            lines += [f"| {label} | {acc} | {reward} |" for label, acc, _, reward in rows]
        if self.win_rate:
            lines += ["", *self._win_lines()]
        for title, table in (("greedy", self.accuracy), ("sampled pass@1", self.pass_at_1)):
            if not table:
                continue
            tasks = sorted({t for per_task in table.values() for t in per_task if t != "overall"})
            lines += ["", f"| model ({title}) | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
            for label, per_task in table.items():
                lines.append(f"| {label} | " + " | ".join(f"{per_task.get(t, 0):.0%}" for t in tasks) + " |")
        lines += ["", "| prompt | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        for index, prompt in enumerate(self.prompts[: self.examples]):
            cells = [_cell(prompt)] + [_cell(self.answers[label][index]) for label in labels]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """The share of prompts where ``scores`` beats ``baseline``, a tie counting half."""
    points = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline, strict=True)]
    return sum(points) / max(len(points), 1)


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def compare_models(settings: ComparisonSettings) -> Comparison:
    """Generate with every model on the same prompts and score the answers."""
    import torch

    from chatrlhf.utils.checker_eval import accuracy_by_task
    from chatrlhf.utils.data.synthetic_tasks import held_out_prompts, novel_word_prompts
    from chatrlhf.utils.model.inference import load_for_inference

    synthetic = novel_word_prompts if settings.novel_words else held_out_prompts
    prompts = settings.prompts if settings.prompts is not None else synthetic(settings.seed, settings.synthetic)
    checked = settings.synthetic and settings.prompts is None
    comparison = Comparison(prompts, {}, examples=settings.examples)
    sampling = replace(settings.generation, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_beams=1)
    asked = {}  # each model's prompts: the same questions, wrapped in its template
    for label, name in settings.models.items():
        model, tokenizer = load_for_inference(name, settings.data)
        own = prompts
        if checked and settings.synthetic_template != "hh":
            own = synthetic(settings.seed, settings.synthetic, settings.synthetic_template, tokenizer)
        asked[label] = own
        comparison.answers[label] = generate(model, tokenizer, own, settings.generation)
        if checked:
            comparison.accuracy[label] = accuracy_by_task(own, comparison.answers[label])
        if checked and settings.sampled > 0:
            torch.manual_seed(settings.seed)  # every model draws from the same random stream
            repeated = [prompt for prompt in own for _ in range(settings.sampled)]
            comparison.pass_at_1[label] = accuracy_by_task(repeated, generate(model, tokenizer, repeated, sampling))
        del model
    for label, answers in settings.references.items():
        if len(answers) != len(prompts):
            raise ValueError(f"reference answers {label!r}: {len(answers)} answers for {len(prompts)} prompts")
        comparison.answers[label] = list(answers)
        if checked:
            comparison.accuracy[label] = accuracy_by_task(prompts, comparison.answers[label])
            if settings.sampled > 0:
                comparison.pass_at_1[label] = comparison.accuracy[label]
    if settings.reward_model:
        from chatrlhf.step2_reward.scoring import RewardScorer

        scorer = RewardScorer.load(settings.reward_model, settings.data)
        scores = {label: scorer.score(asked.get(label, prompts), answers)
                  for label, answers in comparison.answers.items()}
        first, *later = scores
        for label, values in scores.items():
            comparison.mean_reward[label] = sum(values) / max(len(values), 1)
        comparison.win_rate = {label: win_rate(scores[label], scores[first]) for label in later}
    return comparison


def write_markdown(comparison: Comparison, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(comparison.markdown())
    os.replace(tmp, path)
