"""Stopping a run cleanly: SIGTERM and Ctrl-C finish the current step, write a checkpoint, and exit.

Also the health guard: non-finite losses are skipped and counted, and too many in a row stop the run. The
skip is one decision of all ranks: a rank that skipped while the others entered the gradient all-reduce
would hang the run or mix its gradients with nothing.
"""
from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.utils import device

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequested(Exception):
    """Raised at a step boundary after a stop signal; the checkpoint has been written."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 1)


class TrainingHealthError(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint stays usable."""


@dataclass
class StopSignals:
    """Remembers a SIGTERM/SIGINT instead of dying mid-step; ranks agree before acting on it."""

    received: int = 0
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for signum in EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> int:
        """The signal any rank received (0 for none), the same answer on every rank."""
        return device.max_over_ranks(self.received)


@dataclass
class LossGuard:
    """Counts non-finite losses; ``check`` says whether a loss may be back-propagated."""

    max_bad_steps: int = 10
    in_a_row: int = 0
    total: int = 0

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """Whether every rank's loss is finite (collective: every rank calls it for every micro-batch)."""
        value = float(loss.detach())
        if device.all_ranks(math.isfinite(value)):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.max_bad_steps:
            raise TrainingHealthError(
                f"the loss was non-finite on some rank for {self.in_a_row} batches in a row (last at step "
                f"{step + 1}; {value} on this rank); the run stopped. Likely causes: a learning rate too high for "
                "this model, fp16 overflow (try bf16 or fp32, or a lower --learning_rate), or corrupt data. The "
                "last checkpoint and the previous model are untouched; resume with --resume after changing the "
                "settings."
            )
        return False


class FinalSaveError(RuntimeError):
    """The trained model could not be saved; the message says where its state was kept instead."""


@contextmanager
def signals_held(what: str) -> Iterator[StopSignals]:
    """Remember stop signals instead of dying while ``what`` runs (the final evaluation and save): a scheduler's
    SIGTERM then lets the save finish rather than losing the run mid-write. A second signal still interrupts."""
    signals = StopSignals()
    signals.install()
    try:
        yield signals
    finally:
        signals.uninstall()
        if signals.received:
            print_rank0(f"{signal.Signals(signals.received).name} arrived during {what}; it was let finish")


def save_or_keep(save: Callable[[], None], keep: Callable[[], str]) -> None:
    """Run the final ``save``; if it fails, ``keep`` writes the trained state as a checkpoint and the error names it.

    Collective, like both callables: every rank sees the same failure (``saving.agree_saved``).
    """
    try:
        save()
    except Exception as exc:
        try:
            kept = keep()
        except Exception as second:
            raise FinalSaveError(
                f"saving the trained model failed ({exc}), and writing its state as a checkpoint failed too "
                f"({second}); the trained weights are lost. Free disk space (or fix the cause) before running again."
            ) from exc
        raise FinalSaveError(
            f"saving the trained model failed ({exc}). The trained state is kept in the checkpoint {kept}: fix the "
            "cause (e.g. free disk space) and run the same command with --resume, which saves it without training "
            "further."
        ) from exc
