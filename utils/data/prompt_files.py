"""The prompts a comparison asks: built in, or read from a file of plain lines or JSON lines."""
from __future__ import annotations

import json

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
