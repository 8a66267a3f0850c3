"""Compare models on the same prompts: answers side by side, checker accuracy and mean reward.

Step 1's ``prompt_eval``, ``chatrlhf compare`` and the end-to-end report all run this one comparison, so their
numbers mean the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.model.generation import GenerationSettings, generate


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
        from chatrlhf.utils.model.reward_scoring import RewardScorer

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
