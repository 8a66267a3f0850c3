"""What every step does before training: seeds, the output folder, and turning a preset into a directory."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from chatrlhf.utils import device
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.fingerprint import hash_text, source_fingerprint
from chatrlhf.utils.data.partitions import corpus_texts
from chatrlhf.utils.data.splitting import parse_source_spec


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def require_output_dir(output_dir: str | None, step_name: str) -> str:
    if not output_dir:
        raise SystemExit(f"{step_name}: --output_dir is required (where the trained model is saved).")
    os.makedirs(output_dir, exist_ok=True)
    return output_dir
