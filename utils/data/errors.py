"""Errors about user data: each names where the problem is and what to do."""
from __future__ import annotations


class DataError(ValueError):
    """A problem in a data source that stops the run (a broken record, an unreadable file, a bad flag)."""

    def __init__(self, message: str, *, where: str = "", hint: str = "") -> None:
        parts = [f"{where}: {message}" if where else message]
        if hint:
            parts.append(hint)
        super().__init__(" ".join(parts))
        self.where = where
        self.hint = hint


SKIP_HINT = "Fix the record, or pass --skip_bad_records to skip broken records and count them."
