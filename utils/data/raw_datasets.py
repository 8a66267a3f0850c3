"""DeepSpeed-Chat's raw-dataset interface, so its users can port their own sources unchanged.

A source returns its train and eval samples and knows how to read a prompt and the chosen and
rejected responses out of one sample. ``get_chosen``/``get_rejected`` return the response alone;
the ``get_prompt_and_*`` methods return the text the model sees. A method returns ``None`` when a
sample has no such part (a prompt-only source has no rejected answer).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

Sample = Any


class PromptRawDataset:
    """Base class of every source; subclasses override the getters they can answer."""

    dataset_name: str = "unnamed"
    dataset_name_clean: str = "unnamed"

    def __init__(self, output_path: str = "", seed: int = 1234, local_rank: int = 0, dataset_name: str = "") -> None:
        self.output_path = output_path
        self.seed = seed
        self.local_rank = local_rank
        self.location = dataset_name or self.dataset_name

    def get_train_data(self) -> Sequence[Sample]:
        raise NotImplementedError

    def get_eval_data(self) -> Sequence[Sample] | None:
        """Held-out samples, or None when the source has none (the pipeline then carves them out of train)."""
        return None

    def get_prompt(self, sample: Sample) -> str | None:
        return None

    def get_chosen(self, sample: Sample) -> str | None:
        return None

    def get_rejected(self, sample: Sample) -> str | None:
        return None

    def get_prompt_and_chosen(self, sample: Sample) -> str | None:
        prompt, chosen = self.get_prompt(sample), self.get_chosen(sample)
        return None if prompt is None or chosen is None else prompt + chosen

    def get_prompt_and_rejected(self, sample: Sample) -> str | None:
        prompt, rejected = self.get_prompt(sample), self.get_rejected(sample)
        return None if prompt is None or rejected is None else prompt + rejected

    def describe(self, split: str, index: int) -> str:
        """Where a sample lives, for error messages (files override this with ``path:line``)."""
        return f"{self.location} [{split} #{index}]"

    def sample_meta(self, sample: Sample) -> dict:
        """Extra facts a source knows about a sample (task, kind of mistake, margin); none by default."""
        return {}


def load_hf_dataset(name_or_path: str, *, config: str | None = None, split: str | None = None,
                    revision: str | None = None):
    """Load a dataset from the hub name, a ``save_to_disk`` directory, or a folder of its files.

    A ``save_to_disk`` directory is recognised by its ``dataset_dict.json``/``dataset_info.json`` +
    ``state.json``; any other existing path goes through ``datasets.load_dataset`` like a hub name.
    ``revision`` pins a hub dataset's commit (None: the newest, or the cached one offline).
    """
    import datasets

    if os.path.isdir(name_or_path) and (
        os.path.exists(os.path.join(name_or_path, "dataset_dict.json"))
        or os.path.exists(os.path.join(name_or_path, "state.json"))
    ):
        loaded = datasets.load_from_disk(name_or_path)
        return loaded[split] if split and isinstance(loaded, datasets.DatasetDict) else loaded
    if revision:
        return datasets.load_dataset(name_or_path, config, split=split, revision=revision)
    return datasets.load_dataset(name_or_path, config, split=split)
