"""Loading a model for generation (evaluation, comparisons, chat), presets included."""
from __future__ import annotations

import torch

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.device import local_device


def load_for_inference(name_or_path: str, data: DataConfig | None = None, dtype: torch.dtype = torch.float32):
    """The causal LM and tokenizer at ``name_or_path`` (a directory, hub name or preset), in eval mode.

    A preset needs the data its tokenizer was trained on (default: ``synthetic/tasks``).
    """
    from chatrlhf.utils.model.loading import ModelOptions, load_causal_lm, load_tokenizer
    from chatrlhf.utils.model.resolve import resolve_model

    path = resolve_model(name_or_path, data or DataConfig())
    options = ModelOptions(dtype=dtype)
    tokenizer = load_tokenizer(path, options)
    model = load_causal_lm(path, tokenizer, options).to(local_device())
    model.eval()
    return model, tokenizer
