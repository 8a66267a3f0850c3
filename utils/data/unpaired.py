"""Unpaired preference data (KTO): a prompt, one completion and a label saying whether it is desirable.

Unpaired rows come from files or hub datasets with ``prompt``/``completion``/``label`` fields (the label in the
record's ``meta``); pairs are unpaired the way TRL's ``unpair_preference_dataset`` does it, each pair giving
(prompt, chosen, desirable) and (prompt, rejected, undesirable), so every pair source step 2 reads feeds KTO too.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatrlhf.utils.data.errors import SKIP_HINT, DataError
from chatrlhf.utils.data.records import Record

LABEL = "label"
NO_PAIR = -1


@dataclass(frozen=True)
class Completion:
    """One completion of a prompt and its label; ``pair`` is the index of the pair it came from, or ``NO_PAIR``."""

    record: Record
    text: str
    desirable: bool
    pair: int = NO_PAIR


def record_label(record: Record) -> bool | None:
    """The record's label, None when it has none; a label that is not a boolean is a located error."""
    value = record.meta.get(LABEL)
    if value is None or isinstance(value, bool):
        return value
    raise DataError(f"field {LABEL!r} holds {value!r}, expected true (desirable) or false (undesirable)",
                    where=record.origin, hint=SKIP_HINT)


def is_unpaired_source_row(record: Record) -> bool:
    """A record KTO trains on: a pair, or one labelled completion."""
    return record.is_pair or (record.has_response and record_label(record) is not None)


def unpair(records: list[Record]) -> list[Completion]:
    """Every labelled completion of ``records``: a pair's chosen then rejected answer, an unpaired row as it is."""
    out: list[Completion] = []
    for index, record in enumerate(records):
        if record.is_pair:
            out.append(Completion(record, record.chosen, True, index))
            out.append(Completion(record, record.rejected, False, index))
        else:
            out.append(Completion(record, record.chosen, bool(record_label(record))))
    return out
