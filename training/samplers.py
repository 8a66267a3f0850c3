"""Length-grouped batching: batches of similar-length samples, so padding (wasted compute) nearly vanishes.

Samples are shuffled, cut into large chunks, sorted by length inside each chunk and batched; the
batches are shuffled again. Each rank takes its own slice of every global batch, so all ranks step
through batches of similar length together.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

CHUNK_BATCHES = 50


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        rng = np.random.RandomState(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths))
        global_size = self.batch_size * self.num_replicas
        usable = len(order) // global_size * global_size
        order = order[:usable] if usable else order
        chunk = global_size * CHUNK_BATCHES
        batches: list[np.ndarray] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i : i + global_size] for i in range(0, len(part), global_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[int]:
        for batch in self._global_batches():
            yield from batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return sum(len(b[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
                   for b in self._global_batches())
