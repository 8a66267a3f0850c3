"""Forward passes over rollouts in groups of similar length instead of one padded batch.

They serve the prompts' pass before decoding (whose keys and values fill a padded decode cache) and
the scoring and training passes of families that ``packed_rows`` does not pack.

A rollout is left-padded prompts followed by right-padded answers, all as wide as the longest prompt
plus the longest answer. Short prompts then pay for the longest one: on the peer workload (prompts of
14-120 tokens, 64-token answers) about a third of a padded batch is padding. Rows sorted by length and
cut into contiguous groups, each trimmed to its own width, cost only what they hold plus a fixed
price per extra forward pass; the cut is chosen by dynamic programming. The outputs are put back in
the rows' original order at full answer width, with zeros after a group's last answer column (those
positions are masked everywhere), so callers see the same tensors as from one padded pass.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# What one more forward pass costs, in padded token positions (fixed per-call work: masks, positions,
# kernel launches, smaller matrix products). Measured on the peer workload's model on a 2-core CPU.
GROUP_OVERHEAD_TOKENS = 48


@dataclass(frozen=True)
class RowGroup:
    """Rows ``rows`` share columns ``left:right`` of the rollout; the answer starts at ``start - left``."""

    rows: torch.Tensor
    left: int
    right: int


def plan_groups(attention_mask: torch.Tensor, start: int, overhead: int = GROUP_OVERHEAD_TOKENS, *,
                split: bool = True) -> list[RowGroup]:
    """Contiguous groups of length-sorted rows minimising padded positions + ``overhead`` per group.

    ``split=False`` gives one group of all rows, trimmed to the columns any row uses: ranks that must
    make the same forward calls (``lockstep_needed``) cannot each pick their own number of groups.
    """
    real = attention_mask != 0
    columns = torch.arange(real.shape[1], device=real.device)
    width = real.shape[1]
    first = torch.where(real, columns, width).amin(1).clamp(max=start - 1).tolist()
    last = torch.where(real, columns, -1).amax(1).clamp(min=start).tolist()
    if not split:
        rows = torch.arange(len(first), device=attention_mask.device)
        return [RowGroup(rows, min(first), max(last) + 1)]
    order = sorted(range(len(first)), key=lambda r: (last[r] - first[r], first[r]))
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        left, right = width, 0
        for begin in range(end - 1, -1, -1):
            left, right = min(left, first[order[begin]]), max(right, last[order[begin]] + 1)
            cost = best[begin] + (end - begin) * (right - left) + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    groups: list[RowGroup] = []
    end = len(order)
    while end > 0:
        members = order[cut[end] : end]
        groups.append(RowGroup(torch.tensor(members, device=attention_mask.device),
                               min(first[r] for r in members), max(last[r] for r in members) + 1))
        end = cut[end]
    return groups[::-1]


def grouped(
    forward: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, ...]],
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    groups: list[RowGroup] | None = None,
) -> tuple[torch.Tensor, ...]:
    """``forward(ids, mask, start)`` run per group; each output (rows, answer columns, ...) back at full size.

    ``forward`` returns tensors whose dim 0 is the group's rows and dim 1 its answer columns
    (``start..right``), or 1-D per-row tensors.
    """
    groups = groups if groups is not None else plan_groups(attention_mask, start)
    answer_width = sequences.shape[1] - start
    parts: list[tuple[torch.Tensor, ...]] = []
    for group in groups:
        ids = sequences[group.rows, group.left : group.right]
        mask = attention_mask[group.rows, group.left : group.right]
        parts.append(tuple(forward(ids, mask, start - group.left)))
    order = torch.cat([g.rows for g in groups])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    outputs = []
    for index in range(len(parts[0])):
        pieces = [_pad_columns(part[index], answer_width) for part in parts]
        outputs.append(torch.cat(pieces).index_select(0, inverse))
    return tuple(outputs)


def _pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    if tensor.dim() < 2 or tensor.shape[1] == width:
        return tensor
    pad = [0, 0] * (tensor.dim() - 2) + [0, width - tensor.shape[1]]
    return F.pad(tensor, pad)
