"""DPO's reference log-probs: pair scoring, and log-probs computed once before training and cached on disk (the
live reference, a frozen model or the LoRA policy with its adapters off, is ``training/reference_model.py``).

The cache of precomputed log-probs is keyed by the tokenised data's own cache key and a hash of the
reference's weights: the data key names no model, so a retrained SFT model in the same folder must not
read the old model's log-probs.
"""
from __future__ import annotations

import os

import datasets
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from chatrlhf.training.loop import to_device
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.training.saving import atomic_dir
from chatrlhf.utils import device
from chatrlhf.utils.data.fingerprint import hash_text
from chatrlhf.utils.data.tokenized import StepData
from chatrlhf.utils.model.lm_forward import answer_logprobs
from chatrlhf.utils.model.packing import HiddenStates

REF_CACHE_VERSION = 1
REF_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp")


def pair_sums(model: nn.Module, batch: dict, *, fp32: bool,
              hidden_states: HiddenStates | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs and answer token counts of a ``PairCollator`` batch (chosen rows, then rejected)."""
    prompt_len = batch["prompt_len"].repeat(2)
    return answer_logprobs(model, batch["input_ids"], batch["attention_mask"], prompt_len, fp32=fp32,
                           hidden_states=hidden_states)


def ref_cache_dir(data: StepData, reference_identity: str, fp32: bool) -> str:
    """Where the reference log-probs of ``data`` under this reference are cached, beside the tokenised data."""
    data_dir = data.info["cache_dir"]
    key = hash_text(REF_CACHE_VERSION, os.path.basename(data_dir), reference_identity, fp32)
    return os.path.join(os.path.dirname(data_dir), f"dpo_ref_{key}")


def _publish(target: str, splits: dict[str, datasets.Dataset]) -> None:
    """Save the scored splits at ``target``; on a shared disk another node may rename its equal copy in first."""
    try:
        atomic_dir(target, datasets.DatasetDict(splits).save_to_disk)
    except OSError:
        if not os.path.isdir(target):
            raise


def _score_split(reference: nn.Module, dataset: datasets.Dataset, collate, batch_size: int,
                 fp32: bool) -> tuple[list[float], list[float]]:
    """Every pair's summed reference log-probs; each rank scores its share and all ranks get the whole."""
    sampler = DistributedSampler(dataset, num_replicas=device.world_size(), rank=device.rank(), shuffle=False)
    indices = list(sampler)
    scored: list[tuple[int, float, float]] = []
    target = device.local_device()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            rows = indices[start : start + batch_size]
            batch = to_device(collate([dataset[i] for i in rows]), target)
            sums, _ = pair_sums(reference, batch, fp32=fp32)
            half = len(rows)
            scored += zip(rows, sums[:half].tolist(), sums[half:].tolist())
    found = {row: (chosen, rejected) for part in device.all_gather_json(scored) for row, chosen, rejected in part}
    return [found[i][0] for i in range(len(dataset))], [found[i][1] for i in range(len(dataset))]


def precomputed_reference(
    data: StepData,
    reference: nn.Module,
    reference_identity: str,
    collate,
    batch_size: int,
    *,
    fp32: bool,
) -> StepData:
    """``data`` with the reference's summed answer log-probs as columns, computed once and cached on disk."""
    target = ref_cache_dir(data, reference_identity, fp32)
    hit = device.all_ranks(os.path.isdir(target))
    if not hit:
        splits = {}
        for name, split in (("train", data.train), ("eval", data.eval)):
            chosen, rejected = _score_split(reference, split, collate, batch_size, fp32)
            splits[name] = datasets.Dataset.from_dict(
                dict(zip(REF_COLUMNS, (chosen, rejected))),
                datasets.Features({column: datasets.Value("float64") for column in REF_COLUMNS}),
            )
        if device.is_local_main_process():  # every rank holds the whole; each node reads its own disk
            _publish(target, splits)
    device.barrier()
    cached = datasets.load_from_disk(target)
    print_rank0(f"reference log-probs {'cached' if hit else 'computed'} at {target}")
    train, evals = data.train, data.eval
    for column in REF_COLUMNS:
        train = train.add_column(column, cached["train"][column])
        evals = evals.add_column(column, cached["eval"][column])
    return StepData(train, evals, {**data.info, "ref_cache_dir": target, "ref_cache_hit": hit})
