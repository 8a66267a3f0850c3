"""Stopping a run cleanly: SIGTERM and Ctrl-C finish the current step, write a checkpoint, and exit.

Also the health guard: non-finite losses are skipped and counted, and too many in a row stop the run.
"""
from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field

import torch

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
        value = float(loss.detach())
        if math.isfinite(value):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.max_bad_steps:
            raise TrainingHealthError(
                f"the loss was {value} for {self.in_a_row} batches in a row (last at step {step + 1}); the run "
                "stopped. Likely causes: a learning rate too high for this model, fp16 overflow (try bf16 or "
                "fp32, or a lower --learning_rate), or corrupt data. The last checkpoint and the previous model "
                "are untouched; resume with --resume after changing the settings."
            )
        return False
