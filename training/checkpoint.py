"""Checkpoints that resume a run exactly, written so that a crash never leaves a half-written one.

A checkpoint is a folder ``checkpoints/step-N`` holding each trained engine's DeepSpeed state (model,
optimizer, scheduler, loss scaler), the random states of python, numpy and torch, and the loop's own
state (position in the data, counters, metrics so far, and whatever a step adds). It is written
under a temporary name, marked complete, renamed into place, and only then does the ``latest``
pointer move; older checkpoints beyond ``--save_total_limit`` are deleted last.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from chatrlhf.training.config import LoopSettings
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.utils import device

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "complete.json"
STATE_FILE = "trainer_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says which and what to do."""


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_of(name: str) -> int:
    return int(name.split("-", 1)[1]) if name.startswith("step-") and name.split("-", 1)[1].isdigit() else -1


@dataclass
class CheckpointManager:
    output_dir: str
    save_total_limit: int = 0

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
                named = os.path.join(self.root, handle.read().strip())
            if os.path.isfile(os.path.join(named, COMPLETE)):
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
        if device.is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        device.barrier()
        for tag, engine in engines.items():
            engine.save_checkpoint(staging, tag=tag, save_latest=False)
        device.barrier()
        if device.is_main_process():
            torch.save({**state, "rng": rng_state()}, os.path.join(staging, STATE_FILE))
            with open(os.path.join(staging, COMPLETE), "w") as handle:
                json.dump({"step": step, "engines": sorted(engines)}, handle)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            tmp_pointer = os.path.join(self.root, f".{LATEST}.tmp")
            with open(tmp_pointer, "w") as handle:
                handle.write(name)
            os.replace(tmp_pointer, os.path.join(self.root, LATEST))
            self._prune()
        device.barrier()
        return final

    def _prune(self) -> None:
        if self.save_total_limit <= 0:
            return
        for old in self.complete()[: -self.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def load(path: str, engines: dict[str, object]) -> dict:
        """Restore every engine and return the loop state (random states are restored by the caller)."""
        marker = os.path.join(path, COMPLETE)
        if not os.path.isfile(marker):
            raise CheckpointError(
                f"{path} is not a complete checkpoint (no {COMPLETE}); it was cut off while being written. "
                "Resume from an earlier one with --resume_from, or use --resume to pick the newest complete one."
            )
        with open(marker) as handle:
            saved = set(json.load(handle)["engines"])
        if saved != set(engines):
            raise CheckpointError(f"{path} holds the models {sorted(saved)}, this run trains {sorted(engines)}")
        for tag, engine in engines.items():
            damaged = f"{path}: the {tag!r} state cannot be loaded; the checkpoint is damaged. Resume from an " \
                      "earlier checkpoint with --resume_from, or start again without --resume."
            if not os.path.isdir(os.path.join(path, tag)):
                raise CheckpointError(damaged)
            try:
                loaded, _ = engine.load_checkpoint(path, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
            except (AssertionError, OSError, RuntimeError, KeyError, EOFError) as exc:
                raise CheckpointError(f"{damaged} ({type(exc).__name__}: {exc})") from exc
            if loaded is None:
                raise CheckpointError(damaged)
        try:
            return torch.load(os.path.join(path, STATE_FILE), weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise CheckpointError(f"{path}/{STATE_FILE} cannot be read ({exc}); the checkpoint is damaged") from exc
