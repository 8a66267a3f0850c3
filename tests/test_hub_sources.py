"""DeepSpeed-Chat's hub sources read offline from hand-written copies in tests/fixtures/hub.

Each fixture folder mirrors the real dataset's file names and columns, so these tests pin the
prompt/chosen/rejected text DeepSpeed-Chat would build for a known row, and the split sizes.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402

from chatrlhf.utils.data.errors import DataError  # noqa: E402
from chatrlhf.utils.data.hub_sources import (  # noqa: E402
    HUB_SOURCES,
    TIED_SCORES,
    DahoasFullHhRlhf,
    DahoasRmStatic,
    DahoasSyntheticInstructGptjPairwise,
    HubSource,
    find_hub_source,
)
from chatrlhf.utils.data.options import SourceOptions, UnusableSample  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hub")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the hub, whatever was imported before this module set the variables."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


_opened: dict[str, HubSource] = {}


def open_fixture(name: str) -> HubSource:
    """The source for a fixture folder, found the way ``--data_path`` finds it; loaded once per run."""
    if name not in _opened:
        path = os.path.join(FIXTURES, name)
        cls = find_hub_source(path)
        assert cls is not None and cls.dataset_name == name
        _opened[name] = cls("/tmp/unused", 1234, 0, path, SourceOptions())
    return _opened[name]


def row(source: HubSource, split: str, index: int) -> dict:
    data = source.get_train_data() if split == "train" else source.get_eval_data()
    assert data is not None
    return data[index]


# name, train size, eval size (None: DeepSpeed-Chat carves eval out of train), split and row checked,
# expected prompt, chosen, rejected
CASES = [
    (
        "Dahoas/rm-static", 4, 2, "eval", 1,
        "\n\nHuman: What rhymes with cat?\n\nAssistant:", " Hat, bat and mat.", " Dog.",
    ),
    (
        "Dahoas/full-hh-rlhf", 5, 3, "train", 2,
        "\n\nHuman: Is it safe to look at the sun?\n\nAssistant:",
        " No, looking at the sun can damage your eyes.", " Yes, for as long as you like.",
    ),
    (
        "Dahoas/synthetic-instruct-gptj-pairwise", 5, None, "train", 2,
        " Human: What is the capital of Canada? Assistant:", " Ottawa is the capital of Canada.", " Toronto.",
    ),
    (
        "yitingxie/rlhf-reward-datasets", 3, 2, "train", 1,
        "\n\nHuman: I want to bake bread.\n\nAssistant: What kind of bread?\n\nHuman: Sourdough.\n\nAssistant:",
        " You will need a starter, flour, water and salt.", " Bread is sold in shops.",
    ),
    (
        "openai/webgpt_comparisons", 4, None, "train", 0,
        " Human: Why does ice float on water? Assistant:",
        " Ice is less dense than liquid water. Water expands when it freezes.", " Ice floats because it is cold.",
    ),
    (
        "stanfordnlp/SHP", 4, 2, "eval", 1,
        " Human: Can I freeze cooked rice? Assistant:", " Yes, cool it quickly and freeze in portions.", " Never.",
    ),
    (
        "pvduy/sharegpt_alpaca_oa_vicuna_format", 4, 2, "train", 1,
        "Human: Hi! Assistant: Hello, how can I help?</s>Human: Write a haiku about rain. Assistant:",
        " Soft rain on the roof / the garden drinks in silence / puddles hold the sky", None,
    ),
    (
        "wangrui6/Zhihu-KOL", 4, None, "train", 1,
        " Human: 为什么天空是蓝色的？ Assistant:", " 因为大气对蓝光的散射比红光更强。", None,
    ),
    (
        "Cohere/miracl-zh-queries-22-12", 3, 2, "eval", 0,
        " Human: 珠穆朗玛峰有多高？ Assistant:", " 珠穆朗玛峰海拔约8849米。", " 长江是亚洲第一长河。",
    ),
    (
        "Hello-SimpleAI/HC3-Chinese", 4, None, "train", 1,
        " Human: 感冒了应该多喝水吗？ Assistant:", " 是的，多喝水有助于身体恢复。", None,
    ),
    (
        "mkqa-Chinese", 4, None, "train", 1,
        " Human: 蜘蛛有几条腿 Assistant:", " 8", None,
    ),
    (
        "mkqa-Japanese", 3, None, "train", 1,
        " Human: モナ・リザを描いたのは誰ですか Assistant:", " レオナルド・ダ・ヴィンチ", None,
    ),
    (
        "Cohere/miracl-ja-queries-22-12", 4, 1, "train", 2,
        " Human: 東京タワーはいつ完成した？ Assistant:",
        " 東京タワーは1958年に完成した。",
        " 大阪城は豊臣秀吉が築いた。",
    ),
    (
        "lmqg/qg_jaquad", 3, 2, "eval", 1,
        " Human: 富士山はどの県にまたがるか？ Assistant:", " 富士山は静岡県と山梨県にまたがる。", None,
    ),
    (
        "lmqg/qag_jaquad", 3, 2, "train", 1,
        " Human: 富士山の標高は何メートルか？ Assistant:",
        " 富士山は静岡県と山梨県にまたがる。標高は3776メートルである。",
        None,
    ),
    (
        "trl-lib/kto-mix-14k", 3, 2, "train", 1,
        "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a prime number.\n\nAssistant:",
        " Seven is prime.", None,
    ),
]


def test_every_source_has_a_case_and_a_fixture() -> None:
    assert sorted(case[0] for case in CASES) == sorted(HUB_SOURCES)
    for name in HUB_SOURCES:
        assert os.path.isdir(os.path.join(FIXTURES, name)), name


@pytest.mark.parametrize(
    ("name", "train_size", "eval_size", "split", "index", "prompt", "chosen", "rejected"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_fixture_row_reads_like_deepspeed_chat(
    name: str,
    train_size: int,
    eval_size: int | None,
    split: str,
    index: int,
    prompt: str,
    chosen: str,
    rejected: str | None,
) -> None:
    source = open_fixture(name)
    assert len(source.get_train_data()) == train_size
    eval_data = source.get_eval_data()
    assert (None if eval_data is None else len(eval_data)) == eval_size
    sample = row(source, split, index)
    assert source.get_prompt(sample) == prompt
    assert source.get_chosen(sample) == chosen
    assert source.get_rejected(sample) == rejected
    assert source.get_prompt_and_chosen(sample) == prompt + chosen
    assert source.get_prompt_and_rejected(sample) == (None if rejected is None else prompt + rejected)


def test_yitingxie_combined_text_is_the_stored_text() -> None:
    source = open_fixture("yitingxie/rlhf-reward-datasets")
    sample = row(source, "eval", 0)
    assert source.get_prompt_and_chosen(sample) == sample["prompt"] + sample["chosen"]
    assert source.get_prompt_and_rejected(sample) == "\n\nHuman: What is a haiku?\n\nAssistant: A kind of sushi."


def test_webgpt_prefers_the_higher_score_and_strips_citations() -> None:
    source = open_fixture("openai/webgpt_comparisons")
    sample = row(source, "train", 1)
    expected = " Vaccines train the immune system to recognise a germ without causing the disease."
    assert source.get_chosen(sample) == expected
    assert source.get_rejected(sample) == " They make your body hungry."


@pytest.mark.parametrize(("name", "index"), [("openai/webgpt_comparisons", 2), ("stanfordnlp/SHP", 2)])
def test_tied_scores_are_unusable(name: str, index: int) -> None:
    source = open_fixture(name)
    sample = row(source, "train", index)
    assert source.get_prompt(sample)
    for getter in (source.get_chosen, source.get_rejected):
        with pytest.raises(UnusableSample) as caught:
            getter(sample)
        assert caught.value.reason == TIED_SCORES


def test_shp_label_zero_prefers_comment_b() -> None:
    source = open_fixture("stanfordnlp/SHP")
    sample = row(source, "train", 1)
    assert source.get_chosen(sample) == " Not really: dry it well and oil it lightly."
    assert source.get_rejected(sample) == " Throw it away after each use."


def test_sharegpt_empty_prompt_has_no_prompt() -> None:
    source = open_fixture("pvduy/sharegpt_alpaca_oa_vicuna_format")
    sample = row(source, "train", 2)
    assert source.get_prompt(sample) is None
    assert source.get_prompt_and_chosen(sample) is None


@pytest.mark.parametrize("name", ["Cohere/miracl-zh-queries-22-12", "Cohere/miracl-ja-queries-22-12"])
def test_miracl_query_without_negatives_keeps_its_answer_but_no_pair(name: str) -> None:
    source = open_fixture(name)
    sample = row(source, "train", 1)
    assert source.get_chosen(sample)
    assert source.get_rejected(sample) is None
    assert source.get_prompt_and_rejected(sample) is None


def test_hc3_reads_only_all_jsonl_and_needs_a_human_answer() -> None:
    source = open_fixture("Hello-SimpleAI/HC3-Chinese")
    questions = [sample["question"] for sample in source.get_train_data()]
    assert len(questions) == len(set(questions)) == 4
    with pytest.raises(UnusableSample, match="no human answer"):
        source.get_chosen(row(source, "train", 2))


def test_mkqa_reads_its_language_and_skips_unanswerable() -> None:
    chinese, japanese = open_fixture("mkqa-Chinese"), open_fixture("mkqa-Japanese")
    sample = row(chinese, "train", 3)
    assert chinese.get_prompt(sample) == " Human: 澳大利亚的首都是哪里 Assistant:"
    assert japanese.get_prompt(sample) == " Human: オーストラリアの首都はどこですか Assistant:"
    assert japanese.get_chosen(sample) == " キャンベラ"
    with pytest.raises(UnusableSample, match="no answer text"):
        chinese.get_chosen(row(chinese, "train", 2))


def test_qag_paragraph_without_questions_is_unusable() -> None:
    source = open_fixture("lmqg/qag_jaquad")
    with pytest.raises(UnusableSample, match="no question"):
        source.get_prompt(row(source, "train", 2))


@pytest.mark.parametrize("name", sorted(HUB_SOURCES))
def test_missing_field_raises_key_error(name: str) -> None:
    source = open_fixture(name)
    for getter in (source.get_prompt, source.get_chosen):
        with pytest.raises(KeyError):
            getter({})


def test_registry_matches_a_name_inside_a_path() -> None:
    assert find_hub_source("/data/Dahoas/rm-static") is DahoasRmStatic
    assert find_hub_source("Dahoas/full-hh-rlhf") is DahoasFullHhRlhf
    assert find_hub_source("/mirror/Dahoas/rm-static/old/Dahoas/full-hh-rlhf") is DahoasFullHhRlhf
    assert find_hub_source("/data/my_pairs.jsonl") is None
    assert find_hub_source("Dahoas/rm") is None


def test_missing_local_copy_names_the_path_and_the_files(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere" / "Dahoas" / "rm-static")
    with pytest.raises(DataError) as caught:
        find_hub_source(path)("/tmp/unused", 1, 0, path)
    message = str(caught.value)
    assert path in message
    assert "train.jsonl" in message and "test.jsonl" in message
    assert "'Dahoas/rm-static'" in message


def test_missing_jaquad_copy_names_its_processed_files(tmp_path: Path) -> None:
    path = str(tmp_path / "lmqg" / "qg_jaquad")
    with pytest.raises(DataError, match=r"data/processed/train\*\.jsonl"):
        find_hub_source(path)("/tmp/unused", 1, 0, path)


def test_a_file_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "Dahoas" / "rm-static.jsonl"
    path.parent.mkdir()
    path.write_text("{}\n")
    with pytest.raises(DataError, match="is a file"):
        DahoasRmStatic("/tmp/unused", 1, 0, str(path))


def test_local_copy_without_its_eval_split(tmp_path: Path) -> None:
    folder = tmp_path / "Dahoas" / "rm-static"
    folder.mkdir(parents=True)
    source_file = os.path.join(FIXTURES, "Dahoas", "rm-static", "data", "train-00000-of-00001.jsonl")
    (folder / "train.jsonl").write_text(open(source_file, encoding="utf-8").read(), encoding="utf-8")
    source = DahoasRmStatic("/tmp/unused", 1, 0, str(folder))
    assert len(source.get_train_data()) == 4
    with pytest.raises(DataError, match="has no 'test' split"):
        source.get_eval_data()


def test_empty_local_folder_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "stanfordnlp" / "SHP"
    folder.mkdir(parents=True)
    source = find_hub_source(str(folder))("/tmp/unused", 1, 0, str(folder))
    with pytest.raises(DataError, match="cannot load stanfordnlp/SHP"):
        source.get_train_data()


def test_hub_name_loads_lazily_and_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    source = DahoasRmStatic("/tmp/unused", 1, 0, "Dahoas/rm-static")
    assert source.from_hub
    with pytest.raises(DataError, match="cannot load Dahoas/rm-static") as caught:
        source.get_train_data()
    assert "download the dataset's files" in str(caught.value)


def test_save_to_disk_directory(tmp_path: Path) -> None:
    saved = tmp_path / "exports" / "Dahoas" / "rm-static"
    datasets.load_dataset(os.path.join(FIXTURES, "Dahoas", "rm-static")).save_to_disk(str(saved))
    source = find_hub_source(str(saved))("/tmp/unused", 1, 0, str(saved))
    assert isinstance(source, DahoasRmStatic)
    assert len(source.get_train_data()) == 4
    eval_data = source.get_eval_data()
    assert eval_data is not None and len(eval_data) == 2
    assert source.get_prompt_and_rejected(eval_data[1]) == "\n\nHuman: What rhymes with cat?\n\nAssistant: Dog."


def test_save_to_disk_of_a_single_split(tmp_path: Path) -> None:
    saved = tmp_path / "Dahoas" / "synthetic-instruct-gptj-pairwise"
    fixture = os.path.join(FIXTURES, "Dahoas", "synthetic-instruct-gptj-pairwise")
    datasets.load_dataset(fixture, split="train").save_to_disk(str(saved))
    source = DahoasSyntheticInstructGptjPairwise("/tmp/unused", 1, 0, str(saved))
    assert len(source.get_train_data()) == 5
    assert source.get_eval_data() is None
    assert source.get_prompt(source.get_train_data()[4]) == " Human: Suggest a name for a bakery. Assistant:"
