"""How ``chatrlhf chat`` turns a conversation into the prompt a model expects, and where its answer ends.

A model answers best in the format it was trained on. A model this suite trained records its
``--prompt_template`` in ``chatrlhf_args.json``; any other model with a chat template in its tokenizer
(SmolLM2's ChatML, LLaMA-3's headers) gets that template; anything else gets the ``Human:``/``Assistant:``
format of DeepSpeed-Chat's data.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatrlhf.training.config_file import ARGS_FILE
from chatrlhf.utils.data.templates import ALPACA_TEMPLATE, CHATML_TEMPLATE, HH_TEMPLATE
from chatrlhf.utils.model.generation import STOP_MARKERS, encode_prompts

CHOICES = ("auto", "hh", "alpaca", "chatml", "model")
Turns = list[tuple[str, str | None]]  # (question, answer); the last question has no answer yet


@dataclass(frozen=True)
class ChatFormat:
    """A prompt format: ``render`` makes the prompt from the turns, ``stop_markers`` end an answer early (the
    model's end-of-text always does), ``encode`` tokenises a rendered prompt."""

    name: str
    render: Callable[[Turns], str]
    stop_markers: tuple[str, ...]
    encode: Callable[[str], list[int]]


def _joined(template: str, closing: str) -> Callable[[Turns], str]:
    """Turns written one after the other: each question in ``template``, each answer then ``closing``."""
    def render(turns: Turns) -> str:
        parts = []
        for question, answer in turns:
            head = template.format(instruction=question)
            parts.append(head if answer is None else f"{head}{' ' if head.endswith(':') else ''}{answer}{closing}")
        return "".join(parts)
    return render


# DeepSpeed-Chat's ``Human:``/``Assistant:`` turns: the format of its data, and the fallback.
hh_turns = _joined(HH_TEMPLATE, "")


def _model_template(tokenizer) -> Callable[[Turns], str]:
    def render(turns: Turns) -> str:
        messages = []
        for question, answer in turns:
            messages.append({"role": "user", "content": question})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render


def build_format(name: str, tokenizer) -> ChatFormat:
    """The format ``name`` (not ``auto``) for ``tokenizer``."""
    ours = lambda text: encode_prompts(tokenizer, [text])[0]  # noqa: E731 - as the training data was encoded
    if name == "hh":
        return ChatFormat(name, hh_turns, STOP_MARKERS, ours)
    if name == "alpaca":
        return ChatFormat(name, _joined(ALPACA_TEMPLATE, "\n\n"), ("### Instruction:", "Below is an"), ours)
    if name == "chatml":
        return ChatFormat(name, _joined(CHATML_TEMPLATE, "<|im_end|>\n"), ("<|im_end|>", "<|im_start|>"), ours)
    if name == "model":
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit("chat: --prompt_template model, but the model's tokenizer has no chat template; "
                             "use hh, alpaca or chatml.")
        # The template writes its own BOS and turn markers; the tokenizer must not add a second BOS.
        own = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return ChatFormat(name, _model_template(tokenizer), (), own)
    raise SystemExit(f"chat: unknown --prompt_template {name!r}; choose one of {', '.join(CHOICES)}.")


def trained_template(path: str) -> str | None:
    """The ``--prompt_template`` a chatrlhf run trained the model at ``path`` with (step 3 saves its actor in a
    subfolder of the run's folder), or None for a model we did not train."""
    folder = Path(path)
    for candidate in (folder / ARGS_FILE, folder.parent / ARGS_FILE):
        if candidate.is_file():
            try:
                saved = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            return (saved.get("args") or {}).get("prompt_template", "hh")
    return None


def choose_format(requested: str, path: str, tokenizer) -> ChatFormat:
    """``requested``, or for ``auto``: the run's own template, else the tokenizer's chat template, else hh."""
    if requested != "auto":
        return build_format(requested, tokenizer)
    trained = trained_template(path)
    if trained is not None:
        return build_format(trained, tokenizer)
    return build_format("model" if getattr(tokenizer, "chat_template", None) else "hh", tokenizer)
