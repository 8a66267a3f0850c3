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


def cycle_batches(blocks: torch.Tensor, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches of blocks, epoch after epoch, as language-modelling inputs."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(blocks.shape[0], generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            ids = blocks[order[start : start + batch_size]]
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
