"""The one record type every source is turned into, and the counts of what was dropped."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    """A prompt with its preferred response and, for pair sources, the rejected one.

    ``chosen`` and ``rejected`` hold the response text only (without the prompt), as DeepSpeed-Chat's
    ``get_chosen``/``get_rejected`` do; both are None for a prompt-only source (usable by step 3 alone).
    ``origin`` says where the record came from ("file:line").
    """

    prompt: str
    chosen: str | None
    rejected: str | None
    source: str
    origin: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_pair(self) -> bool:
        return self.rejected is not None

    @property
    def has_response(self) -> bool:
        return self.chosen is not None


@dataclass
class DropReport:
    """What a source lost on the way in: broken records skipped and unusable records dropped, by reason."""

    source: str
    skipped_broken: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    MAX_EXAMPLES = 5

    def drop(self, reason: str, origin: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append((origin, reason))

    def skip(self, origin: str, why: str) -> None:
        self.skipped_broken += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append((origin, f"broken: {why}"))

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        parts = [f"{reason}: {count}" for reason, count in sorted(self.dropped.items())]
        if self.skipped_broken:
            parts.append(f"broken records skipped: {self.skipped_broken}")
        return f"{self.source}: " + (", ".join(parts) if parts else "nothing dropped")
