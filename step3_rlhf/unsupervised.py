"""The pretraining-loss mix (``--unsupervised_dataset_name``, ``--unsup_coef``): text blocks cycled forever.

The text comes from a local ``.txt`` file (one document a line), any source of the data layer
(prompt + chosen response), or a Hugging Face dataset with a ``text`` column.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from chatrlhf.utils.data.errors import DataError


def load_texts(name: str, config_name: str | None, seed: int) -> list[str]:
    if name.endswith(".txt") and os.path.isfile(name):
        with open(name, encoding="utf-8", errors="strict") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    from chatrlhf.utils.data.options import SourceOptions
    from chatrlhf.utils.data.sources import open_source, to_records

    try:
        raw = open_source(name, seed=seed, options=SourceOptions(seed=seed))
    except DataError:
        raw = None
    if raw is not None:
        records, _ = to_records(raw, "train")
        return [r.prompt + r.chosen for r in records]
    import datasets

    data = datasets.load_dataset(name, config_name, split="train")
    if "text" not in data.column_names:
        raise DataError(f"the unsupervised dataset has no 'text' column (columns: {data.column_names})", where=name)
    return [t for t in data["text"] if t and t.strip()]


def text_blocks(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """All texts tokenised, joined with end-of-text tokens and cut into equal blocks (the remainder dropped)."""
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded + [tokenizer.eos_token_id])
    usable = len(ids) // block_size * block_size
    if usable == 0:
        raise DataError(f"the unsupervised data holds {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[:usable]).view(-1, block_size)


class CycledBatches(Iterator[dict[str, torch.Tensor]]):
    """Shuffled batches of blocks, epoch after epoch, as language-modelling inputs.

    It counts the batches it has handed out, so a checkpoint records the position and a resumed run draws
    the very batches the uninterrupted run would have (the order is a pure function of the seed).
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int) -> None:
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.consumed = 0
        self._batches = self._generate()

    def _generate(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(self.blocks.shape[0], generator=generator)
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                ids = self.blocks[order[start : start + self.batch_size]]
                yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def __next__(self) -> dict[str, torch.Tensor]:
        self.consumed += 1
        return next(self._batches)

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Replay the order from the start up to the saved position (cheap: indices only, no model work)."""
        self.consumed, self._batches = 0, self._generate()
        for _ in range(state["consumed"]):
            next(self)
