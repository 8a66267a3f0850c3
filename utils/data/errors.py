"""Errors about user data: each names where the problem is and what to do."""
from __future__ import annotations


class DataError(ValueError):
    """A problem in a data source that stops the run (a broken record, an unreadable file, a bad flag)."""

    def __init__(self, message: str, *, where: str = "", hint: str = "") -> None:
        text = f"{where}: {message}" if where else message
        if hint:
            text = f"{text}{'' if text.endswith(('.', '!', '?', ':')) else '.'} {hint}"
        super().__init__(text)
        self.where = where
        self.hint = hint


SKIP_HINT = "Fix the record, or pass --skip_bad_records to skip broken records and count them."
