"""A KV cache that writes into buffers sized for the whole rollout instead of growing by concatenation.

Transformers' ``DynamicCache`` concatenates every layer's keys and values at every decode step, which
copies the whole cache each token (about a fifth of a small model's decode time on a CPU). Here each
layer allocates ``capacity`` positions on its first update and returns views of the filled part, so a
step writes one token per layer and copies nothing else. Attention still runs over the filled length
only (unlike ``StaticCache``, which attends over the full capacity).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from chatrlhf.utils.model.cpu_fast.shortcuts import assert_same, family, fits, left_padded_prompts, shortcut, tiny_model
from chatrlhf.utils.model.decoding import cache_kwargs


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


def preallocation_fits(model: nn.Module) -> bool:
    """Whether this transformers' cache layers still take the preallocated layer (checked once per family)."""
    return fits("kv_cache", family(model))


def decode_cache(model: nn.Module, capacity: int) -> Cache:
    """A cache for a rollout of at most ``capacity`` positions: preallocated where it fits, else transformers' own."""
    return preallocated_cache(capacity) if preallocation_fits(model) else DynamicCache()



@shortcut("kv_cache", library="transformers")
def _probe_preallocated(model_family: str | None) -> None:
    """A prefill and two decode steps into a preallocated and a merged cache, against a ``DynamicCache``."""
    from chatrlhf.utils.model.lm_forward import position_ids_from_mask

    model = tiny_model(model_family)
    ids, mask = left_padded_prompts()
    steps = torch.randint(2, 64, (2, ids.shape[0]))

    def run(prefill) -> torch.Tensor:
        logits, cache = prefill()
        seen, position, full = [logits], mask.sum(1, keepdim=True), mask
        for tokens in steps:
            full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
            out = model(input_ids=tokens[:, None], attention_mask=full, position_ids=position, use_cache=True,
                        **cache_kwargs(model, cache))
            seen.append(out.logits[:, -1])
            position = position + 1
        return torch.stack(seen)

    def prefill(part_ids: torch.Tensor, part_mask: torch.Tensor, cache: Cache) -> torch.Tensor:
        out = model(input_ids=part_ids, attention_mask=part_mask, position_ids=position_ids_from_mask(part_mask),
                    use_cache=True, **cache_kwargs(model, cache))
        return out.logits[:, -1]

    def whole(cache: Cache) -> tuple[torch.Tensor, Cache]:
        return prefill(ids, mask, cache), cache

    def grouped() -> tuple[torch.Tensor, Cache]:
        parts, logits = [], []
        for rows, left in ((torch.tensor([0]), 0), (torch.tensor([1, 2]), 1)):
            cache = DynamicCache()
            logits.append(prefill(ids[rows, left:], mask[rows, left:], cache))
            parts.append((rows, left, cache))
        return torch.cat(logits), merged_cache(parts, ids.shape[1], ids.shape[1] + len(steps))

    with torch.no_grad():
        want = run(lambda: whole(DynamicCache()))
        assert_same(run(lambda: whole(preallocated_cache(ids.shape[1] + len(steps)))), want)
        assert_same(run(grouped), want)
