"""Saving a trained model as a standard Hugging Face directory, atomically.

The weights are gathered first under ZeRO-3 and LoRA adapters are merged in; the directory is
written under a temporary name, flushed to disk and renamed into place, so a crash mid-save never
leaves a half-written model where a good one was. The model card and, on request, the LoRA adapter
alone are written in the same folder, so they always describe the weights beside them. Several models
of one run (step 3's actor, critic and EMA) are staged first and put in place together
(``StagedModels``), so a failure leaves all of them old or all new.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from chatrlhf.training.disk import fsync_dir, fsync_tree, model_bytes, require_free_space
from chatrlhf.training.lora import merged_state_dict
from chatrlhf.training.lora_adapter import ADAPTER_DIR, save_adapter
from chatrlhf.training.model_card import ModelCard, write_card
from chatrlhf.utils import device
from chatrlhf.utils.model.unwrap import base_model


def gathered_state_dict(model: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0 (empty elsewhere), gathering ZeRO-3 partitions one tensor at a time.

    Like ``state_dict()`` it holds persistent buffers only (not, e.g., a rotary embedding's frequencies),
    so the saved model loads without unexpected keys."""
    if zero_stage != 3:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if device.is_main_process() else {}
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if device.is_main_process():
                state[name] = param.detach().cpu().clone()
    if device.is_main_process():
        persistent = model.state_dict().keys()
        for name, buffer in model.named_buffers():
            if name in persistent:
                state.setdefault(name, buffer.detach().cpu().clone())
    return state


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt")
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(first: str, second: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    return call(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0


def replace_dir(staging: str, target: str) -> None:
    """Put a finished ``staging`` folder at ``target``; the old ``target`` stays whole until the swap.

    What else lives in ``target`` (a ``training.log`` being written, checkpoints, TensorBoard logs) is
    moved into ``staging`` first (same inode, so open log files keep writing), old weights (and an old
    LoRA adapter) are not.
    """
    if not os.path.exists(target):
        os.replace(staging, target)
        return
    written = set(os.listdir(staging))
    for name in os.listdir(target):
        if name not in written and not name.endswith(WEIGHT_SUFFIXES) and name != ADAPTER_DIR:
            os.replace(os.path.join(target, name), os.path.join(staging, name))
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    backup = f"{target}.old-{os.getpid()}"
    os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


class SaveError(OSError):
    """A model save that failed on some rank; the models already in place are untouched."""


def _staging_dir(target: str) -> str:
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


def atomic_dir(target: str, write: Callable[[str], None]) -> None:
    """Run ``write(folder)`` on a temporary folder beside ``target``, flush it and rename it into place."""
    staging = _staging_dir(target)
    try:
        write(staging)
        fsync_tree(staging)
        replace_dir(staging, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass
class StagedModels:
    """Model folders written under temporary names, put in place together by ``publish`` (main process only)."""

    staged: list[tuple[str, str]] = field(default_factory=list)

    def stage(self, target: str, write: Callable[[str], None]) -> None:
        staging = _staging_dir(target)
        self.staged.append((staging, target))
        write(staging)
        fsync_tree(staging)

    def publish(self) -> None:
        for staging, target in self.staged:
            replace_dir(staging, target)
            fsync_dir(os.path.dirname(os.path.abspath(target)))
        self.staged.clear()

    def discard(self) -> None:
        for staging, _ in self.staged:
            shutil.rmtree(staging, ignore_errors=True)
        self.staged.clear()


def agree_saved(error: BaseException | None, what: str) -> None:
    """Raise on every rank when the main process's save failed, so no rank waits at a barrier for it."""
    if device.all_ranks(error is None):
        return
    if error is None:
        raise SaveError(f"saving {what} failed on rank 0")
    raise SaveError(f"saving {what} failed ({type(error).__name__}: {error})") from error


def save_hf_model(
    model: nn.Module,
    tokenizer,
    output_dir: str,
    *,
    zero_stage: int = 0,
    extra_json: dict[str, dict] | None = None,
    card: ModelCard | None = None,
    adapter: bool = False,
    staged: StagedModels | None = None,
) -> None:
    """Write ``model`` (the engine's module) as a Hugging Face directory that ``from_pretrained`` loads.

    ``card`` becomes its ``README.md``; with ``adapter`` the LoRA adapter alone also goes to ``adapter/``.
    With ``staged`` the folder is only staged; ``staged.publish()`` puts it in place with the others.
    Collective: a failure on the main process raises ``SaveError`` on every rank.
    """
    state = gathered_state_dict(model, zero_stage)
    error = None
    if device.is_main_process():
        hf_model = base_model(model)
        merged = merged_state_dict(model, state)

        def write(folder: str) -> None:
            hf_model.save_pretrained(folder, state_dict=merged, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            for name, content in (extra_json or {}).items():
                with open(os.path.join(folder, name), "w") as handle:
                    json.dump(content, handle, indent=1)
            if adapter:
                save_adapter(model, state, os.path.join(folder, ADAPTER_DIR))
            if card is not None:
                write_card(card, folder, output_dir)

        try:
            require_free_space(output_dir, model_bytes(model), f"saving the model to {output_dir}")
            if staged is None:
                atomic_dir(output_dir, write)
            else:
                staged.stage(output_dir, write)
        except Exception as exc:  # noqa: BLE001 - passed to every rank by agree_saved
            error = exc
    agree_saved(error, f"the model to {output_dir}")
