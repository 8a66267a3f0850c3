"""Compare models on the same prompts: answers side by side, checker accuracy and mean reward.

Used by step 1's ``prompt_eval``, ``chatrlhf compare`` and the end-to-end report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

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


@dataclass
class Comparison:
    prompts: list[str]
    answers: dict[str, list[str]]
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_reward: dict[str, float] = field(default_factory=dict)
    examples: int = 5

    def summary_rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for label in self.answers:
            acc = self.accuracy.get(label, {}).get("overall")
            reward = self.mean_reward.get(label)
            rows.append((label, "-" if acc is None else f"{acc:.1%}", "-" if reward is None else f"{reward:.3f}"))
        return rows

    def console(self) -> str:
        lines = []
        for index, prompt in enumerate(self.prompts[: max(self.examples, 1)]):
            lines.append(f"==== prompt {index + 1}: {prompt.strip()!r}")
            lines += [f"  [{label}] {answers[index].strip()!r}" for label, answers in self.answers.items()]
        lines.append("")
        for label, acc, reward in self.summary_rows():
            lines.append(f"{label}: checker accuracy {acc}, mean reward {reward}")
        for label, per_task in self.accuracy.items():
            tasks = ", ".join(f"{t} {v:.0%}" for t, v in per_task.items() if t != "overall")
            lines.append(f"  {label} per task: {tasks}")
        return "\n".join(lines)

    def markdown(self) -> str:
        labels = list(self.answers)
        lines = ["| model | checker accuracy | mean reward |", "| --- | --- | --- |"]
        lines += [f"| {label} | {acc} | {reward} |" for label, acc, reward in self.summary_rows()]
        if self.accuracy:
            tasks = sorted({t for per_task in self.accuracy.values() for t in per_task if t != "overall"})
            lines += ["", "| model | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
            for label, per_task in self.accuracy.items():
                lines.append(f"| {label} | " + " | ".join(f"{per_task.get(t, 0):.0%}" for t in tasks) + " |")
        lines += ["", "| prompt | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        for index, prompt in enumerate(self.prompts[: self.examples]):
            cells = [_cell(prompt)] + [_cell(self.answers[label][index]) for label in labels]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def compare_models(settings: ComparisonSettings) -> Comparison:
    """Generate with every model on the same prompts and score the answers."""
    from chatrlhf.utils.checker_eval import accuracy_by_task
    from chatrlhf.utils.data.synthetic_tasks import held_out_prompts
    from chatrlhf.utils.model.inference import load_for_inference

    prompts = settings.prompts if settings.prompts is not None else held_out_prompts(settings.seed, settings.synthetic)
    comparison = Comparison(prompts, {}, examples=settings.examples)
    for label, name in settings.models.items():
        model, tokenizer = load_for_inference(name, settings.data)
        comparison.answers[label] = generate(model, tokenizer, prompts, settings.generation)
        if settings.synthetic and settings.prompts is None:
            comparison.accuracy[label] = accuracy_by_task(prompts, comparison.answers[label])
        del model
    if settings.reward_model:
        from chatrlhf.step2_reward.scoring import RewardScorer

        scorer = RewardScorer.load(settings.reward_model, settings.data)
        for label, answers in comparison.answers.items():
            scores = scorer.score(prompts, answers)
            comparison.mean_reward[label] = sum(scores) / max(len(scores), 1)
    return comparison


def write_markdown(comparison: Comparison, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(comparison.markdown())
    os.replace(tmp, path)
