"""Scoring prompt/answer pairs with a trained reward model, tokenised exactly as step 2's data is."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.utils.data.collators import pad_sequences
from chatrlhf.utils.data.config import DataConfig

DEFAULT_BATCH_SIZE = 16


@dataclass
class RewardScorer:
    """A reward model in eval mode with its tokenizer; ``score`` turns texts into rewards."""

    model: nn.Module
    tokenizer: object
    max_seq_len: int = 512
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def load(
        cls,
        path: str,
        data_config: DataConfig | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        add_eot_token: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> RewardScorer:
        """The reward model at ``path`` (a step-2 output; a preset needs the data its tokenizer was trained on)."""
        from chatrlhf.step2_reward.reward_model import load_reward_model
        from chatrlhf.utils.device import local_device
        from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer
        from chatrlhf.utils.model.resolve import resolve_model

        data = data_config or DataConfig()
        resolved = resolve_model(path, data)
        options = ModelOptions(dtype=dtype, add_eot_token=add_eot_token)
        tokenizer = load_tokenizer(resolved, options)
        model = load_reward_model(resolved, tokenizer, options).to(local_device())
        model.eval()
        return cls(model, tokenizer, data.max_seq_len, batch_size)

    def encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
        """prefix + prompt + answer + eos, cut to ``max_seq_len``: the ids step 2 trained on."""
        from chatrlhf.utils.data.tokenized import prompt_prefix_ids

        if len(prompts) != len(answers):
            raise ValueError(f"score() needs one answer per prompt; got {len(prompts)} prompts, {len(answers)} answers")
        prefix = prompt_prefix_ids(self.tokenizer)
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        tail = [eos] if eos is not None else []
        return [(prefix + p + a + tail)[: self.max_seq_len] for p, a in zip(prompt_ids, answer_ids)]

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        from chatrlhf.step2_reward.reward_model import sequence_scores, token_values

        target = next(self.model.parameters()).device
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), self.batch_size):
                ids, mask = pad_sequences(sequences[start : start + self.batch_size], self.tokenizer.pad_token_id)
                ids, mask = ids.to(target), mask.to(target)
                scores += sequence_scores(token_values(self.model, ids, mask), mask).float().tolist()
        return scores

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """One reward per (prompt, answer)."""
        if not prompts:
            return []
        return self.score_ids(self.encode(prompts, answers))
