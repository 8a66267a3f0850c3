"""A rollout's rows packed end to end (``packed_rows``), with where each answer is and how to put outputs back.

PPO reads a model at the positions that predict each answer token (actor and reference log-probs,
critic values) and at each row's last token (the reward). Packed, those are one contiguous range per
row; outputs come back in the (B, answer width) layout of a padded pass, zeros after each answer's end
(masked everywhere), so callers cannot tell the two apart.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.utils.model.cpu_fast.packed_rows import packed_hidden
from chatrlhf.utils.model.packing import PackedRows, pack_rows

Head = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class PackedAnswers:
    rows: PackedRows
    answer_ranges: list[tuple[int, int]]
    last_tokens: list[tuple[int, int]]
    answer_mask: torch.Tensor

    @classmethod
    def of(cls, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> PackedAnswers:
        """Rows of left-padded prompts (width ``prompt_width``) followed by right-padded answers."""
        rows = pack_rows(sequences, attention_mask)
        prompts = attention_mask[:, :prompt_width].sum(1).tolist()
        answers = attention_mask[:, prompt_width:].sum(1).tolist()
        ranges = [(start + prompt - 1, start + prompt + answer - 1)
                  for (start, _), prompt, answer in zip(rows.spans, prompts, answers)]
        return cls(rows, ranges, [(end - 1, end) for _, end in rows.spans],
                   attention_mask[:, prompt_width:] != 0)

    def labels(self) -> torch.Tensor:
        """The answer tokens, in the order of the positions predicting them."""
        index = torch.cat([torch.arange(first, stop) for first, stop in self.answer_ranges]) + 1
        return self.rows.input_ids[0, index.to(self.rows.input_ids.device)]

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """One value per answer token, put at its (row, answer column); zeros after each answer's end."""
        return values.new_zeros(self.answer_mask.shape).masked_scatter(self.answer_mask, values)

    def answer_outputs(self, model: nn.Module, head: Head) -> tuple[torch.Tensor, ...]:
        """``head(hidden, labels)`` at every answer token's predicting position, each output as (B, answer width)."""
        outputs = head(packed_hidden(model, self.rows, self.answer_ranges), self.labels())
        return tuple(self.unpack(output) for output in outputs)

    def final_hidden(self, model: nn.Module) -> torch.Tensor:
        """The backbone's output at each row's last token, (B, H)."""
        return packed_hidden(model, self.rows, self.last_tokens)
