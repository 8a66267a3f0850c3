"""Turning a preset name into a cached model directory that every rank of a node shares.

The cache (``CHATRLHF_CACHE``, else ``~/.cache/chatrlhf``) is usually on each node's own disk, so local rank 0
of every node builds it; the build is seeded and its tokenizer trained on the same texts, so nodes agree.
"""
from __future__ import annotations

from chatrlhf.utils import device
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.fingerprint import hash_text, source_fingerprint
from chatrlhf.utils.data.partitions import corpus_texts
from chatrlhf.utils.data.splitting import parse_source_spec


def corpus_key(cfg: DataConfig) -> str:
    """Which texts a preset tokenizer is trained on: all sources of the run, whatever the step."""
    names = [parse_source_spec(spec)[0] for spec in (*cfg.data_path, *cfg.sft_only_data_path)]
    return hash_text(sorted(source_fingerprint(name, cfg.seed) for name in names))


def resolve_model(name_or_path: str, data: DataConfig) -> str:
    """A preset becomes a cached directory (local rank 0 of each node builds it, the node's other ranks wait
    and then find it); anything else is returned as is. Collective when ``name_or_path`` is a preset."""
    from chatrlhf.utils.model.presets import is_preset, resolve_model_path

    if not is_preset(name_or_path):
        return name_or_path
    key = corpus_key(data)
    if device.is_local_main_process():
        path = resolve_model_path(name_or_path, corpus=lambda: corpus_texts(data), corpus_key=key)
    device.barrier()
    if not device.is_local_main_process():
        path = resolve_model_path(name_or_path, corpus=lambda: corpus_texts(data), corpus_key=key)
    return path
