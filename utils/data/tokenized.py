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

# 2: step-2 pairs carry their prompt length (DPO masks the prompt out of the log-probs).
# 3: local pair files' margin columns fill step 2's margins; the info names the sources without margins.
# 4: a prompt in two sources goes to the partition the first source gives it (--allow_cross_step_duplicates).
CACHE_VERSION = 4
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


def _join(prompt: list[int], response: list[int], eos: int | None, max_len: int) -> list[int]:
    """prompt + response + eos, with the response cut (and the eos dropped) when over ``max_len``."""
    tail = response + ([eos] if eos is not None else [])
    return (prompt + tail)[:max_len]


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
            dropped["prompt longer than --max_seq_len"] = dropped.get("prompt longer than --max_seq_len", 0) + 1
            continue
        out["input_ids"].append(_join(prompt, response, tokenizer.eos_token_id, cfg.max_seq_len))
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
        prompt = prefix + prompt
        if len(prompt) >= cfg.max_seq_len:
            dropped["prompt longer than --max_seq_len"] = dropped.get("prompt longer than --max_seq_len", 0) + 1
            continue
        good_ids, bad_ids = _join(prompt, good, eos, cfg.max_seq_len), _join(prompt, bad, eos, cfg.max_seq_len)
        if good_ids == bad_ids:
            dropped["identical after truncation"] = dropped.get("identical after truncation", 0) + 1
            continue
        out["chosen_ids"].append(good_ids)
        out["rejected_ids"].append(bad_ids)
        out["prompt_len"].append(len(prompt))
        out["margin"].append(float(records[i].meta.get("margin", 0.0)))
        out["task"].append(meta["task"][i])
        out["mistake"].append(meta["mistake"][i])
    return out


def _build_step3(records: list[Record], tokenizer, cfg: DataConfig, dropped: dict) -> dict[str, list]:
    prefix = prompt_prefix_ids(tokenizer)
    prompts = _encode(tokenizer, [r.prompt for r in records], cfg.preprocessing_num_workers)
    meta = _meta_columns(records)
    out: dict[str, list] = {"prompt_ids": [], "prompt": [], "chosen": [], "task": []}
    for i, ids in enumerate(prompts):
        ids = prefix + ids
        if len(ids) > cfg.max_prompt_seq_len:
            dropped["prompt longer than --max_prompt_seq_len"] = (
                dropped.get("prompt longer than --max_prompt_seq_len", 0) + 1
            )
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


def sample_lengths(dataset: datasets.Dataset, step: int) -> list[int]:
    """Tokens per sample (step 2: the longer side of the pair), for length-grouped batching."""
    if step == 2:
        return [max(len(a), len(b)) for a, b in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
    return [len(ids) for ids in dataset["input_ids" if step == 1 else "prompt_ids"]]


def cache_key(cfg: DataConfig, step: int, tokenizer) -> str:
    sources = [(spec, source_fingerprint(parse_source_spec(spec)[0], cfg.seed)) for spec in cfg.data_path]
    sft_only = [(spec, source_fingerprint(spec, cfg.seed)) for spec in cfg.sft_only_data_path]
    unkeyed = {"data_path", "sft_only_data_path", "data_output_path", "preprocessing_num_workers"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in unkeyed}
    if step != 3:
        settings.pop("max_prompt_seq_len")
    else:
        settings.pop("max_seq_len")
    return hash_text(CACHE_VERSION, step, sources, sft_only, settings, tokenizer_fingerprint(tokenizer))


def _build(cfg: DataConfig, step: int, tokenizer, records: StepRecords | None) -> StepData:
    records = records or step_records(cfg, step, tokenizer=tokenizer)
    dropped_train: dict[str, int] = {}
    dropped_eval: dict[str, int] = {}
    train = datasets.Dataset.from_dict(BUILDERS[step](records.train, tokenizer, cfg, dropped_train), FEATURES[step])
    evals = datasets.Dataset.from_dict(BUILDERS[step](records.eval, tokenizer, cfg, dropped_eval), FEATURES[step])
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
    if step == 2:
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
    datasets.DatasetDict({"train": data.train, "eval": data.eval}).save_to_disk(staging)
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
    return StepData(loaded["train"], loaded["eval"], info)


def build_step_data(cfg: DataConfig, step: int, tokenizer, *, records: StepRecords | None = None) -> StepData:
    """The tokenised train and eval sets of ``step``, from the cache when nothing that changes them changed.

    Collective: every rank calls it; local rank 0 of each node builds a missing cache before the barrier."""
    key = cache_key(cfg, step, tokenizer)
    target = os.path.join(cfg.data_output_path, f"step{step}_{key}")
    hit = os.path.isdir(target)
    if device.is_local_main_process() and not hit:
        _save(_build(cfg, step, tokenizer, records), target)
    device.barrier()
    data = _load(target)
    data.info.update(cache_dir=target, cache_hit=hit)
    return data
