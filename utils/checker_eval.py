"""Checker accuracy of a model on held-out ``synthetic/tasks`` prompts, overall and per task."""
from __future__ import annotations

from collections import defaultdict

from chatrlhf.utils.data.synthetic_tasks import score


def accuracy_by_task(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Share of right answers, per task and ``overall``."""
    from chatrlhf.utils.data.synthetic_tasks import _parse

    hits: dict[str, list[int]] = defaultdict(list)
    for prompt, answer in zip(prompts, answers):
        result = score(prompt, answer)
        hits[_parse(prompt)[0]].append(result)
        hits["overall"].append(result)
    return {task: sum(v) / len(v) for task, v in sorted(hits.items())}

