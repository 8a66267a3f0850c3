"""Batch collation: every batch is padded to its own longest sequence, never to ``--max_seq_len``."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask for ``seqs``, padded on the right (or left) to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not len(seq):
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@dataclass
class SFTCollator:
    """Step 1: labels copy the ids, with padding and (unless ``train_on_prompt``) the prompt masked out."""

    pad_id: int
    train_on_prompt: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_sequences([r["input_ids"] for r in rows], self.pad_id)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        if not self.train_on_prompt:
            for row, r in enumerate(rows):
                labels[row, : r["prompt_len"]] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# Per-pair numbers that ride along when the dataset has them: the prompt's length (DPO masks the prompt out of
# its log-probs) and DPO's precomputed reference log-probs (float64, as cached).
PAIR_COLUMNS = {"prompt_len": torch.long, "ref_chosen_logp": torch.float64, "ref_rejected_logp": torch.float64}


@dataclass
class PairCollator:
    """Step 2: the chosen rows, then the rejected rows, in one batch so one forward pass scores both.

    The ``task``/``mistake`` labels (one per pair) ride along as lists for accuracy per task and mistake kind,
    and the ``PAIR_COLUMNS`` the dataset has as tensors (one value per pair).
    """

    pad_id: int

    def __call__(self, rows: list[dict]) -> dict:
        seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        ids, mask = pad_sequences(seqs, self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, "margin": torch.tensor([r["margin"] for r in rows])}
        for key, dtype in PAIR_COLUMNS.items():
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=dtype)
        for key in ("task", "mistake"):
            if key in rows[0]:
                batch[key] = [r[key] for r in rows]
        return batch


@dataclass
class UnpairedCollator:
    """KTO: one row per labelled completion; with ``kl`` also the mismatched rows KTO's reference point is estimated
    from, row i's prompt followed by row i-1's completion (the last row's for the first), as TRL builds them.

    The mismatched rows keep the prompt and cut the completion's end to ``max_len``. ``pair`` (the index of the
    pair a row came from, -1 for none) and the ``task``/``mistake`` labels ride along for held-out metrics.
    """

    pad_id: int
    max_len: int
    kl: bool = True

    def __call__(self, rows: list[dict]) -> dict:
        ids, mask = pad_sequences([r["input_ids"] for r in rows], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "prompt_len": torch.tensor([r["prompt_len"] for r in rows], dtype=torch.long),
                 "label": torch.tensor([bool(r["label"]) for r in rows]),
                 "pair": torch.tensor([r["pair"] for r in rows], dtype=torch.long),
                 "task": [r["task"] for r in rows], "mistake": [r["mistake"] for r in rows]}
        if self.kl:
            prompts = [list(r["input_ids"][: r["prompt_len"]]) for r in rows]
            completions = [list(r["input_ids"][r["prompt_len"]:]) for r in rows]
            shifted = completions[-1:] + completions[:-1]
            kl_ids, kl_mask = pad_sequences([(p + c)[: self.max_len] for p, c in zip(prompts, shifted)], self.pad_id)
            batch.update(kl_input_ids=kl_ids, kl_attention_mask=kl_mask)
        return batch


@dataclass
class PromptCollator:
    """Step 3: prompts left-padded so generation continues every row from the same position."""

    pad_id: int

    def __call__(self, rows: list[dict]) -> dict:
        ids, mask = pad_sequences([r["prompt_ids"] for r in rows], self.pad_id, left=True)
        return {"input_ids": ids, "attention_mask": mask, "prompt": [r["prompt"] for r in rows],
                "task": [r["task"] for r in rows]}
