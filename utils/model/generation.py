"""Text generation for evaluation, comparisons and chat: left-padded batches, stop at end-of-text."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from chatrlhf.utils.data.collators import pad_sequences
from chatrlhf.utils.data.tokenized import prompt_prefix_ids
from chatrlhf.utils.model.cpu_fast.packed_linear import packed_linears

STOP_MARKERS = ("\n\nHuman:", "\nHuman:")


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy by default; sampling, beam search and lengths by flag."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1
    batch_size: int = 16


def cut_at_new_turn(text: str) -> str:
    """An answer ends where the model starts the next ``Human:`` turn."""
    cut = len(text)
    for marker in STOP_MARKERS:
        position = text.find(marker)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    prefix = prompt_prefix_ids(tokenizer)
    return [prefix + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """The answer to each prompt (prompt removed, cut at end-of-text or a new ``Human:`` turn)."""
    model.eval()
    target = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        ids, mask = pad_sequences(encode_prompts(tokenizer, prompts[start : start + settings.batch_size]),
                                  tokenizer.pad_token_id, left=True)
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
        with packed_linears(model):
            out = model.generate(
                input_ids=ids.to(target),
                attention_mask=mask.to(target),
                max_new_tokens=settings.max_new_tokens,
                do_sample=settings.do_sample,
                num_beams=settings.num_beams,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **(sampling if settings.do_sample else {}),
            )
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        answers.extend(cut_at_new_turn(t) for t in texts)
    return answers
