"""Local file sources: every format and schema, column mapping, templates, the real HH file, bad input."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from chatrlhf.utils.data.errors import SKIP_HINT, DataError
from chatrlhf.utils.data.local_sources import LocalFileSource, LocalJsonFileDataset, open_local_source
from chatrlhf.utils.data.options import ColumnMap, SourceOptions, UnusableSample
from chatrlhf.utils.data.sources import to_records
from chatrlhf.utils.data.templates import apply_prompt_template, fit_response

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf_harmless.jsonl.gz"
PAIRS = [
    {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]
SKIP = SourceOptions(skip_bad_records=True)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format named by the suffix of ``path``."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    elif name.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        text = json.dumps(rows) if name.startswith("list") else "".join(json.dumps(r) + "\n" for r in rows)
        data = text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def load(path: Path, options: SourceOptions | None = None, tokenizer: Any = None) -> LocalFileSource:
    source = open_local_source(str(path), 1, options or SourceOptions(), tokenizer)
    assert isinstance(source, LocalFileSource)
    return source


def triples(source: Any, split: str = "train") -> list[tuple[str, str, str | None]]:
    samples = source.get_train_data() if split == "train" else source.get_eval_data()
    return [(source.get_prompt(s), source.get_chosen(s), source.get_rejected(s)) for s in samples]


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("pairs.jsonl", [1, 2, 3]),
        ("pairs.json", [1, 2, 3]),
        ("list.json", [0, 1, 2]),
        ("pairs.jsonl.gz", [1, 2, 3]),
        ("pairs.json.gz", [1, 2, 3]),
        ("list.json.gz", [0, 1, 2]),
        ("pairs.csv", [2, 3, 4]),
        ("pairs.parquet", [0, 1, 2]),
    ],
)
def test_every_format_loads_pairs(tmp_path: Path, name: str, numbers: list[int]) -> None:
    path = write_rows(tmp_path / name, PAIRS)
    source = load(path)
    assert source.schema.kind == "pairs"
    assert source.get_eval_data() is None
    assert triples(source)[0] == ("\n\nHuman: What is 2 plus 2?\n\nAssistant:", " 4.", " 5.")
    assert source.get_prompt_and_chosen(source.get_train_data()[1]) == "\n\nHuman: Name a colour.\n\nAssistant: Blue."
    assert [source.describe("train", i) for i in range(3)] == [f"{path}:{n}" for n in numbers]


@pytest.mark.parametrize("response_column", ["response", "completion"])
def test_prompt_response_rows_are_sft_only(tmp_path: Path, response_column: str) -> None:
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "Say hi.", response_column: "Hi!"}])
    source = load(path)
    assert source.schema.kind == "sft"
    assert triples(source) == [("\n\nHuman: Say hi.\n\nAssistant:", " Hi!", None)]


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path: Path) -> None:
    shared = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant:"
    rows = [
        {"chosen": shared + " Why did the chicken cross the road?", "rejected": shared + " No."},
        {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
        {"chosen": shared + " ", "rejected": shared + " Fine."},
        {"chosen": "no turns at all", "rejected": "none here either"},
    ]
    source = load(write_rows(tmp_path / "hh.jsonl", rows), SourceOptions(prompt_template="chatml"))
    assert source.schema.kind == "transcripts"
    first, mismatched, empty, broken = source.get_train_data()
    assert source.get_prompt(first) == shared
    assert source.get_chosen(first) == " Why did the chicken cross the road?"
    assert source.get_rejected(first) == " No."
    for getter in (source.get_prompt, source.get_chosen, source.get_rejected):
        with pytest.raises(UnusableSample, match="pair without a shared prompt"):
            getter(mismatched)
    assert source.get_chosen(empty) == ""
    with pytest.raises(UnusableSample, match="Assistant turn"):
        source.get_prompt(broken)


def test_alpaca_rows_with_and_without_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Name a prime.", "input": "", "output": "7"},
    ]
    path = write_rows(tmp_path / "alpaca.json", rows)
    source = load(path, SourceOptions(prompt_template="alpaca"))
    assert source.schema.kind == "alpaca"
    (with_input, out1, rej1), (no_input, out2, _) = triples(source)
    assert with_input == apply_prompt_template("Translate to French.", "alpaca", "cat")
    assert "### Input:\ncat" in with_input and "### Input" not in no_input
    assert (out1, out2, rej1) == (" chat", " 7", None)
    hh = load(path)
    assert triples(hh)[0] == ("\n\nHuman: Translate to French.\n\ncat\n\nAssistant:", " chat", None)


def test_alpaca_without_input_column(tmp_path: Path) -> None:
    source = load(write_rows(tmp_path / "a.jsonl", [{"instruction": "Count to 3.", "output": "1 2 3"}]))
    assert triples(source) == [("\n\nHuman: Count to 3.\n\nAssistant:", " 1 2 3", None)]


def test_column_mapping_for_pairs_and_sft(tmp_path: Path) -> None:
    pairs = write_rows(tmp_path / "p.csv", [{"question": "Q?", "good": "yes", "bad": "no", "id": "1"}])
    mapped = load(pairs, SourceOptions(columns=ColumnMap(prompt="question", chosen="good", rejected="bad")))
    assert triples(mapped) == [("\n\nHuman: Q?\n\nAssistant:", " yes", " no")]
    sft = write_rows(tmp_path / "s.csv", [{"source": "Q?", "target": "A."}])
    mapped = load(sft, SourceOptions(columns=ColumnMap(prompt="source", response="target")))
    assert mapped.schema.kind == "sft"
    assert triples(mapped) == [("\n\nHuman: Q?\n\nAssistant:", " A.", None)]


def test_mapped_column_absent_is_named(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "s.csv", [{"source": "Q?", "target": "A."}])
    with pytest.raises(DataError, match=r"'answer' given by --response_column.*\['source', 'target'\]"):
        load(path, SourceOptions(columns=ColumnMap(prompt="source", response="answer")))


def test_unknown_schema_lists_columns_and_flags(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "x.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(DataError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and "['question', 'answer']" in message
    assert "--prompt_column" in message and "--response_column" in message


def test_templated_prompts_are_left_alone(tmp_path: Path) -> None:
    rows = [
        {"prompt": "\n\nHuman: Hi\n\nAssistant:", "response": "Hello"},
        {"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "response": "Hello"},
        {"prompt": "[INST] Hi [/INST]", "response": "Hello"},
    ]
    source = load(write_rows(tmp_path / "t.jsonl", rows), SourceOptions(prompt_template="chatml"))
    assert triples(source) == [(r["prompt"], " Hello" if r["prompt"].endswith(":") else "Hello", None) for r in rows]


class ChatTokenizer:
    """The part of a Hugging Face tokenizer that ``--prompt_template model`` uses."""

    chat_template = "custom"

    def apply_chat_template(self, messages: list[dict], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"<user>{m['content']}</user>" for m in messages) + "<bot>"


def test_templates() -> None:
    assert apply_prompt_template("Hi", "hh") == "\n\nHuman: Hi\n\nAssistant:"
    assert apply_prompt_template("Hi", "hh", "there") == "\n\nHuman: Hi\n\nthere\n\nAssistant:"
    assert apply_prompt_template("Hi", "chatml") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert apply_prompt_template("Hi", "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nHi\n\n### Response:"
    )
    assert apply_prompt_template("Hi", "alpaca", "x") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\nHi\n\n### Input:\nx\n\n### Response:"
    )
    assert apply_prompt_template("Hi", "model", tokenizer=ChatTokenizer()) == "<user>Hi</user><bot>"
    assert apply_prompt_template("### Instruction:\nHi", "chatml") == "### Instruction:\nHi"
    assert fit_response("\n\nHuman: Hi\n\nAssistant:", "Yo") == " Yo"
    assert fit_response("\n\nHuman: Hi\n\nAssistant:", " Yo") == " Yo"
    assert fit_response("<|im_start|>assistant\n", "Yo") == "Yo"
    assert fit_response("\n\nHuman: Hi\n\nAssistant:", "  ") == ""


def test_model_template_with_a_real_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(DataError, match="no chat template"):
        apply_prompt_template("Hi", "model", tokenizer=tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    assert apply_prompt_template("Hi", "model", tokenizer=tokenizer) == "<|user|>Hi\n<|assistant|>\n"


def test_template_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tokenizer"):
        apply_prompt_template("Hi", "model")
    with pytest.raises(DataError, match="unknown prompt template 'vicuna'"):
        apply_prompt_template("Hi", "vicuna")
    path = write_rows(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(DataError, match="no tokenizer"):
        load(path, SourceOptions(prompt_template="model"))
    source = load(path, SourceOptions(prompt_template="model"), ChatTokenizer())
    assert triples(source)[0] == ("<user>What is 2 plus 2?</user><bot>", "4.", "5.")


def _jsonfile_folder(folder: Path, eval_rows: list[dict] | None = None) -> None:
    folder.mkdir(parents=True)
    ds_chat = [{"prompt": "Human: Hi Assistant:", "chosen": "Hello.", "rejected": "Go away."}]
    (folder / "train.json").write_text(json.dumps(ds_chat + PAIRS))
    if eval_rows is not None:
        (folder / "eval.json").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))


def test_local_jsonfile_reads_data_folder_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _jsonfile_folder(tmp_path / "data", PAIRS[:2])
    monkeypatch.chdir(tmp_path)
    source = open_local_source("local/jsonfile", 1, SourceOptions())
    assert isinstance(source, LocalJsonFileDataset)
    assert source.dataset_name == "local/jsonfile" and source.dataset_name_clean == "jsonfile"
    assert triples(source)[0] == ("Human: Hi Assistant:", " Hello.", " Go away.")
    assert len(source.get_train_data()) == 4
    assert triples(source, "eval")[1] == ("\n\nHuman: Name a colour.\n\nAssistant:", " Blue.", " Seven.")
    assert source.describe("train", 0).endswith("data/train.json:0")
    assert source.describe("eval", 1).endswith("data/eval.json:2")


def test_jsonfile_folder_paths_and_optional_eval(tmp_path: Path) -> None:
    _jsonfile_folder(tmp_path / "app" / "data")
    for path in (tmp_path / "app", tmp_path / "app" / "data"):
        source = open_local_source(str(path), 1, SourceOptions())
        assert isinstance(source, LocalJsonFileDataset)
        assert len(source.get_train_data()) == 4 and source.get_eval_data() is None


def test_jsonfile_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data/train.json"):
        open_local_source("local/jsonfile", 1, SourceOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="must hold train.json"):
        open_local_source(str(tmp_path / "empty"), 1, SourceOptions())
    _jsonfile_folder(tmp_path / "mixed", [{"prompt": "Q", "response": "A"}])
    with pytest.raises(DataError, match="eval.json holds sft records but train.json holds pairs"):
        open_local_source(str(tmp_path / "mixed"), 1, SourceOptions())


def test_paths_that_are_not_local_sources(tmp_path: Path) -> None:
    assert open_local_source("Dahoas/rm-static", 1, SourceOptions()) is None
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    assert open_local_source(str(saved), 1, SourceOptions()) is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        open_local_source(str(tmp_path / "notes.txt"), 1, SourceOptions())


@pytest.mark.skipif(not HH_FILE.exists(), reason="shared HH-RLHF sample not present")
def test_real_hh_rlhf_file() -> None:
    source = load(HH_FILE)
    samples = source.get_train_data()
    assert source.schema.kind == "transcripts" and len(samples) == 2000
    mismatched, empty = [], []
    for index, sample in enumerate(samples):
        try:
            prompt, chosen, rejected = source.get_prompt(sample), source.get_chosen(sample), source.get_rejected(sample)
        except UnusableSample as unusable:
            assert unusable.reason == "pair without a shared prompt"
            mismatched.append(index)
            continue
        assert prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:")
        if "" in (chosen, rejected):
            empty.append(index)
    assert len(mismatched) == 5 and len(empty) == 4
    records, report = to_records(source, "train")
    assert len(records) == 1991
    assert report.dropped == {"pair without a shared prompt": 5, "empty response": 4}
    assert records[0].origin == f"{HH_FILE}:1"


GOOD = json.dumps(PAIRS[0])
BAD_JSON_LINES = [
    ("invalid JSON", [GOOD, '{"prompt": "x", "chosen": ', GOOD], 2, "not valid JSON"),
    ("not an object", [GOOD, GOOD, '["a", "b"]'], 3, "not a JSON object but list"),
    ("missing field", [GOOD, '{"prompt": "x", "chosen": "y"}', GOOD], 2, "missing field 'rejected'"),
    ("null field", ['{"prompt": "x", "chosen": null, "rejected": "z"}', GOOD], 1, "field 'chosen' is null"),
    ("non-string", [GOOD, '{"prompt": "x", "chosen": 3, "rejected": "z"}'], 2, "field 'chosen' holds int"),
]


@pytest.mark.parametrize(("case", "lines", "line", "why"), BAD_JSON_LINES, ids=[c[0] for c in BAD_JSON_LINES])
def test_broken_json_lines_name_file_line_and_field(
    tmp_path: Path, case: str, lines: list[str], line: int, why: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load(path)
    message = str(error.value)
    assert f"{path}:{line}: line {line}: {why}" in message and SKIP_HINT in message
    source = load(path, SKIP)
    [(origin, reason)] = source.skipped
    assert origin == f"{path}:{line}" and reason.startswith(why)
    assert len(source.get_train_data()) == len(lines) - 1
    assert f"{path}:{line}" not in [source.describe("train", i) for i in range(len(lines) - 1)]
    _, report = to_records(source, "train", skip_bad_records=True)
    assert report.skipped_broken == 1


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n' + GOOD.encode())
    with pytest.raises(DataError, match=rf"{path}:2: line 2: invalid UTF-8 bytes"):
        load(path)
    assert load(path, SKIP).skipped == [(f"{path}:2", "invalid UTF-8 bytes")]
    csv_path = tmp_path / "bytes.csv"
    csv_path.write_bytes(b"prompt,chosen,rejected\nq,a,b\nq2,\xff\xfe,b\n")
    with pytest.raises(DataError, match=rf"{csv_path}:3: line 3: invalid UTF-8 bytes in field 'chosen'"):
        load(csv_path)
    assert len(load(csv_path, SKIP).get_train_data()) == 1


def test_broken_json_list_item_names_index_and_field(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([PAIRS[0], {"prompt": "x", "rejected": "z"}, "text", PAIRS[1]]))
    with pytest.raises(DataError, match=rf"{path}:1: item 1: missing field 'chosen'.*skip_bad_records"):
        load(path)
    source = load(path, SKIP)
    assert [why for _, why in source.skipped] == ["missing field 'chosen'", "not a JSON object but str"]
    assert [source.describe("train", i) for i in range(2)] == [f"{path}:0", f"{path}:3"]


def test_json_list_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text('[\n  {"prompt": "x",\n   "chosen": }\n]')
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        load(path, SKIP)


def test_broken_csv_row_and_parquet_row(tmp_path: Path) -> None:
    csv_path = tmp_path / "short.csv"
    csv_path.write_text("prompt,chosen,rejected\nq,a,b\nq2,a2\nq3,a3,b3\n")
    with pytest.raises(DataError, match=rf"{csv_path}:3: line 3: missing field 'rejected'"):
        load(csv_path)
    assert load(csv_path, SKIP).skipped == [(f"{csv_path}:3", "missing field 'rejected'")]
    parquet_path = write_rows(
        tmp_path / "rows.parquet",
        [{"prompt": "q", "response": "a"}, {"prompt": None, "response": "b"}, {"prompt": "q3", "response": "c"}],
    )
    with pytest.raises(DataError, match=rf"{parquet_path}:1: row 1: field 'prompt' is null"):
        load(parquet_path)
    numbers = write_rows(tmp_path / "numbers.parquet", [{"prompt": "q", "response": 1}])
    with pytest.raises(DataError, match=rf"{numbers}:0: row 0: field 'response' holds int"):
        load(numbers)


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("e.json", "[]"), ("e.csv", "prompt,response\n")])
def test_empty_files_have_no_records(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{path}: no records"):
        load(path)


def test_all_records_broken_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"prompt": "x", "chosen": "y"}\n' + GOOD.replace('"5."', "5") + "\n")
    with pytest.raises(DataError, match="all 2 were broken"):
        load(path, SKIP)


def test_bad_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{path}: not a readable gzip file"):
        load(path)
