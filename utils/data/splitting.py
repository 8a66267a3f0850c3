"""``--data_split`` parsing, seeded per-source partitions for the three steps, and weighted blending."""
from __future__ import annotations

import numpy as np

from chatrlhf.utils.data.errors import DataError

NUM_STEPS = 3


def parse_data_split(text: str) -> list[float]:
    """Turn ``"2,4,4"`` into the fractions of each source that steps 1, 2 and 3 get."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != NUM_STEPS or any(v < 0 for v in values) or sum(values) <= 0:
        raise DataError(
            f"--data_split {text!r} must be three non-negative numbers with a positive sum, one per step",
            hint="for example --data_split 2,4,4 (20% for step 1, 40% each for steps 2 and 3)",
        )
    total = sum(values)
    return [v / total for v in values]


def split_indices(num_items: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Shuffle ``range(num_items)`` with ``seed`` and cut it into disjoint runs sized by ``fractions``."""
    order = np.random.RandomState(seed).permutation(num_items)
    bounds = np.round(np.cumsum([0.0, *fractions]) * num_items).astype(int)
    bounds[-1] = num_items
    return [np.sort(order[bounds[i] : bounds[i + 1]]) for i in range(len(fractions))]


def weighted_take(num_items: int, weight: float, seed: int) -> np.ndarray:
    """Indices that give a source ``weight`` times its size in a blend (whole copies, then a seeded subset)."""
    if weight < 0:
        raise DataError(f"a source weight must be >= 0, got {weight}")
    wanted = int(round(num_items * weight))
    copies, rest = divmod(wanted, num_items) if num_items else (0, 0)
    subset = np.sort(np.random.RandomState(seed).permutation(num_items)[:rest])
    return np.concatenate([np.tile(np.arange(num_items), copies), subset]).astype(int)


def parse_source_spec(spec: str) -> tuple[str, float]:
    """Split ``name:weight`` (our extension to DeepSpeed-Chat's ``--data_path``) into name and weight."""
    name, sep, tail = spec.rpartition(":")
    if sep and name:
        try:
            return name, float(tail)
        except ValueError:
            pass
    return spec, 1.0
