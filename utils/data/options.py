"""Options every data source takes: how to read columns, apply templates and treat bad records."""
from __future__ import annotations

from dataclasses import dataclass, field

PROMPT_TEMPLATES = ("hh", "alpaca", "chatml", "model")


@dataclass(frozen=True)
class ColumnMap:
    """User overrides for column names (``--prompt_column`` and friends); None means auto-detect.

    ``margin`` names a pair's numeric margin (step 2's ``--use_margin``); by default a ``margin`` column."""

    prompt: str | None = None
    response: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    margin: str | None = None


@dataclass(frozen=True)
class SourceOptions:
    seed: int = 1234
    skip_bad_records: bool = False
    prompt_template: str = "hh"
    columns: ColumnMap = field(default_factory=ColumnMap)
    chat_template: str | None = None


class UnusableSample(Exception):
    """Raised by a getter for a well-formed sample that cannot be used (e.g. a pair without a shared prompt).

    The pipeline drops such samples and counts them under ``reason``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
