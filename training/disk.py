"""Writes that survive a crash or a full disk: flushing to disk, and checking free space before a save.

A rename is only as durable as the data behind it: without ``fsync`` a power cut can leave a checkpoint
marked complete whose files are empty. And a save that runs out of space half-way wastes the time it
took, so the space a save needs is checked against what is free before it starts.
"""
from __future__ import annotations

import os
import shutil

from torch import nn

# Adam keeps two fp32 moments per trained parameter, and mixed precision an fp32 master copy besides.
OPTIMIZER_BYTES_PER_PARAM = 12
# Room for the tokenizer, cards, DeepSpeed's bookkeeping and the file system's own rounding.
HEADROOM = 1.1
HEADROOM_BYTES = 16 * 2**20


class DiskSpaceError(OSError):
    """Too little free space for a save; the message gives the figures and the folder."""


def fsync_dir(folder: str) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(root: str) -> None:
    """Flush every file and folder under ``root`` to disk before it is renamed into place or marked complete."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)


def model_bytes(model: nn.Module) -> int:
    """The saved weights' size: every parameter and buffer at its own precision (ZeRO-3 keeps the full count)."""
    params = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


def checkpoint_bytes(model: nn.Module) -> int:
    """A checkpoint's size: the weights plus the optimizer's state of every trained parameter."""
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    return model_bytes(model) + trained * OPTIMIZER_BYTES_PER_PARAM


def free_bytes(path: str) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def require_free_space(path: str, need: int, what: str) -> None:
    """Refuse ``what`` before it starts when ``path``'s file system holds less than ``need`` bytes (plus headroom)."""
    need = int(need * HEADROOM) + HEADROOM_BYTES
    free = free_bytes(path)
    if free < need:
        raise DiskSpaceError(
            f"{what} needs about {need / 2**30:.2f} GiB at {path}, but only {free / 2**30:.2f} GiB is free. Free "
            "some space there, or choose another --output_dir."
        )
