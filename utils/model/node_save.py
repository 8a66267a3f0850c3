"""Saving a preset model from any rank: local rank 0 of every node writes its own copy on its own disk."""
from __future__ import annotations

from pathlib import Path

import transformers
from transformers import PreTrainedModel

from chatrlhf.utils import device


def save_on_this_rank(model: PreTrainedModel, folder: str | Path) -> None:
    """``model.save_pretrained(folder)`` on whichever process calls it.

    Once a process group is up, recent transformers releases write a model on global rank 0 only and silently skips the
    others (``should_save_on_this_rank``), which left every other node's preset without weights; the check is
    lifted for this one call. A save that still writes no config is refused before the folder is published.
    """
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(str(folder))
    finally:
        del model.should_save_on_this_rank
    if not (Path(folder) / "config.json").is_file():
        raise RuntimeError(
            f"transformers {transformers.__version__} wrote no model to {folder} on global rank {device.rank()}; "
            "build the preset once with a single process on this node (any step run without the deepspeed "
            "launcher), then launch again."
        )
