"""Resolve a ``--data_path`` entry to a source and turn its samples into validated records."""
from __future__ import annotations

import os

from chatrlhf.utils.data.errors import SKIP_HINT, DataError
from chatrlhf.utils.data.options import SourceOptions, UnusableSample
from chatrlhf.utils.data.raw_datasets import PromptRawDataset
from chatrlhf.utils.data.records import DropReport, Record

SYNTHETIC_NAME = "synthetic/tasks"
SYNTHETIC_NAMES = (SYNTHETIC_NAME, "synthetic/tasks-perfect")


def open_source(
    name: str, *, seed: int, options: SourceOptions, output_path: str = "", tokenizer=None
) -> PromptRawDataset:
    """The source for one ``--data_path`` entry: the synthetic set, a local file or folder, or a hub dataset.

    ``tokenizer`` is needed only by ``--prompt_template model`` (the model's own chat template).
    """
    from chatrlhf.utils.data.hub_sources import HUB_SOURCES, find_hub_source
    from chatrlhf.utils.data.local_sources import open_local_source
    from chatrlhf.utils.data.synthetic_tasks import SyntheticTasks

    if name in SYNTHETIC_NAMES:
        return SyntheticTasks(output_path, seed, 0, name, options, tokenizer=tokenizer)
    hub_class = None if os.path.isfile(name) else find_hub_source(name)
    if hub_class is not None:
        return hub_class(output_path, seed, 0, name, options)
    local = open_local_source(name, seed, options, tokenizer)
    if local is not None:
        return local
    known = ", ".join([*SYNTHETIC_NAMES, "local/jsonfile", *sorted(HUB_SOURCES)])
    raise DataError(
        f"--data_path {name!r} is neither an existing file or folder nor a known source",
        hint=f"Give a path to a .json/.jsonl/.jsonl.gz/.csv/.parquet file, or one of: {known}.",
    )


def _text(value: object, field: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"field {field!r} holds {type(value).__name__}, expected text", where=where, hint=SKIP_HINT)


def to_records(
    raw: PromptRawDataset,
    split: str,
    *,
    skip_bad_records: bool = False,
    strict_data: bool = False,
) -> tuple[list[Record], DropReport]:
    """Validate every sample of ``split`` ("train" or "eval") into records.

    A broken sample (missing field, non-text value) raises a located ``DataError`` unless
    ``skip_bad_records``; an unusable one (empty text, chosen equal to rejected, no shared prompt)
    is dropped and counted, or raises with ``strict_data``.
    """
    samples = raw.get_train_data() if split == "train" else raw.get_eval_data()
    report = DropReport(source=raw.location)
    for origin, why in getattr(raw, "skipped", []):
        report.skip(origin, why)
    records: list[Record] = []
    if samples is None:
        return records, report
    for index, sample in enumerate(samples):
        where = raw.describe(split, index)
        try:
            prompt = _text(raw.get_prompt(sample), "prompt", where)
            chosen = _text(raw.get_chosen(sample), "chosen", where)
            rejected = _text(raw.get_rejected(sample), "rejected", where)
            reason = _unusable_reason(prompt, chosen, rejected)
        except UnusableSample as unusable:
            reason = unusable.reason
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            missing = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            if skip_bad_records:
                report.skip(where, f"missing or malformed field {missing!r}")
                continue
            raise DataError(f"missing or malformed field {missing!r}", where=where, hint=SKIP_HINT) from exc
        except DataError as exc:
            if skip_bad_records:
                report.skip(where, str(exc))
                continue
            raise
        if reason:
            if strict_data:
                hint = "Drop --strict_data to skip and count it."
                raise DataError(f"unusable record ({reason})", where=where, hint=hint)
            report.drop(reason, where)
            continue
        records.append(Record(prompt, chosen, rejected, raw.location, where, raw.sample_meta(sample)))
    return records, report


def _unusable_reason(prompt: str | None, chosen: str | None, rejected: str | None) -> str:
    if prompt is None or not prompt.strip():
        return "empty prompt"
    if chosen is None:
        return "" if rejected is None else "rejected answer without a chosen one"
    if not chosen.strip():
        return "empty response"
    if rejected is not None and not rejected.strip():
        return "empty response"
    if rejected is not None and rejected.strip() == chosen.strip():
        return "chosen equals rejected"
    return ""
