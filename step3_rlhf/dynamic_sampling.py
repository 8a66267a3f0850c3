"""DAPO's dynamic sampling: a group whose answers all score the same has zero advantage under GRPO and RLOO and
teaches nothing, so it is dropped and more prompts are drawn until the rollout holds its full number of
answers from groups that differ.

Every rank draws the same number of generation batches (the decision to draw another is collective), so the
ranks keep the same number of micro-batches; when ``--dynamic_sampling_max_batches`` extra batches are spent,
dropped groups fill what is missing. Groups left over once the rollout is full are discarded, so a checkpoint
between iterations holds nothing half-used and resume stays exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from chatrlhf.step3_rlhf.advantages import flat_groups
from chatrlhf.step3_rlhf.experience import Experience, concat, select
from chatrlhf.utils import device


@dataclass
class DynamicRollout:
    """The groups gathered for one iteration: ``target`` answers in batches of ``batch_rows``."""

    target: int
    batch_rows: int
    group_size: int
    max_extra_batches: int
    pad_id: int
    kept: list[Experience] = field(default_factory=list)
    flat: list[Experience] = field(default_factory=list)
    drawn: int = 0
    dropped_groups: int = 0

    def add(self, exp: Experience) -> None:
        """Split a new generation batch into the groups that differ and those that do not."""
        self.drawn += 1
        is_flat = flat_groups(exp.scores, self.group_size).tolist()
        self.dropped_groups += sum(is_flat)
        for keep, parts in ((False, self.kept), (True, self.flat)):
            rows = [g * self.group_size + r for g, flat in enumerate(is_flat) if flat == keep
                    for r in range(self.group_size)]
            if rows:
                parts.append(select(exp, rows))

    def kept_rows(self) -> int:
        return sum(len(part) for part in self.kept)

    def ready(self, minimum_batches: int) -> bool:
        """Whether every rank may stop drawing: each has the answers it needs, or the extra batches are spent
        (``minimum_batches`` are the iteration's own generation batches)."""
        if self.drawn < minimum_batches:
            return False
        if self.drawn >= minimum_batches + self.max_extra_batches:
            return True
        return device.all_ranks(self.kept_rows() >= self.target)

    def buffer(self) -> list[Experience]:
        """The iteration's experience: groups that differ first, then dropped ones where they fall short, cut
        to ``target`` answers in batches of ``batch_rows``."""
        whole = concat(self.kept + self.flat, self.pad_id)
        return [select(whole, list(range(start, start + self.batch_rows)))
                for start in range(0, self.target, self.batch_rows)]

    def counts(self) -> dict[str, float]:
        return {"dynamic_batches_drawn": float(self.drawn), "dynamic_groups_dropped": float(self.dropped_groups),
                "dynamic_groups_filled": float(max(self.target - self.kept_rows(), 0) // self.group_size)}
