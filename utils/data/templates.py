"""Prompt templates: wrap a bare instruction in the chat format the model is trained on.

Sources hold bare instructions (or already formatted prompts); the template is a run setting
(``--prompt_template``) so one data file can train models that expect different formats.
"""
from __future__ import annotations

from typing import Any

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.options import PROMPT_TEMPLATES

HH_TEMPLATE = "\n\nHuman: {instruction}\n\nAssistant:"
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
CHATML_TEMPLATE = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"

# A prompt holding one of these was formatted by its author; wrapping it again would nest two formats.
TEMPLATE_MARKERS = ("Human:", "<|im_start|>", "### Instruction:", "[INST]")


def has_template(text: str) -> bool:
    """Whether ``text`` already carries a chat format (HH, ChatML, Alpaca or LLaMA-2 markers)."""
    return any(marker in text for marker in TEMPLATE_MARKERS)


def check_template(template: str, tokenizer: Any = None) -> None:
    """Fail before reading any data when ``--prompt_template`` cannot be applied."""
    if template not in PROMPT_TEMPLATES:
        raise DataError(
            f"unknown prompt template {template!r}",
            hint=f"Pass --prompt_template with one of: {', '.join(PROMPT_TEMPLATES)}.",
        )
    if template == "model":
        if tokenizer is None:
            raise DataError(
                "--prompt_template model needs the tokenizer's chat template, but no tokenizer was given",
                hint="Use --prompt_template hh, alpaca or chatml, or give the source the model's tokenizer.",
            )
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise DataError(
                f"--prompt_template model: the tokenizer {name!r} has no chat template",
                hint="Use --prompt_template hh, alpaca or chatml, or a tokenizer that ships a chat template.",
            )


def apply_prompt_template(instruction: str, template: str, input_text: str = "", tokenizer: Any = None) -> str:
    """The prompt the model sees for ``instruction`` (plus an optional Alpaca-style ``input_text``)."""
    check_template(template, tokenizer)
    if has_template(instruction):
        return instruction
    if template == "alpaca":
        if input_text:
            return ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=input_text)
        return ALPACA_TEMPLATE.format(instruction=instruction)
    request = f"{instruction}\n\n{input_text}" if input_text else instruction
    if template == "hh":
        return HH_TEMPLATE.format(instruction=request)
    if template == "chatml":
        return CHATML_TEMPLATE.format(instruction=request)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
    )


def fit_response(prompt: str, response: str) -> str:
    """``response`` made to follow ``prompt`` naturally.

    A prompt ending in a label such as ``Assistant:`` or ``### Response:`` needs a space before the
    answer, as in HH-RLHF and DeepSpeed-Chat; a blank response becomes "" so the pipeline sees it as empty.
    """
    if not response.strip():
        return ""
    if prompt.endswith(":") and not response[0].isspace():
        return " " + response
    return response
