"""One run's frame, the same for every step (SFT, reward model, DPO, the step-3 family).

A step builds its models, data and trainer; the frame does the rest in one order: the resume point (with
the settings check), checkpoints at ``--save_interval`` and on a stop signal, the free-space check, the
final evaluation and save with signals held (a rescue checkpoint if the save fails), and ``metrics.json``.
The trainer plugs in through ``StepTrainer``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chatrlhf.training.checkpoint import CheckpointManager
from chatrlhf.training.config import LoopSettings
from chatrlhf.training.config_file import write_run_args
from chatrlhf.training.disk import checkpoint_bytes, model_bytes, require_free_space
from chatrlhf.training.loop import SaveHook, TrainResult, write_metrics
from chatrlhf.training.metrics_log import MetricsLogger, print_rank0
from chatrlhf.training.run_control import StopRequested, save_or_keep, signals_held
from chatrlhf.training.run_setup import set_seed
from chatrlhf.utils import device


class StepTrainer(Protocol):
    """What the frame asks of a step's trainer."""

    def train(self, on_save: SaveHook) -> TrainResult:
        """Train to the end (or on from a loaded state); ``on_save(step, state)`` writes a checkpoint."""

    def state_dict(self, epoch: int, next_batch: int) -> dict:
        """What a checkpoint needs to continue exactly from batch ``next_batch`` of ``epoch``."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state (the engines' weights are already loaded)."""

    def evaluate(self) -> None:
        """The final held-out evaluation, run with signals held just before the save (a no-op for a trainer
        whose ``train`` ends with its own)."""


def begin_run(seed: int) -> float:
    """Start the process group and seed every generator; returns the start time."""
    started = time.perf_counter()
    device.init_distributed()
    set_seed(seed)
    return started


@dataclass
class RunFrame:
    """The run-wide pieces the frame needs from a step."""

    loop: LoopSettings
    batches: dict[str, object]  # what decides the batches: recorded in checkpoints and checked on resume
    engines: dict[str, Any]  # tag -> DeepSpeed engine, each saved in every checkpoint
    logger: MetricsLogger
    unit: str = "step"  # what the step counts: "step" (optimizer steps) or "iteration" (step 3)

    def run(self, trainer: StepTrainer, save: Callable[[TrainResult], None], record: dict | None) -> TrainResult:
        """Resume if asked, train, then evaluate and save; ``save(result)`` writes the step's models and
        ``record`` (``config_file.run_record``) is saved beside them as the flags."""
        loop = self.loop
        manager = CheckpointManager(loop.output_dir, loop.save_total_limit, self.batches, loop.resume_ignore_settings)
        self._check_space()
        point = manager.resume_point(loop)
        if point:
            trainer.load_state_dict(manager.load(point, self.engines))
            print_rank0(f"restored {point}")

        def checkpoint(step: int, state: dict) -> None:
            path = manager.save(step, self.engines, state)
            print_rank0(f"{self.unit} {step}: checkpoint written to {path}")

        try:
            result = trainer.train(checkpoint)
        except StopRequested as stop:
            print_rank0(f"{stop}; resume with --resume")
            self.logger.close()
            raise SystemExit(stop.exit_code) from None
        with signals_held("the final evaluation and save"):
            trainer.evaluate()
            if record is not None:
                write_run_args(loop.output_dir, record)
            save_or_keep(lambda: save(result),
                         lambda: manager.save(result.steps, self.engines, trainer.state_dict(0, 0)))
        self.logger.close()
        return result

    def finish(self, result: TrainResult, summary: dict) -> None:
        """``metrics.json`` beside the models: the result and the step's ``summary``."""
        write_metrics(self.loop.output_dir, result, summary)

    def _check_space(self) -> None:
        """Refuse before training when the folder's disk cannot hold the models (and checkpoints)."""
        if not device.is_main_process():
            return
        keep = self.loop.save_interval > 0
        models = [engine.module for engine in self.engines.values()]
        need = sum(model_bytes(m) + (checkpoint_bytes(m) if keep else 0) for m in models)
        what = "model" if len(models) == 1 else "models"
        require_free_space(self.loop.output_dir, need, f"this run's {what}" + (" and checkpoints" if keep else ""))
