"""Turning a preset name into a cached model directory that every rank of a run shares."""
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
    """A preset becomes a cached directory (rank 0 builds it, the others wait); anything else is returned as is."""
    from chatrlhf.utils.model.presets import is_preset, resolve_model_path

    if not is_preset(name_or_path):
        return name_or_path
    key = corpus_key(data)
    if device.is_main_process():
        path = resolve_model_path(name_or_path, corpus=lambda: corpus_texts(data), corpus_key=key)
    device.barrier()
    if not device.is_main_process():
        path = resolve_model_path(name_or_path, corpus=lambda: corpus_texts(data), corpus_key=key)
    return path
