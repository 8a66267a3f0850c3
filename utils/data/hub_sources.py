"""DeepSpeed-Chat's named hub datasets, read the way DeepSpeed-Chat reads them.

Users pass these names to ``--data_path`` and expect the same prompts and responses DeepSpeed-Chat
builds, so each class reproduces its split choice, " Human: ... Assistant:" wrapping and
chosen/rejected choice. Each one loads from the hub name, a ``save_to_disk`` directory, or a folder
holding the dataset's files; any path that contains the name selects the class, as in DeepSpeed-Chat.
Nothing is read until the samples are asked for, so a wrong path fails fast with a ``DataError``.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.options import SourceOptions, UnusableSample
from chatrlhf.utils.data.raw_datasets import PromptRawDataset, Sample, load_hf_dataset

TIED_SCORES = "tied preference scores"


OFFLINE_VALUES = ("1", "on", "yes", "true")


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or any(
        os.environ.get(name, "").lower() in OFFLINE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.cache
def hub_revision(repo: str) -> str | None:
    """The commit of hub dataset ``repo`` that a load reads now, asked of the hub once per process.

    The data cache is keyed by it and the load pins it, so a dataset updated on the hub is tokenised again
    rather than served stale. None offline or when the hub cannot be asked: the key then holds the name alone
    (a warning says so), and the load reads the locally cached copy.
    """
    if _offline():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo, timeout=10).sha
    except Exception as exc:  # any failure (network, auth, a renamed repository) leaves the name-only key
        warnings.warn(f"cannot ask the hub for {repo}'s current revision ({type(exc).__name__}: {exc}); its data "
                      "cache is keyed by name alone, so delete --data_output_path if the dataset changed.",
                      stacklevel=2)
        return None


def hub_repository(name: str) -> str | None:
    """The hub repository a ``--data_path`` name loads from, or None when it names no hub source (or a local copy)."""
    source = find_hub_source(name)
    if source is None or name != source.dataset_name or os.path.exists(name):
        return None
    return getattr(source, "hub_repo", None) or source.dataset_name


def _wrap_question(text: str) -> str:
    """DeepSpeed-Chat's prompt shape for single-question sources."""
    return " Human: " + text + " Assistant:"


class HubSource(PromptRawDataset):
    """Loading shared by the hub sources; subclasses say which splits to use and how to read a sample."""

    hub_repo: ClassVar[str | None] = None
    """Repository to fetch when the bare name is given, when it differs from ``dataset_name``."""
    hub_config: ClassVar[str | None] = None
    eval_splits: ClassVar[tuple[str, ...]] = ()
    """Accepted names of the held-out split, first found wins; empty means DeepSpeed-Chat carves eval from train."""
    local_files: ClassVar[dict[str, str] | None] = None
    """Split -> glob inside a local folder, for layouts ``datasets`` cannot infer (loading scripts, config files)."""

    def __init__(
        self,
        output_path: str,
        seed: int,
        local_rank: int,
        dataset_name: str,
        options: SourceOptions | None = None,
    ) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        self.options = options or SourceOptions(seed=seed)
        self._splits: dict[str, Any] | None = None
        if os.path.isfile(self.location):
            raise DataError(
                f"is a file, but {self.dataset_name} is read from a folder",
                where=self.location,
                hint=f"Pass the folder that holds {self.expected_files()}.",
            )
        self.from_hub = not os.path.isdir(self.location)
        if self.from_hub and self.location != self.dataset_name:
            raise DataError(
                f"no such folder (a local copy of {self.dataset_name} was expected here)",
                where=self.location,
                hint=f"Expected a save_to_disk directory or a folder holding {self.expected_files()}; "
                f"or pass exactly {self.dataset_name!r} to load it from the Hugging Face hub.",
            )

    @classmethod
    def expected_files(cls) -> str:
        """The files a local copy must hold, for error messages."""
        if cls.local_files:
            return ", ".join(cls.local_files.values())
        wanted = ["train", *cls.eval_splits[:1]]
        return " and ".join(f"{split}.jsonl" for split in wanted) + " (or .json/.parquet files, optionally under data/)"

    def _load(self) -> dict[str, Any]:
        import datasets

        try:
            if self.from_hub:
                repo = self.hub_repo or self.dataset_name
                loaded = load_hf_dataset(repo, config=self.hub_config, revision=hub_revision(repo))
            elif self.local_files and glob.glob(os.path.join(self.location, self.local_files["train"])):
                data_files = {
                    split: os.path.join(self.location, pattern)
                    for split, pattern in self.local_files.items()
                    if glob.glob(os.path.join(self.location, pattern))
                }
                loaded = datasets.load_dataset("json", data_files=data_files)
            else:
                loaded = load_hf_dataset(self.location)
        except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError) as exc:
            if self.from_hub:
                hint = (
                    f"Check the network, or download the dataset's files and pass that folder "
                    f"(it should hold {self.expected_files()})."
                )
            else:
                hint = f"Expected a save_to_disk directory or a folder holding {self.expected_files()}."
            raise DataError(f"cannot load {self.dataset_name}: {exc}", where=self.location, hint=hint) from exc
        if isinstance(loaded, datasets.Dataset):
            return {"train": loaded}
        return dict(loaded)

    def _split(self, names: Sequence[str]) -> Any:
        if self._splits is None:
            self._splits = self._load()
        for name in names:
            if name in self._splits:
                return self._splits[name]
        raise DataError(
            f"has no {' or '.join(repr(n) for n in names)} split (found: {', '.join(sorted(self._splits)) or 'none'})",
            where=self.location,
            hint=f"A copy of {self.dataset_name} should hold {self.expected_files()}.",
        )

    def get_train_data(self) -> Sequence[Sample]:
        return self._split(["train"])

    def get_eval_data(self) -> Sequence[Sample] | None:
        return self._split(self.eval_splits) if self.eval_splits else None


class _PromptChosenRejected(HubSource):
    """Sources whose rows already hold DeepSpeed-Chat's prompt and both responses verbatim."""

    eval_splits = ("test",)

    def get_prompt(self, sample: Sample) -> str | None:
        return sample["prompt"]

    def get_chosen(self, sample: Sample) -> str | None:
        return sample["chosen"]

    def get_rejected(self, sample: Sample) -> str | None:
        return sample["rejected"]


class DahoasRmStatic(_PromptChosenRejected):
    """Anthropic HH pairs, already in " Human: ... Assistant:" form, with a test split."""

    dataset_name = "Dahoas/rm-static"
    dataset_name_clean = "Dahoas_rm_static"


class DahoasFullHhRlhf(_PromptChosenRejected):
    """The full Anthropic HH set in rm-static's layout."""

    dataset_name = "Dahoas/full-hh-rlhf"
    dataset_name_clean = "Dahoas_full_hh_rlhf"


class DahoasSyntheticInstructGptjPairwise(HubSource):
    """Bare instructions with two answers; train only, so eval is carved out of train."""

    dataset_name = "Dahoas/synthetic-instruct-gptj-pairwise"
    dataset_name_clean = "Dahoas_synthetic_instruct_gptj_pairwise"

    def get_prompt(self, sample: Sample) -> str | None:
        return _wrap_question(sample["prompt"])

    def get_chosen(self, sample: Sample) -> str | None:
        return " " + sample["chosen"]

    def get_rejected(self, sample: Sample) -> str | None:
        return " " + sample["rejected"]


class YitingxieRlhfRewardDatasets(HubSource):
    """HH-style pairs whose responses start with their own "Assistant:" turn marker.

    The prompt gets the marker appended and the responses lose it, so prompt + response reads the
    same as the stored prompt + stored response (which is what the combined getters return).
    """

    dataset_name = "yitingxie/rlhf-reward-datasets"
    dataset_name_clean = "yitingxie_rlhf_reward_datasets"
    eval_splits = ("test",)

    def get_prompt(self, sample: Sample) -> str | None:
        return sample["prompt"] + "Assistant:"

    def get_chosen(self, sample: Sample) -> str | None:
        return sample["chosen"].split("Assistant:")[-1]

    def get_rejected(self, sample: Sample) -> str | None:
        return sample["rejected"].split("Assistant:")[-1]

    def get_prompt_and_chosen(self, sample: Sample) -> str | None:
        return sample["prompt"] + sample["chosen"]

    def get_prompt_and_rejected(self, sample: Sample) -> str | None:
        return sample["prompt"] + sample["rejected"]


_SPACED_BRACKETS = re.compile(r" [\(\[].*?[\)\]]")
_BRACKETS = re.compile(r"[\(\[].*?[\)\]]")


def _strip_citations(answer: str) -> str:
    """Drop WebGPT's "[1]" citations (and, like DeepSpeed-Chat, any bracketed aside): no browsing here."""
    return _BRACKETS.sub("", _SPACED_BRACKETS.sub("", answer))


class OpenaiWebgptComparisons(HubSource):
    """WebGPT answer pairs scored by humans; the higher score is chosen, a tie carries no preference."""

    dataset_name = "openai/webgpt_comparisons"
    dataset_name_clean = "openai_webgpt_comparisons"

    @staticmethod
    def _ranked(sample: Sample) -> tuple[str, str]:
        score_0, score_1 = float(sample["score_0"]), float(sample["score_1"])
        if score_0 == score_1:
            raise UnusableSample(TIED_SCORES)
        first, second = sample["answer_0"], sample["answer_1"]
        return (first, second) if score_0 > score_1 else (second, first)

    def get_prompt(self, sample: Sample) -> str | None:
        return _wrap_question(sample["question"]["full_text"])

    def get_chosen(self, sample: Sample) -> str | None:
        return " " + _strip_citations(self._ranked(sample)[0])

    def get_rejected(self, sample: Sample) -> str | None:
        return " " + _strip_citations(self._ranked(sample)[1])


class StanfordnlpSHP(HubSource):
    """Reddit comment pairs; ``labels`` is 1 when comment A scored higher, an equal score is unusable."""

    dataset_name = "stanfordnlp/SHP"
    dataset_name_clean = "stanfordnlp_SHP"
    eval_splits = ("validation",)

    @staticmethod
    def _ranked(sample: Sample) -> tuple[str, str]:
        if sample["score_A"] == sample["score_B"]:
            raise UnusableSample(TIED_SCORES)
        first, second = sample["human_ref_A"], sample["human_ref_B"]
        return (first, second) if int(sample["labels"]) == 1 else (second, first)

    def get_prompt(self, sample: Sample) -> str | None:
        return _wrap_question(sample["history"])

    def get_chosen(self, sample: Sample) -> str | None:
        return " " + self._ranked(sample)[0]

    def get_rejected(self, sample: Sample) -> str | None:
        return " " + self._ranked(sample)[1]


class PvduySharegptAlpacaOaVicunaFormat(HubSource):
    """Vicuna-format chats ("USER: ... ASSISTANT:") renamed to HH roles; one answer, no rejected."""

    dataset_name = "pvduy/sharegpt_alpaca_oa_vicuna_format"
    dataset_name_clean = "pvduy_sharegpt_alpaca_oa_vicuna_format"
    eval_splits = ("test",)

    def get_prompt(self, sample: Sample) -> str | None:
        prompt = sample["prompt"]
        return prompt.replace("USER", "Human").replace("ASSISTANT", "Assistant") if prompt else None

    def get_chosen(self, sample: Sample) -> str | None:
        label = sample["label"]
        return " " + label if label else None


class Wangrui6ZhihuKOL(HubSource):
    """Zhihu questions with a popular answer; train only, eval carved out of train."""

    dataset_name = "wangrui6/Zhihu-KOL"
    dataset_name_clean = "wangrui6_Zhihu_KOL"

    def get_prompt(self, sample: Sample) -> str | None:
        instruction = sample["INSTRUCTION"]
        return None if instruction is None else _wrap_question(instruction)

    def get_chosen(self, sample: Sample) -> str | None:
        response = sample["RESPONSE"]
        return None if response is None else " " + response


class _MiraclQueries(HubSource):
    """MIRACL queries: the first relevant passage is chosen, the first irrelevant one rejected.

    A query without irrelevant passages still serves as prompt and answer (rejected is None), as
    DeepSpeed-Chat keeps it for SFT and skips it for reward pairs.
    """

    eval_splits = ("dev", "validation")

    def get_prompt(self, sample: Sample) -> str | None:
        return _wrap_question(sample["query"])

    def get_chosen(self, sample: Sample) -> str | None:
        positives = sample["positive_passages"]
        if not positives:
            raise UnusableSample("no relevant passage")
        return " " + positives[0]["text"]

    def get_rejected(self, sample: Sample) -> str | None:
        negatives = sample["negative_passages"]
        return " " + negatives[0]["text"] if negatives else None


class CohereMiraclZhQueries2212(_MiraclQueries):
    dataset_name = "Cohere/miracl-zh-queries-22-12"
    dataset_name_clean = "Cohere_miracl_zh_queries_22_12"


class CohereMiraclJaQueries2212(_MiraclQueries):
    dataset_name = "Cohere/miracl-ja-queries-22-12"
    dataset_name_clean = "Cohere_miracl_ja_queries_22_12"


class HelloSimpleAIHC3Chinese(HubSource):
    """Chinese questions with human and ChatGPT answers; like DeepSpeed-Chat, only the first human answer is used.

    The repository ships one file per domain plus ``all.jsonl`` (their union) and a loading script,
    so a local folder is read from ``all.jsonl`` alone; the hub copy uses its "all" config.
    """

    dataset_name = "Hello-SimpleAI/HC3-Chinese"
    dataset_name_clean = "Hello_SimpleAI_HC3_Chinese"
    hub_config = "all"
    local_files = {"train": "all.jsonl"}

    def get_prompt(self, sample: Sample) -> str | None:
        question = sample["question"]
        return None if question is None else _wrap_question(question)

    def get_chosen(self, sample: Sample) -> str | None:
        answers = sample["human_answers"]
        if not answers:
            raise UnusableSample("no human answer")
        return None if answers[0] is None else " " + answers[0]


class _Mkqa(HubSource):
    """MKQA questions in one language with their first gold answer; train only, eval carved out of train.

    Both language variants load the same ``mkqa`` data; a local folder holds MKQA's ``mkqa.jsonl(.gz)``.
    """

    hub_repo = "apple/mkqa"
    local_files = {"train": "mkqa.jsonl*"}
    language: ClassVar[str]

    def get_prompt(self, sample: Sample) -> str | None:
        query = sample["queries"][self.language]
        return None if query is None else _wrap_question(query)

    def get_chosen(self, sample: Sample) -> str | None:
        answers = sample["answers"][self.language]
        if not answers or answers[0]["text"] is None:
            raise UnusableSample("no answer text")
        return " " + answers[0]["text"]


class MkqaChinese(_Mkqa):
    dataset_name = "mkqa-Chinese"
    dataset_name_clean = "mkqa_Chinese"
    language = "zh_cn"


class MkqaJapanese(_Mkqa):
    dataset_name = "mkqa-Japanese"
    dataset_name_clean = "mkqa_Japanese"
    language = "ja"


class _Jaquad(HubSource):
    """lmqg's JaQuAD derivatives; their repositories hold a loading script, so local folders name the files."""

    eval_splits = ("validation",)
    local_files = {
        "train": "data/processed/train*.jsonl",
        "validation": "data/processed/validation*.jsonl",
        "test": "data/processed/test*.jsonl",
    }


class LmqgQgJaquad(_Jaquad):
    """A question answered by the sentence that holds its answer."""

    dataset_name = "lmqg/qg_jaquad"
    dataset_name_clean = "lmqg_qg_jaquad"

    def get_prompt(self, sample: Sample) -> str | None:
        return _wrap_question(sample["question"])

    def get_chosen(self, sample: Sample) -> str | None:
        return " " + sample["sentence"]


class LmqgQagJaquad(_Jaquad):
    """A paragraph's first question answered by the whole paragraph."""

    dataset_name = "lmqg/qag_jaquad"
    dataset_name_clean = "lmqg_qag_jaquad"

    def get_prompt(self, sample: Sample) -> str | None:
        questions = sample["questions"]
        if not questions:
            raise UnusableSample("no question")
        return _wrap_question(questions[0])

    def get_chosen(self, sample: Sample) -> str | None:
        return " " + sample["paragraph"]


def _turns(messages: Any) -> str:
    """TRL's conversational messages (a list of role/content dicts, or plain text) as an HH transcript."""
    if isinstance(messages, str):
        return messages
    roles = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{roles.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


class TrlLibKtoMix14k(HubSource):
    """TRL's KTO mix: unpaired rows of a conversational prompt, one completion and a boolean ``label`` (desirable),
    with a test split. The prompt's turns become an HH transcript ending in ``Assistant:``."""

    dataset_name = "trl-lib/kto-mix-14k"
    dataset_name_clean = "trl_lib_kto_mix_14k"
    eval_splits = ("test",)

    def get_prompt(self, sample: Sample) -> str | None:
        return _turns(sample["prompt"]) + "\n\nAssistant:"

    def get_chosen(self, sample: Sample) -> str | None:
        completion = sample["completion"]
        text = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
        return " " + text.lstrip()

    def sample_meta(self, sample: Sample) -> dict:
        """The completion's label; ``utils/data/unpaired.record_label`` refuses one that is not a boolean."""
        return {"label": sample["label"]}


HUB_SOURCES: dict[str, type[PromptRawDataset]] = {
    cls.dataset_name: cls
    for cls in (
        DahoasRmStatic,
        DahoasFullHhRlhf,
        DahoasSyntheticInstructGptjPairwise,
        YitingxieRlhfRewardDatasets,
        OpenaiWebgptComparisons,
        StanfordnlpSHP,
        PvduySharegptAlpacaOaVicunaFormat,
        Wangrui6ZhihuKOL,
        CohereMiraclZhQueries2212,
        HelloSimpleAIHC3Chinese,
        MkqaChinese,
        MkqaJapanese,
        CohereMiraclJaQueries2212,
        LmqgQgJaquad,
        LmqgQagJaquad,
        TrlLibKtoMix14k,
    )
}

_BY_LENGTH = sorted(HUB_SOURCES, key=len, reverse=True)


def find_hub_source(data_path: str) -> type[PromptRawDataset] | None:
    """The source whose name appears in ``data_path`` (longest name first), as DeepSpeed-Chat matches them."""
    for name in _BY_LENGTH:
        if name in data_path:
            return HUB_SOURCES[name]
    return None
