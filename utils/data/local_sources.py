"""Local sources: DeepSpeed-Chat's ``local/jsonfile`` folder, and any JSON, JSON lines, CSV or parquet file.

The schema is read off the columns, so common public formats load without code: prompt/chosen/rejected
pairs, prompt/response SFT rows, prompt/completion/label unpaired rows (KTO), HH-RLHF's chosen/rejected
transcripts and Alpaca's instruction/input/output. Every broken record is reported with its file, line and
field, because a user with a 100,000-line file needs to know exactly where to look.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chatrlhf.utils.data.errors import SKIP_HINT, DataError
from chatrlhf.utils.data.options import SourceOptions, UnusableSample
from chatrlhf.utils.data.raw_datasets import PromptRawDataset
from chatrlhf.utils.data.templates import apply_prompt_template, check_template, fit_response

JSONFILE_NAME = "local/jsonfile"
SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".csv", ".parquet")
ASSISTANT_TURN = "\n\nAssistant:"
RESPONSE_COLUMNS = ("response", "completion")
LABEL_COLUMN = "label"  # beside a prompt and a response: unpaired rows, true for a desirable completion (KTO)
LABEL_TEXTS = {"true": True, "false": False}  # a label as a CSV cell
MAPPING_HINT = (
    "Map the columns with --prompt_column and --response_column (SFT rows) or --prompt_column, --chosen_column "
    "and --rejected_column (preference pairs); recognised layouts are prompt/chosen/rejected, "
    "prompt/response (or completion), prompt/completion/label (KTO), chosen/rejected HH-RLHF transcripts and "
    "instruction/input/output (Alpaca)."
)


@dataclass(frozen=True)
class Schema:
    """What a file's rows hold: ``kind`` is pairs, unpaired, sft, transcripts, alpaca or prompts (step 3 only).

    ``columns`` maps role to column.
    """

    kind: str
    columns: dict[str, str]
    optional: tuple[str, ...] = ()


@dataclass
class _Row:
    """One record as read from the file, before validation; ``problem`` says why it could not be read."""

    number: int
    values: dict | None
    problem: str = ""


def detect_schema(columns: Iterable[str], mapping: Any, where: str) -> Schema:
    """The schema of a file with ``columns``, honouring the user's ``ColumnMap`` over the defaults."""
    found = list(dict.fromkeys(columns))
    for role in ("prompt", "response", "chosen", "rejected", "margin"):
        name = getattr(mapping, role)
        if name is not None and name not in found:
            raise DataError(
                f"column {name!r} given by --{role}_column is not in the file; columns found: {found}", where=where
            )

    def pick(role: str, defaults: tuple[str, ...]) -> str | None:
        given = getattr(mapping, role)
        return given if given is not None else next((c for c in defaults if c in found), None)

    prompt, chosen, rejected = pick("prompt", ("prompt",)), pick("chosen", ("chosen",)), pick("rejected", ("rejected",))
    response = pick("response", RESPONSE_COLUMNS)
    margin = {"margin": column} if (column := pick("margin", ("margin",))) else {}
    if chosen and rejected and prompt:
        return Schema("pairs", {"prompt": prompt, "chosen": chosen, "rejected": rejected, **margin})
    if chosen and rejected:
        return Schema("transcripts", {"chosen": chosen, "rejected": rejected, **margin})
    if prompt and response and LABEL_COLUMN in found:
        return Schema("unpaired", {"prompt": prompt, "completion": response, "label": LABEL_COLUMN})
    if prompt and response:
        return Schema("sft", {"prompt": prompt, "response": response})
    if "instruction" in found and (response or "output" in found):
        return Schema(
            "alpaca", {"instruction": "instruction", "input": "input", "output": response or "output"}, ("input",)
        )
    if prompt:
        return Schema("prompts", {"prompt": prompt})
    raise DataError(f"cannot tell the schema of the records; columns found: {found}", where=where, hint=MAPPING_HINT)


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"not a readable gzip file ({exc})", where=path) from exc
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", where=path) from exc


def _json_lines(data: bytes) -> list[_Row]:
    rows = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            rows.append(_Row(number, None, "invalid UTF-8 bytes"))
            continue
        except json.JSONDecodeError as exc:
            rows.append(_Row(number, None, f"not valid JSON ({exc.msg})"))
            continue
        rows.append(_object_row(number, value))
    return rows


def _object_row(number: int, value: Any) -> _Row:
    if isinstance(value, dict):
        return _Row(number, value)
    return _Row(number, None, f"not a JSON object but {type(value).__name__}")


def _json_list(data: bytes, path: str) -> list[_Row]:
    # surrogateescape keeps going past bad bytes; the strings holding them are flagged per item.
    text = data.decode("utf-8", "surrogateescape")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg}); line {exc.lineno}", where=f"{path}:{exc.lineno}") from exc
    return [_object_row(index, item) for index, item in enumerate(items)]


def _csv_rows(data: bytes, path: str) -> tuple[list[_Row], list[str]]:
    text = data.decode("utf-8", "surrogateescape")
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = list(reader.fieldnames or [])
        # A short row fills the missing cells with None: drop them so they read as missing fields.
        rows = [
            _Row(index + 2, {k: v for k, v in row.items() if k is not None and v is not None})
            for index, row in enumerate(reader)
        ]
    except csv.Error as exc:
        raise DataError(f"not valid CSV ({exc}); line {reader.line_num}", where=f"{path}:{reader.line_num}") from exc
    return rows, header


def _parquet_rows(path: str) -> tuple[list[_Row], list[str]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", where=path) from exc
    return [_Row(index, row) for index, row in enumerate(table.to_pylist())], list(table.column_names)


def read_rows(path: str) -> tuple[list[_Row], list[str], str]:
    """The raw rows of ``path``, the columns they use, and what their numbers count (line, item or row)."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        rows, columns = _parquet_rows(path)
        return rows, columns, "row"
    data = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    if lower.endswith(".csv"):
        rows, columns = _csv_rows(data, path)
        return rows, columns, "line"
    if lower.endswith((".json", ".json.gz")) and data.lstrip().startswith(b"["):
        rows, unit = _json_list(data, path), "item"
    else:
        rows, unit = _json_lines(data), "line"
    columns = [key for row in rows if row.values is not None for key in row.values]
    return rows, columns, unit


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# A single field past this is almost surely not one prompt or answer (a whole document or a broken
# export); tokenising it would cost minutes and memory for a sample cut to --max_seq_len anyway.
MAX_FIELD_CHARS = 1_000_000


def _validate(row: _Row, schema: Schema) -> tuple[dict | None, str]:
    """The row's fields by role, or the first reason it is broken."""
    if row.values is None:
        return None, row.problem
    sample = {}
    for role, column in schema.columns.items():
        value = row.values.get(column)
        if role == "margin":
            margin, problem = _number(value, column)
            if problem:
                return None, problem
            sample[role] = margin
            continue
        if role == "label":
            label, problem = _label(value, column)
            if problem:
                return None, problem
            sample[role] = label
            continue
        if value is None and role in schema.optional:
            value = ""
        if column not in row.values and value is None:
            return None, f"missing field {column!r}"
        if value is None:
            return None, f"field {column!r} is null"
        if not isinstance(value, str):
            return None, f"field {column!r} holds {type(value).__name__}, expected text"
        if not _is_text(value):
            return None, f"invalid UTF-8 bytes in field {column!r}"
        if len(value) > MAX_FIELD_CHARS:
            return None, f"field {column!r} holds {len(value):,} characters, over the {MAX_FIELD_CHARS:,} limit"
        sample[role] = value
    return sample, ""


def _number(value: Any, column: str) -> tuple[float, str]:
    """A finite number from a JSON/parquet number or a CSV cell, or why the field holds none."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0, f"field {column!r} holds {type(value).__name__}, expected a number"
    try:
        number = float(value)
    except ValueError:
        return 0.0, f"field {column!r} holds {value!r}, expected a number"
    if not math.isfinite(number):
        return 0.0, f"field {column!r} holds {value!r}, expected a finite number"
    return number, ""


def _label(value: Any, column: str) -> tuple[bool, str]:
    """A desirable/undesirable label from a JSON/parquet boolean or a CSV cell ``true``/``false``, or why not."""
    if isinstance(value, bool):
        return value, ""
    if value is None:
        return False, f"field {column!r} is missing or null, expected true (desirable) or false (undesirable)"
    if isinstance(value, str) and value.strip().lower() in LABEL_TEXTS:
        return LABEL_TEXTS[value.strip().lower()], ""
    return False, f"field {column!r} holds {value!r}, expected true (desirable) or false (undesirable)"


def load_file(path: str, options: SourceOptions) -> tuple[Schema, list[dict], list[tuple[str, str]]]:
    """Schema, validated samples and skipped ``(origin, why)`` of one file; broken records raise unless skipped."""
    rows, columns, unit = read_rows(path)
    if not rows:
        raise DataError("no records", where=path, hint="The file is empty; give a file with at least one record.")
    schema = detect_schema(columns, options.columns, path)
    samples, skipped = [], []
    for row in rows:
        origin = f"{path}:{row.number}"
        sample, problem = _validate(row, schema)
        if sample is None:
            if not options.skip_bad_records:
                raise DataError(f"{unit} {row.number}: {problem}.", where=origin, hint=SKIP_HINT)
            skipped.append((origin, problem))
            continue
        sample["origin"] = origin
        samples.append(sample)
    if not samples:
        raise DataError(f"no records left: all {len(rows)} were broken and skipped", where=path)
    return schema, samples, skipped


def split_transcript(text: str) -> tuple[str, str]:
    """An HH-RLHF transcript cut at its last Assistant turn: (prompt ending in ``Assistant:``, response)."""
    cut = text.rfind(ASSISTANT_TURN)
    if cut == -1:
        raise UnusableSample("transcript without an Assistant turn")
    cut += len(ASSISTANT_TURN)
    return text[:cut], text[cut:]


class _LocalSource(PromptRawDataset):
    """Getters shared by local sources: samples are validated field dicts, formatted on the way out."""

    def __init__(
        self,
        output_path: str,
        seed: int,
        local_rank: int,
        dataset_name: str,
        options: SourceOptions | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        self.options = options or SourceOptions()
        self.tokenizer = tokenizer
        check_template(self.options.prompt_template, tokenizer)
        self.schema: Schema
        self.train_samples: list[dict] = []
        self.eval_samples: list[dict] | None = None
        self.skipped: list[tuple[str, str]] = []
        self._load(dataset_name)

    def _load(self, name: str) -> None:
        raise NotImplementedError

    def get_train_data(self) -> list[dict]:
        return self.train_samples

    def get_eval_data(self) -> list[dict] | None:
        return self.eval_samples

    def _parts(self, sample: dict) -> tuple[str, str | None, str | None]:
        """Prompt as the model sees it, chosen (or SFT) response or None, rejected response or None."""
        kind = self.schema.kind
        template = self.options.prompt_template
        if kind == "transcripts":
            prompt, chosen = split_transcript(sample["chosen"])
            other_prompt, rejected = split_transcript(sample["rejected"])
            if other_prompt != prompt:
                raise UnusableSample("pair without a shared prompt")
            return prompt, fit_response(prompt, chosen), fit_response(prompt, rejected)
        if kind == "alpaca":
            prompt = apply_prompt_template(sample["instruction"], template, sample["input"], self.tokenizer)
            return prompt, fit_response(prompt, sample["output"]), None
        prompt = apply_prompt_template(sample["prompt"], template, tokenizer=self.tokenizer)
        if kind == "prompts":
            return prompt, None, None
        if kind == "sft":
            return prompt, fit_response(prompt, sample["response"]), None
        if kind == "unpaired":
            return prompt, fit_response(prompt, sample["completion"]), None
        return prompt, fit_response(prompt, sample["chosen"]), fit_response(prompt, sample["rejected"])

    def get_prompt(self, sample: dict) -> str:
        return self._parts(sample)[0]

    def get_chosen(self, sample: dict) -> str | None:
        return self._parts(sample)[1]

    def get_rejected(self, sample: dict) -> str | None:
        return self._parts(sample)[2]

    def sample_meta(self, sample: dict) -> dict:
        """The pair's margin when the file has a margin column (step 2's ``--use_margin``), an unpaired row's
        label (KTO)."""
        return {key: sample[key] for key in ("margin", "label") if key in sample}

    def describe(self, split: str, index: int) -> str:
        """``path:line`` of a sample (line for JSON lines and CSV, index for JSON lists and parquet)."""
        samples = self.train_samples if split == "train" else self.eval_samples
        if samples is not None and 0 <= index < len(samples):
            return samples[index]["origin"]
        return super().describe(split, index)


class LocalFileSource(_LocalSource):
    """One local file of any supported format; it has no eval split, so the pipeline carves one."""

    dataset_name = "local/file"

    def _load(self, name: str) -> None:
        self.dataset_name_clean = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(name)).strip("_")
        self.schema, self.train_samples, self.skipped = load_file(name, self.options)


class LocalJsonFileDataset(_LocalSource):
    """DeepSpeed-Chat's ``local/jsonfile``: ``data/train.json`` and ``data/eval.json`` under a folder.

    ``local/jsonfile`` means ``./data/`` (DeepSpeed-Chat runs from its own folder); a path to a folder
    holding ``train.json`` (or ``data/train.json``) works too. Each file is a JSON list or JSON lines.
    The eval file is optional here: without it the pipeline carves a held-out slice from train.
    """

    dataset_name = JSONFILE_NAME
    dataset_name_clean = "jsonfile"

    def __init__(
        self,
        output_path: str,
        seed: int,
        local_rank: int,
        dataset_name: str = JSONFILE_NAME,
        options: SourceOptions | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name, options, tokenizer)

    def _load(self, name: str) -> None:
        self.folder = jsonfile_folder(name)
        self.schema, self.train_samples, self.skipped = load_file(os.path.join(self.folder, "train.json"), self.options)
        eval_path = os.path.join(self.folder, "eval.json")
        if os.path.isfile(eval_path):
            eval_schema, self.eval_samples, eval_skipped = load_file(eval_path, self.options)
            if eval_schema != self.schema:
                raise DataError(
                    f"eval.json holds {eval_schema.kind} records but train.json holds {self.schema.kind}",
                    where=eval_path,
                    hint="Give both files the same fields.",
                )
            self.skipped.extend(eval_skipped)


def jsonfile_folder(name: str) -> str:
    """The folder holding ``train.json`` for ``local/jsonfile`` or a folder path, or a DataError saying why not."""
    base = os.path.join(os.getcwd(), "data") if name == JSONFILE_NAME else name
    for folder in (base, os.path.join(base, "data")):
        if os.path.isfile(os.path.join(folder, "train.json")):
            return folder
    if name == JSONFILE_NAME:
        raise DataError(
            f"local/jsonfile reads data/train.json and data/eval.json under the working directory, "
            f"but {os.path.join(base, 'train.json')} does not exist",
            hint="Run from the folder holding data/, or pass the folder (or a single file) as --data_path.",
        )
    raise DataError(
        "a folder source must hold train.json (and optionally eval.json), as DeepSpeed-Chat's local/jsonfile does",
        where=name,
        hint=f"Or pass a single file ending in one of: {', '.join(SUFFIXES)}.",
    )


def _is_hf_dataset_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json"))


def open_local_source(path: str, seed: int, options: SourceOptions, tokenizer: Any = None) -> PromptRawDataset | None:
    """The source for a ``--data_path`` that is ``local/jsonfile``, a folder or a data file; None otherwise.

    A ``datasets.save_to_disk`` folder is left to the hub loader (None). An existing file or folder that
    is none of the supported kinds raises, since no other loader would read it either.
    """
    if path == JSONFILE_NAME:
        return LocalJsonFileDataset("", seed, 0, path, options, tokenizer)
    if os.path.isdir(path):
        if _is_hf_dataset_folder(path):
            return None
        return LocalJsonFileDataset("", seed, 0, path, options, tokenizer)
    if os.path.isfile(path):
        if not path.lower().endswith(SUFFIXES):
            raise DataError(
                "unsupported file type", where=path, hint=f"Give a file ending in one of: {', '.join(SUFFIXES)}."
            )
        return LocalFileSource("", seed, 0, path, options, tokenizer)
    return None
