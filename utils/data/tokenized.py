"""Tokenised per-step datasets, built once with ``datasets`` and cached under ``--data_output_path``.

The cache key hashes everything that changes the result: the sources' content, the split, seed,
lengths, templates and the tokenizer. With several processes local rank 0 of each node builds its own copy
and the other ranks wait: ``--data_output_path`` is meant to be node-local, and another node's disk is out of
reach. On a shared disk the nodes' builders race harmlessly (the first rename wins).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

import datasets

from chatrlhf.utils import device
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.fingerprint import hash_text, source_fingerprint, tokenizer_fingerprint
from chatrlhf.utils.data.partitions import StepRecords, step_records
from chatrlhf.utils.data.records import Record
from chatrlhf.utils.data.splitting import parse_source_spec
from chatrlhf.utils.data.unpaired import NO_PAIR, unpair

# 2: step-2 pairs carry their prompt length (DPO masks the prompt out of the log-probs).
# 3: local pair files' margin columns fill step 2's margins; the info names the sources without margins.
# 4: a prompt in two sources goes to the partition the first source gives it (--allow_cross_step_duplicates).
# 5: step 2 cuts a long prompt's oldest tokens instead of the answers; the key holds the chat template; cut
#    answers and prompts are counted.
CACHE_VERSION = 5
TOKENIZE_BATCH = 512


@dataclass
class StepData:
    train: datasets.Dataset
    eval: datasets.Dataset
    info: dict = field(default_factory=dict)


def prompt_prefix_ids(tokenizer) -> list[int]:
    """The BOS a tokenizer puts in front of a text by default (LLaMA does, OPT's ``</s>``), or nothing."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    probe = tokenizer("a")["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def _encode(tokenizer, texts: list[str], num_proc: int | None) -> list[list[int]]:
    """Token ids of ``texts`` (no special tokens), tokenised by ``num_proc`` processes (None: this one)."""
    if not texts:
        return []

    def tokenise(batch: dict[str, list]) -> dict[str, list]:
        return {"ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

    # Nothing is cached per call (the whole result is, under its key), so a fixed fingerprint spares hashing
    # the tokenizer.
    encoded = datasets.Dataset.from_dict({"text": texts}).map(
        tokenise, batched=True, batch_size=TOKENIZE_BATCH, num_proc=num_proc, remove_columns=["text"],
        new_fingerprint="chatrlhf-tokenise", desc="tokenising")
    return list(encoded["ids"])


# What ``dropped_by_length`` counts (printed as "dropped (split): <reason>: <count>"). The last two name the tokens
# cut from a sample that is kept; the others whole samples.
PROMPT_TOO_LONG = "prompt longer than --max_seq_len"
IDENTICAL_PAIR = "identical after truncation"
ANSWER_END_CUT = "end of answer, cut by --max_seq_len (sample kept)"
PROMPT_START_CUT = "start of prompt, cut by --max_seq_len (pair kept)"
DROPPING_REASONS = (PROMPT_TOO_LONG, IDENTICAL_PAIR)
CUT_REASONS = (ANSWER_END_CUT, PROMPT_START_CUT)
# Left-truncation keeps at least this share of --max_seq_len of a long prompt, so a long answer cannot push the
# whole question out of the sequence.
PROMPT_FLOOR_DIVISOR = 4


def count(dropped: dict[str, int], reason: str) -> None:
    """One more sample under ``reason``, so nothing is dropped or cut without being reported."""
    dropped[reason] = dropped.get(reason, 0) + 1


def _join(prompt: list[int], response: list[int], eos: int | None, max_len: int) -> tuple[list[int], bool]:
    """prompt + response + eos, with the response cut (and the eos dropped) when over ``max_len``; and whether
    the response lost its end."""
    tail = response + ([eos] if eos is not None else [])
    return (prompt + tail)[:max_len], len(prompt) + len(tail) > max_len


@dataclass(frozen=True)
class FittedAnswers:
    """One prompt with its answers, each ``prompt + answer + eos`` within ``--max_seq_len``."""

    prompt: list[int]
    sequences: list[list[int]]
    prompt_cut: bool
    answer_cut: bool


def fit_answers(prompt: list[int], answers: list[list[int]], eos: int | None, max_len: int,
                prefix: list[int] | None = None) -> FittedAnswers:
    """``prefix`` + prompt + each answer + eos in ``max_len`` tokens, cutting the prompt first.

    What a reward model compares is the answers, so when the longest one does not fit, the prompt loses its
    oldest tokens (a conversation's earliest turns; the prefix stays in front). It keeps at least
    ``max_len // PROMPT_FLOOR_DIVISOR`` of them (or all it has), and only then are the answers cut at the end.
    """
    prefix = list(prefix or [])
    tails = [answer + ([eos] if eos is not None else []) for answer in answers]
    longest = max((len(tail) for tail in tails), default=0)
    floor = min(len(prompt), max(1, max_len // PROMPT_FLOOR_DIVISOR))
    keep = min(len(prompt), max(floor, max_len - len(prefix) - longest))
    kept = prefix + prompt[len(prompt) - keep:]
    room = max(max_len - len(kept), 0)
    return FittedAnswers(kept, [kept + tail[:room] for tail in tails], keep < len(prompt),
                         any(len(tail) > room for tail in tails))


def fit_pair(prompt: list[int], chosen: list[int], rejected: list[int], eos: int | None, max_len: int,
             dropped: dict[str, int], prefix: list[int] | None = None) -> FittedAnswers | None:
    """A chosen/rejected pair as step 2 trains on it and ``rw_eval`` scores it (see ``fit_answers``), or None
    when it is dropped; drops and cuts are counted in ``dropped``.

    A pair whose two sequences are still the same token ids after the cut is dropped: its scores are equal,
    so scoring it would count a tie as a wrong pair and train on nothing.
    """
    fitted = fit_answers(prompt, [chosen, rejected], eos, max_len, prefix)
    if len(fitted.prompt) >= max_len:
        count(dropped, PROMPT_TOO_LONG)
        return None
    if fitted.sequences[0] == fitted.sequences[1]:
        count(dropped, IDENTICAL_PAIR)
        return None
    if fitted.prompt_cut:
        count(dropped, PROMPT_START_CUT)
    if fitted.answer_cut:
        count(dropped, ANSWER_END_CUT)
    return fitted


def _meta_columns(records: list[Record]) -> dict[str, list]:
    return {
        "task": [str(r.meta.get("task", "")) for r in records],
        "mistake": [str(r.meta.get("mistake", "")) for r in records],
    }


def _build_step1(records: list[Record], tokenizer, cfg: DataConfig, dropped: dict) -> dict[str, list]:
    prefix = prompt_prefix_ids(tokenizer)
    prompts = _encode(tokenizer, [r.prompt for r in records], cfg.preprocessing_num_workers)
    responses = _encode(tokenizer, [r.chosen for r in records], cfg.preprocessing_num_workers)
    out: dict[str, list] = {"input_ids": [], "prompt_len": []}
    for prompt, response in zip(prompts, responses):
        prompt = prefix + prompt
        if len(prompt) >= cfg.max_seq_len:
            count(dropped, PROMPT_TOO_LONG)
            continue
        ids, cut = _join(prompt, response, tokenizer.eos_token_id, cfg.max_seq_len)
        if cut:
            count(dropped, ANSWER_END_CUT)
        out["input_ids"].append(ids)
        out["prompt_len"].append(len(prompt))
    return out


def _build_step2(records: list[Record], tokenizer, cfg: DataConfig, dropped: dict) -> dict[str, list]:
    prefix = prompt_prefix_ids(tokenizer)
    prompts = _encode(tokenizer, [r.prompt for r in records], cfg.preprocessing_num_workers)
    chosen = _encode(tokenizer, [r.chosen for r in records], cfg.preprocessing_num_workers)
    rejected = _encode(tokenizer, [r.rejected or "" for r in records], cfg.preprocessing_num_workers)
    meta = _meta_columns(records)
    out: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "prompt_len": [], "margin": [], "task": [],
                            "mistake": []}
    eos = tokenizer.eos_token_id
    for i, (prompt, good, bad) in enumerate(zip(prompts, chosen, rejected)):
        fitted = fit_pair(prompt, good, bad, eos, cfg.max_seq_len, dropped, prefix)
        if fitted is None:
            continue
        out["chosen_ids"].append(fitted.sequences[0])
        out["rejected_ids"].append(fitted.sequences[1])
        out["prompt_len"].append(len(fitted.prompt))
        out["margin"].append(float(records[i].meta.get("margin", 0.0)))
        out["task"].append(meta["task"][i])
        out["mistake"].append(meta["mistake"][i])
    return out


def _build_unpaired(records: list[Record], tokenizer, cfg: DataConfig, dropped: dict) -> dict[str, list]:
    """Step 2 for KTO: one row per labelled completion, ``prompt + completion + eos``. A pair's two rows are cut
    as step 2 cuts the pair (``fit_pair``), so they keep the same prompt; an unpaired row as one answer."""
    prefix = prompt_prefix_ids(tokenizer)
    completions = unpair(records)
    prompts = _encode(tokenizer, [r.prompt for r in records], cfg.preprocessing_num_workers)
    answers = _encode(tokenizer, [c.text for c in completions], cfg.preprocessing_num_workers)
    prompt_of = {id(r): ids for r, ids in zip(records, prompts)}
    meta = _meta_columns([c.record for c in completions])
    out: dict[str, list] = {"input_ids": [], "prompt_len": [], "label": [], "pair": [], "task": [], "mistake": []}
    eos = tokenizer.eos_token_id
    index = 0
    while index < len(completions):
        completion = completions[index]
        prompt = prompt_of[id(completion.record)]
        width = 1 if completion.pair == NO_PAIR else 2
        if width == 2:
            fitted = fit_pair(prompt, answers[index], answers[index + 1], eos, cfg.max_seq_len, dropped, prefix)
        else:
            fitted = _fit_single(prompt, answers[index], eos, cfg.max_seq_len, dropped, prefix)
        for offset, sequence in enumerate(fitted.sequences if fitted else ()):
            out["input_ids"].append(sequence)
            out["prompt_len"].append(len(fitted.prompt))
            out["label"].append(completions[index + offset].desirable)
            out["pair"].append(completion.pair)
            out["task"].append(meta["task"][index + offset])
            out["mistake"].append(meta["mistake"][index + offset])
        index += width
    return out


def _fit_single(prompt: list[int], answer: list[int], eos: int | None, max_len: int, dropped: dict[str, int],
                prefix: list[int]) -> FittedAnswers | None:
    """One answer as ``fit_answers`` cuts it, or None when the prompt alone fills ``max_len``; cuts are counted."""
    fitted = fit_answers(prompt, [answer], eos, max_len, prefix)
    if len(fitted.prompt) >= max_len:
        count(dropped, PROMPT_TOO_LONG)
        return None
    if fitted.prompt_cut:
        count(dropped, PROMPT_START_CUT)
    if fitted.answer_cut:
        count(dropped, ANSWER_END_CUT)
    return fitted


def _build_step3(records: list[Record], tokenizer, cfg: DataConfig, dropped: dict) -> dict[str, list]:
    prefix = prompt_prefix_ids(tokenizer)
    prompts = _encode(tokenizer, [r.prompt for r in records], cfg.preprocessing_num_workers)
    meta = _meta_columns(records)
    out: dict[str, list] = {"prompt_ids": [], "prompt": [], "chosen": [], "task": []}
    for i, ids in enumerate(prompts):
        ids = prefix + ids
        if len(ids) > cfg.max_prompt_seq_len:
            count(dropped, "prompt longer than --max_prompt_seq_len")
            continue
        out["prompt_ids"].append(ids)
        out["prompt"].append(records[i].prompt)
        out["chosen"].append(records[i].chosen or "")
        out["task"].append(meta["task"][i])
    return out


BUILDERS = {1: _build_step1, 2: _build_step2, 3: _build_step3}
_IDS = datasets.Sequence(datasets.Value("int32"))
_TEXT = datasets.Value("string")
FEATURES = {
    1: datasets.Features({"input_ids": _IDS, "prompt_len": datasets.Value("int32")}),
    2: datasets.Features({"chosen_ids": _IDS, "rejected_ids": _IDS, "prompt_len": datasets.Value("int32"),
                          "margin": datasets.Value("float32"), "task": _TEXT, "mistake": _TEXT}),
    3: datasets.Features({"prompt_ids": _IDS, "prompt": _TEXT, "chosen": _TEXT, "task": _TEXT}),
}
UNPAIRED_FEATURES = datasets.Features({"input_ids": _IDS, "prompt_len": datasets.Value("int32"),
                                       "label": datasets.Value("bool"), "pair": datasets.Value("int32"),
                                       "task": _TEXT, "mistake": _TEXT})


def sample_lengths(dataset: datasets.Dataset, step: int) -> list[int]:
    """Tokens per sample (step 2's pairs: the longer side), for length-grouped batching."""
    if step == 2 and "chosen_ids" in dataset.column_names:
        return [max(len(a), len(b)) for a, b in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
    return [len(ids) for ids in dataset["prompt_ids" if step == 3 else "input_ids"]]


def cache_key(cfg: DataConfig, step: int, tokenizer, unpaired: bool = False) -> str:
    sources = [(spec, source_fingerprint(parse_source_spec(spec)[0], cfg.seed)) for spec in cfg.data_path]
    sft_only = [(spec, source_fingerprint(spec, cfg.seed)) for spec in cfg.sft_only_data_path]
    unkeyed = {"data_path", "sft_only_data_path", "data_output_path", "preprocessing_num_workers"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in unkeyed}
    if step != 3:
        settings.pop("max_prompt_seq_len")
    else:
        settings.pop("max_seq_len")
    # The chat template is not part of the vocabulary, but --prompt_template model writes every prompt with it.
    chat_template = getattr(tokenizer, "chat_template", None)
    return hash_text(CACHE_VERSION, step, sources, sft_only, settings, tokenizer_fingerprint(tokenizer),
                     chat_template, *(("unpaired",) if unpaired else ()))


def _refuse_length_drops(step: int, dropped: dict[str, dict[str, int]]) -> None:
    """``--strict_data``: what the length limits would drop or cut is an error, with the counts and the flag."""
    found = [f"{split}: {reason}: {n}" for split, reasons in dropped.items() for reason, n in reasons.items() if n]
    if not found:
        return
    flag = "--max_prompt_seq_len" if step == 3 else "--max_seq_len"
    raise DataError(
        f"--strict_data: step {step} would drop or cut samples to fit {flag} ({'; '.join(found)})",
        hint=f"Raise {flag} so every sample fits, or drop --strict_data to drop and count them.",
    )


def _build(cfg: DataConfig, step: int, tokenizer, records: StepRecords | None, unpaired: bool) -> StepData:
    records = records or step_records(cfg, step, tokenizer=tokenizer, unpaired=unpaired)
    dropped_train: dict[str, int] = {}
    dropped_eval: dict[str, int] = {}
    builder, features = (_build_unpaired, UNPAIRED_FEATURES) if unpaired else (BUILDERS[step], FEATURES[step])
    train = datasets.Dataset.from_dict(builder(records.train, tokenizer, cfg, dropped_train), features)
    evals = datasets.Dataset.from_dict(builder(records.eval, tokenizer, cfg, dropped_eval), features)
    if cfg.strict_data:
        _refuse_length_drops(step, {"train": dropped_train, "eval": dropped_eval})
    if len(train) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in dropped_train.items()) or "the sources gave no records"
        raise DataError(
            f"step {step} has no training samples left ({len(records.train)} records before tokenising; {reasons})",
            hint="Check --data_split gives this step a share, and the length flags (--max_seq_len, "
            "--max_prompt_seq_len).",
        )
    info = {
        "counts": {name: list(pair) for name, pair in records.counts.items()},
        "drops": [report.summary() for report in records.reports],
        "dropped_by_length": {"train": dropped_train, "eval": dropped_eval},
        "num_train": len(train),
        "num_eval": len(evals),
    }
    if step == 2 and not unpaired:
        # Sources whose pairs carry no margin (their margin column holds 0): step 2's --use_margin refuses them.
        info["sources_without_margin"] = sorted({r.source for r in records.train + records.eval
                                                 if "margin" not in r.meta})
    return StepData(train, evals, info)


def _save(data: StepData, target: str) -> None:
    """Write to a temporary folder and rename it into place, so a half-written cache is never read; when another
    node's builder renamed its copy first (a shared disk), ours is dropped."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".building-", dir=parent)
    # An empty split is left out: ``datasets`` writes it with no shard and cannot load it back; ``_load`` makes it
    # again from the train split's features.
    splits = {name: split for name, split in (("train", data.train), ("eval", data.eval)) if len(split)}
    datasets.DatasetDict(splits).save_to_disk(staging)
    with open(os.path.join(staging, "chatrlhf_info.json"), "w") as handle:
        json.dump(data.info, handle, indent=1)
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def _load(target: str) -> StepData:
    loaded = datasets.load_from_disk(target)
    with open(os.path.join(target, "chatrlhf_info.json")) as handle:
        info = json.load(handle)
    train = loaded["train"]
    evals = loaded["eval"] if "eval" in loaded else datasets.Dataset.from_dict(
        {name: [] for name in train.features}, features=train.features)
    return StepData(train, evals, info)


def build_step_data(cfg: DataConfig, step: int, tokenizer, *, records: StepRecords | None = None,
                    unpaired: bool = False) -> StepData:
    """The tokenised train and eval sets of ``step``, from the cache when nothing that changes them changed.
    ``unpaired`` (step 2 for KTO): one row per labelled completion, pairs unpaired (``utils/data/unpaired.py``).

    Collective: every rank calls it; local rank 0 of each node builds a missing cache before the barrier."""
    key = cache_key(cfg, step, tokenizer, unpaired)
    target = os.path.join(cfg.data_output_path, f"step{step}{'_unpaired' if unpaired else ''}_{key}")
    hit = os.path.isdir(target)
    if device.is_local_main_process() and not hit:
        _save(_build(cfg, step, tokenizer, records, unpaired), target)
    device.barrier()
    data = _load(target)
    data.info.update(cache_dir=target, cache_hit=hit)
    return data
