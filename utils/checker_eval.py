"""Checker accuracy of a model on held-out ``synthetic/tasks`` prompts, overall and per task."""
from __future__ import annotations

from collections import defaultdict

from chatrlhf.utils.data.synthetic_tasks import held_out_prompts, score
from chatrlhf.utils.model.generation import GenerationSettings, generate


def accuracy_by_task(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Share of right answers, per task and ``overall``."""
    from chatrlhf.utils.data.synthetic_tasks import _parse

    hits: dict[str, list[int]] = defaultdict(list)
    for prompt, answer in zip(prompts, answers):
        result = score(prompt, answer)
        hits[_parse(prompt)[0]].append(result)
        hits["overall"].append(result)
    return {task: sum(v) / len(v) for task, v in sorted(hits.items())}


def checker_accuracy(model, tokenizer, *, seed: int = 1234, num_prompts: int = 200,
                     settings: GenerationSettings | None = None) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Greedy answers to held-out prompts, scored by the task checker; returns accuracies and the answers."""
    prompts = held_out_prompts(seed, num_prompts)
    answers = generate(model, tokenizer, prompts, settings or GenerationSettings(max_new_tokens=32, batch_size=50))
    return accuracy_by_task(prompts, answers), list(zip(prompts, answers))
