"""A KV cache that writes into buffers sized for the whole rollout instead of growing by concatenation.

Transformers' ``DynamicCache`` concatenates every layer's keys and values at every decode step, which
copies the whole cache each token (about a fifth of a small model's decode time on a CPU). Here each
layer allocates ``capacity`` positions on its first update and returns views of the filled part, so a
step writes one token per layer and copies nothing else. Attention still runs over the filled length
only (unlike ``StaticCache``, which attends over the full capacity).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _PreallocatedLayer(DynamicLayer):
    capacity = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        batch, heads, _, key_dim = key_states.shape
        self._key_buffer = key_states.new_empty(batch, heads, self.capacity, key_dim)
        self._value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"the preallocated KV cache holds {self.capacity} positions; {end} were written")
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values


def merged_cache(parts: list[tuple[torch.Tensor, int, Cache]], width: int, capacity: int) -> Cache:
    """One preallocated cache for a left-padded batch ``width`` wide, from the caches of row groups.

    Each part is (rows, left, cache) with the keys and values of those rows' columns ``left..width-1``.
    Columns a group did not compute (its rows' padding) hold zeros; the attention mask hides them.
    """
    merged = preallocated_cache(capacity)
    batch = sum(len(rows) for rows, _, _ in parts)
    for index in range(len(parts[0][2].layers)):
        sample = parts[0][2].layers[index]
        keys = sample.keys.new_zeros(batch, sample.keys.shape[1], width, sample.keys.shape[3])
        values = sample.values.new_zeros(batch, sample.values.shape[1], width, sample.values.shape[3])
        for rows, left, part in parts:
            keys[rows, :, left:] = part.layers[index].keys
            values[rows, :, left:] = part.layers[index].values
        merged.update(keys, values, index)
    return merged


def preallocated_cache(capacity: int) -> Cache:
    """An empty cache for at most ``capacity`` positions (prompt width + answer length)."""
    layer = type("PreallocatedLayer", (_PreallocatedLayer,), {"capacity": capacity})
    return Cache(layer_class_to_replicate=layer)
