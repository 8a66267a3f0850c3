"""Scoring prompt/answer pairs with a trained reward model, tokenised exactly as step 2's data is; step 2's
``rw_eval`` and the model comparisons share it."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.utils.data.collators import pad_sequences
from chatrlhf.utils.data.config import DataConfig

DEFAULT_BATCH_SIZE = 16


@dataclass
class EncodedPairs:
    """The pairs left to score (their indices and ids) and ``fit_pair``'s counts of what was dropped or cut."""

    kept: list[int]
    chosen: list[list[int]]
    rejected: list[list[int]]
    counts: dict[str, int]

    @property
    def dropped(self) -> int:
        """Pairs left out (cut samples that were kept are counted in ``counts`` too, but not here)."""
        from chatrlhf.utils.data.tokenized import DROPPING_REASONS

        return sum(n for reason, n in self.counts.items() if reason in DROPPING_REASONS)


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
        from chatrlhf.utils.device import local_device
        from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer
        from chatrlhf.utils.model.resolve import resolve_model
        from chatrlhf.utils.model.reward_model import load_reward_model

        data = data_config or DataConfig()
        resolved = resolve_model(path, data)
        options = ModelOptions(dtype=dtype, add_eot_token=add_eot_token)
        tokenizer = load_tokenizer(resolved, options)
        model = load_reward_model(resolved, tokenizer, options).to(local_device())
        model.eval()
        return cls(model, tokenizer, data.max_seq_len, batch_size)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
        """prefix + prompt + answer + eos within ``max_seq_len``, a long prompt losing its oldest tokens first: the
        ids step 2 trained on (``fit_answers``)."""
        from chatrlhf.utils.data.tokenized import fit_answers, prompt_prefix_ids

        if len(prompts) != len(answers):
            raise ValueError(f"score() needs one answer per prompt; got {len(prompts)} prompts, {len(answers)} answers")
        prefix = prompt_prefix_ids(self.tokenizer)
        eos = self.tokenizer.eos_token_id
        return [fit_answers(p, [a], eos, self.max_seq_len, prefix).sequences[0]
                for p, a in zip(self._ids(prompts), self._ids(answers))]

    def encode_pairs(self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> EncodedPairs:
        """Each pair's ids as step 2 trains on them (``fit_pair``): the pairs step 2 would drop (the same ids on
        both sides after the cut) are left out and counted, as a tie must not count as a wrong pair."""
        from chatrlhf.utils.data.tokenized import fit_pair, prompt_prefix_ids

        if not len(prompts) == len(chosen) == len(rejected):
            raise ValueError(f"encode_pairs() needs one chosen and one rejected answer per prompt; got "
                             f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
        prefix = prompt_prefix_ids(self.tokenizer)
        eos = self.tokenizer.eos_token_id
        encoded = EncodedPairs([], [], [], {})
        for index, (p, c, r) in enumerate(zip(self._ids(prompts), self._ids(chosen), self._ids(rejected))):
            fitted = fit_pair(p, c, r, eos, self.max_seq_len, encoded.counts, prefix)
            if fitted is not None:
                encoded.kept.append(index)
                encoded.chosen.append(fitted.sequences[0])
                encoded.rejected.append(fitted.sequences[1])
        return encoded

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        from chatrlhf.utils.model.reward_model import sequence_scores, token_values

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
