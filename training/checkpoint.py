"""Checkpoints that resume a run exactly, written so that a crash never leaves a half-written one.

A checkpoint is a folder ``checkpoints/step-N`` holding each trained engine's DeepSpeed state (model,
optimizer, scheduler, loss scaler), each rank's random states of python, numpy and torch, and the loop's
own state (position in the data, counters, metrics so far, and whatever a step adds). It is written
under a temporary name, flushed to disk, marked complete, renamed into place, and only then does the
``latest`` pointer move; older checkpoints beyond ``--save_total_limit`` are deleted last.

Our own files (``trainer_state.pt``, ``rng-rank*.pt``) hold plain tensors, numbers, strings and
containers and load with ``weights_only=True``, so they cannot run code. DeepSpeed's engine files are
pickles: resume only from checkpoints you trust. The completion mark also records the settings that
decide which batches a run draws (``settings``); resuming under other settings stops with the
difference named, unless ``--resume_ignore_settings``.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, field

import numpy as np
import torch

from chatrlhf.training.config import LoopSettings
from chatrlhf.training.disk import DiskSpaceError, checkpoint_bytes, fsync_dir, fsync_tree, require_free_space
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.utils import device

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "complete.json"
STATE_FILE = "trainer_state.pt"
RNG_FILE = "rng-rank{rank}.pt"
CHECKPOINT_NAME = re.compile(r"step-\d+")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says which and what to do."""


def rng_state() -> dict:
    """This process's random states as plain values (tensors, ints, tuples), which ``weights_only`` loads."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                    has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _safe_load(path: str):
    """One of our own state files, refusing anything that would run code when unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors, numbers and text, which could run code when loaded; it was "
            "not written by chatrlhf. Resume only from checkpoints you trust (nothing from it was loaded)."
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); the checkpoint is damaged") from exc


def settings_changes(saved: dict, current: dict) -> list[str]:
    """The settings that decide the batches and differ between a checkpoint and this run, as ``name: a -> b``."""
    names = sorted(set(saved) | set(current))
    return [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}" for name in names
            if saved.get(name) != current.get(name)]


def _step_of(name: str) -> int:
    return int(name.split("-", 1)[1]) if name.startswith("step-") and name.split("-", 1)[1].isdigit() else -1


@dataclass
class CheckpointManager:
    """The checkpoints of one run; ``settings`` are what decides its batches (see ``settings_changes``)."""

    output_dir: str
    save_total_limit: int = 0
    settings: dict = field(default_factory=dict)
    ignore_settings: bool = False

    @property
    def root(self) -> str:
        return os.path.join(self.output_dir, CHECKPOINT_DIR)

    def complete(self) -> list[str]:
        """Complete checkpoints, oldest first (a folder without its completion mark is ignored)."""
        if not os.path.isdir(self.root):
            return []
        names = [n for n in os.listdir(self.root) if _step_of(n) >= 0]
        done = [n for n in names if os.path.isfile(os.path.join(self.root, n, COMPLETE))]
        return [os.path.join(self.root, n) for n in sorted(done, key=_step_of)]

    def latest(self) -> str | None:
        """The newest complete checkpoint: the ``latest`` pointer if it names one, else the highest step."""
        pointer = os.path.join(self.root, LATEST)
        if os.path.isfile(pointer):
            with open(pointer) as handle:
                name = handle.read().strip()
            named = os.path.join(self.root, name)
            if not CHECKPOINT_NAME.fullmatch(name):
                print_rank0(f"warning: {pointer} names {name!r}, not a checkpoint of this folder; ignoring it")
            elif os.path.isfile(os.path.join(named, COMPLETE)):
                return named
        done = self.complete()
        return done[-1] if done else None

    def resume_point(self, loop: LoopSettings) -> str | None:
        """The checkpoint a run continues from: ``--resume_from``, else with ``--resume`` the newest complete one."""
        if loop.resume_from:
            return loop.resume_from
        if not loop.resume:
            return None
        latest = self.latest()
        if latest is None:
            print_rank0(f"--resume: no complete checkpoint in {self.root}; starting from the beginning")
        return latest

    def save(self, step: int, engines: dict[str, object], state: dict) -> str:
        """Write checkpoint ``step-<step>`` (collective: every rank calls it) and return its path."""
        name = f"step-{step}"
        final = os.path.join(self.root, name)
        staging = os.path.join(self.root, f".{name}.tmp")
        self._check_space(step, engines)
        if device.is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        device.barrier()
        for tag, engine in engines.items():
            engine.save_checkpoint(staging, tag=tag, save_latest=False)
        torch.save(rng_state(), os.path.join(staging, RNG_FILE.format(rank=device.rank())))
        device.barrier()
        if device.is_main_process():
            torch.save(state, os.path.join(staging, STATE_FILE))
            fsync_tree(staging)
            with open(os.path.join(staging, COMPLETE), "w") as handle:
                json.dump({"step": step, "engines": sorted(engines), "settings": self.settings,
                           "world_size": device.world_size()}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            tmp_pointer = os.path.join(self.root, f".{LATEST}.tmp")
            with open(tmp_pointer, "w") as handle:
                handle.write(name)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_pointer, os.path.join(self.root, LATEST))
            fsync_dir(self.root)
            self._prune()
        device.barrier()
        return final

    def _check_space(self, step: int, engines: dict[str, object]) -> None:
        """Refuse a checkpoint that would not fit, on every rank alike, before anything is written."""
        problem = None
        if device.is_main_process():
            need = sum(checkpoint_bytes(engine.module) for engine in engines.values())
            try:
                require_free_space(self.root, need, f"the checkpoint of step {step}")
            except DiskSpaceError as exc:
                problem = exc
        if not device.all_ranks(problem is None):
            raise problem or DiskSpaceError(f"rank 0 found too little free space for the checkpoint of step {step}")

    def _prune(self) -> None:
        if self.save_total_limit <= 0:
            return
        for old in self.complete()[: -self.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str, engines: dict[str, object]) -> dict:
        """Restore every engine and return the loop state, with this rank's random states under ``rng``.

        Our own state is read first, so a file that would run code is refused before anything else loads.
        """
        marker = os.path.join(path, COMPLETE)
        if not os.path.isfile(marker):
            raise CheckpointError(
                f"{path} is not a complete checkpoint (no {COMPLETE}); it was cut off while being written. "
                "Resume from an earlier one with --resume_from, or use --resume to pick the newest complete one."
            )
        with open(marker) as handle:
            written = json.load(handle)
        saved = set(written["engines"])
        if saved != set(engines):
            raise CheckpointError(f"{path} holds the models {sorted(saved)}, this run trains {sorted(engines)}")
        self._check_settings(path, written.get("settings"))
        state = _safe_load(os.path.join(path, STATE_FILE))
        own_rng = os.path.join(path, RNG_FILE.format(rank=device.rank()))
        if os.path.isfile(own_rng):
            state["rng"] = _safe_load(own_rng)
        elif "rng" not in state:
            state["rng"] = _safe_load(os.path.join(path, RNG_FILE.format(rank=0)))
        for tag, engine in engines.items():
            damaged = f"{path}: the {tag!r} state cannot be loaded; the checkpoint is damaged. {self._earlier(path)}"
            if not os.path.isdir(os.path.join(path, tag)):
                raise CheckpointError(damaged)
            try:
                loaded, _ = engine.load_checkpoint(path, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
            except (AssertionError, OSError, RuntimeError, KeyError, EOFError) as exc:
                raise CheckpointError(f"{damaged} ({type(exc).__name__}: {exc})") from exc
            if loaded is None:
                raise CheckpointError(damaged)
        return state

    def _check_settings(self, path: str, saved: dict | None) -> None:
        if saved is None or self.ignore_settings:
            return
        changes = settings_changes(saved, self.settings)
        if changes:
            raise CheckpointError(
                f"{path} was written under other settings, so resuming would draw other batches than the run it "
                f"continues: {'; '.join(changes)}. Resume with the checkpoint's settings, or pass "
                "--resume_ignore_settings to continue anyway."
            )

    def _earlier(self, path: str) -> str:
        """What to do when ``path`` cannot be loaded: the previous complete checkpoint, if there is one."""
        step = _step_of(os.path.basename(os.path.normpath(path)))
        earlier = [done for done in self.complete() if _step_of(os.path.basename(done)) < step]
        if earlier:
            return f"The previous complete checkpoint is {earlier[-1]}: resume with --resume_from {earlier[-1]}."
        return "No earlier checkpoint exists; start again without --resume."
