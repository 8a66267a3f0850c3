"""The training loop every step shares, and steps 1 and 2's trainer on it.

The loop runs over units: a micro-batch in steps 1 and 2, a generation batch in step 3. What it does
the same way everywhere lives here once: epochs, the resume path (skip the batches a checkpoint had
consumed, restore its random state), stop signals polled at step boundaries, and checkpoints every
``--save_interval`` steps and on a stop (``resumable_epochs``, ``training_session``). Steps 1 and 2 supply
a ``StepTask`` (the loss of a batch and how to evaluate) to ``Trainer``, which counts optimizer steps;
step 3's ``RLTraining.train`` counts iterations.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from chatrlhf.training.checkpoint import restore_rng
from chatrlhf.training.config import LoopSettings
from chatrlhf.training.metrics_log import MetricsLogger, Throughput, format_metrics, print_rank0, progress_bar
from chatrlhf.training.run_control import LossGuard, StopRequested, StopSignals
from chatrlhf.training.samplers import LengthGroupedSampler
from chatrlhf.utils import device
from chatrlhf.utils.host_memory import peak_resident_mib
from chatrlhf.utils.model.cpu_fast import shortcuts


class StepTask(Protocol):
    loss_is_token_nll: bool
    """True when the loss is a mean next-token log-loss, so its exponential (perplexity) means something."""

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to back-propagate and the figures to log for one micro-batch."""

    def evaluate(self, engine, batches: list[dict]) -> dict[str, float]:
        """Metrics over held-out batches (already limited to ``--eval_iters``)."""

    def count_tokens(self, batch: dict) -> tuple[int, int]:
        """Non-pad tokens and samples in a micro-batch, for the throughput line."""


@dataclass
class TrainResult:
    steps: int = 0
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    collate: Callable,
    *,
    shuffle: bool,
    seed: int,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """Each rank's batches; with ``lengths``, batches of similar length (``--group_by_length``)."""
    if lengths is not None and shuffle:
        sampler = LengthGroupedSampler(lengths, batch_size, num_replicas=device.world_size(), rank=device.rank(),
                                       seed=seed)
    else:
        sampler = DistributedSampler(
            dataset, num_replicas=device.world_size(), rank=device.rank(), shuffle=shuffle, seed=seed, drop_last=False
        )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def to_device(batch: dict, target: torch.device) -> dict:
    return {k: v.to(target) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def resumable_epochs(loader: DataLoader, num_epochs: int,
                     resumed: dict | None) -> Iterator[tuple[int, Iterator[tuple[int, dict]]]]:
    """Each epoch's numbered batches, from where the checkpoint ``resumed`` left off: the batches it had consumed
    are skipped and its random state restored, so a resumed run draws the numbers an uninterrupted one draws."""
    start_epoch, skip = (resumed["epoch"], resumed["next_batch"]) if resumed else (0, 0)
    for epoch in range(start_epoch, num_epochs):
        loader.sampler.set_epoch(epoch)
        batches = iter(loader)
        first = 0
        if resumed is not None and epoch == start_epoch:
            for _ in itertools.islice(batches, skip):
                pass
            restore_rng(resumed["rng"])
            first = skip
        yield epoch, enumerate(batches, start=first)


SaveHook = Callable[[int, dict], None]


@dataclass
class StepEnd:
    """What follows every step (an optimizer step, or a step-3 iteration): a checkpoint every ``save_interval``
    steps and when a stop signal came (``state`` builds what it holds), then the stop."""

    save_interval: int
    on_save: SaveHook | None
    signals: StopSignals

    def __call__(self, step: int, state: Callable[[], dict]) -> None:
        stop = self.signals.requested()
        if self.on_save is not None and (stop or (self.save_interval and step % self.save_interval == 0)):
            self.on_save(step, state())
        if stop:
            raise StopRequested(stop, step)


@contextmanager
def training_session(total: int, done: int, name: str, save_interval: int, on_save: SaveHook | None):
    """A progress bar from ``done`` of ``total`` steps and a ``StepEnd``, with stop signals caught meanwhile."""
    bar = progress_bar(total, name)
    bar.update(done)
    signals = StopSignals()
    signals.install()
    try:
        yield bar, StepEnd(save_interval, on_save, signals)
    finally:
        signals.uninstall()
        bar.close()


def optimizer_steps_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    return max(num_batches // gradient_accumulation_steps, 1)


def total_optimizer_steps(num_batches: int, gradient_accumulation_steps: int, loop: LoopSettings) -> int:
    per_epoch = optimizer_steps_per_epoch(num_batches, gradient_accumulation_steps)
    total = per_epoch * loop.num_train_epochs
    return min(total, loop.max_steps) if loop.max_steps > 0 else total


class Trainer:
    """Runs ``task`` on ``engine`` over the train loader, evaluating and logging as ``loop`` says."""

    def __init__(
        self,
        engine,
        task: StepTask,
        train_loader: DataLoader,
        eval_loader: DataLoader,
        loop: LoopSettings,
        logger: MetricsLogger,
        num_params: int,
    ) -> None:
        self.engine = engine
        self.task = task
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.loop = loop
        self.logger = logger
        self.throughput = Throughput(num_params)
        self.target = device.local_device()
        self.result = TrainResult()
        self.guard = LossGuard(loop.max_bad_steps)
        self.resumed: dict | None = None
        self.total_steps = total_optimizer_steps(len(train_loader), engine.gradient_accumulation_steps(), loop)

    def evaluate_at(self, label: str) -> dict[str, float]:
        """Held-out loss and the task's metrics, logged and kept in the result under ``label``."""
        batches = []
        for index, batch in enumerate(self.eval_loader):
            if self.loop.eval_iters and index >= self.loop.eval_iters:
                break
            batches.append(to_device(batch, self.target))
        self.engine.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(self.engine, batches)
        self.engine.train()
        metrics = {k: _mean_over_ranks(v) for k, v in metrics.items()}
        print_rank0(f"[eval {label}] step {self.result.steps}: {format_metrics(metrics)}")
        self.logger.scalars("eval", metrics, self.result.steps)
        self.result.evals.append({"step": self.result.steps, "label": label, **metrics})
        return metrics

    def state_dict(self, epoch: int, next_batch: int) -> dict:
        """What a checkpoint needs to continue exactly from here."""
        return {"epoch": epoch, "next_batch": next_batch, "steps": self.result.steps,
                "history": self.result.history, "evals": self.result.evals, "skipped_batches": self.guard.total}

    def load_state_dict(self, state: dict) -> None:
        self.result.steps = state["steps"]
        self.result.history = list(state["history"])
        self.result.evals = list(state["evals"])
        self.guard.total = state.get("skipped_batches", 0)
        self.resumed = state

    def evaluate(self) -> None:
        """Nothing more: ``train`` ends with its last epoch's evaluation."""

    def train(self, on_save: SaveHook | None = None) -> TrainResult:
        """Train to the end; ``on_save(step, state)`` writes a checkpoint (every ``--save_interval`` and on a stop)."""
        if self.resumed is None:
            self.evaluate_at("start")
        else:
            print_rank0(f"resuming at step {self.result.steps} (epoch {self.resumed['epoch']}, batch "
                        f"{self.resumed['next_batch']})")
        self.engine.train()
        with training_session(self.total_steps, self.result.steps, "train", self.loop.save_interval,
                              on_save) as (bar, step_end):
            self._epochs(bar, step_end)
        return self.result

    def _epochs(self, bar, step_end: StepEnd) -> None:
        window: dict[str, list[float]] = {}
        if self.result.steps >= self.total_steps:
            self.evaluate_at(f"epoch {self.resumed['epoch'] + 1 if self.resumed else 1}")
            return
        for epoch, batches in resumable_epochs(self.train_loader, self.loop.num_train_epochs, self.resumed):
            for index, batch in batches:
                batch = to_device(batch, self.target)
                loss, stats = self.task.loss(self.engine, batch)
                if not self.guard.check(loss, self.result.steps):
                    print_rank0(f"step {self.result.steps + 1}: non-finite loss, batch skipped "
                                f"({self.guard.total} so far)")
                    continue
                self.engine.backward(loss)
                self.engine.step()
                tokens, samples = self.task.count_tokens(batch)
                self.throughput.add(tokens, samples)
                for key, value in {"loss": float(loss.detach()), **stats}.items():
                    window.setdefault(key, []).append(value)
                if not self.engine.is_gradient_accumulation_boundary():
                    continue
                self.result.steps += 1
                bar.update(1)
                step = self.result.steps
                if self.loop.print_loss:
                    print_rank0(f"epoch {epoch} step {step} loss {float(loss.detach()):.4f}")
                if step % self.loop.log_interval == 0 or step == self.total_steps:
                    self._log(window, epoch)
                    window = {}
                if self.loop.eval_interval and step % self.loop.eval_interval == 0:
                    self.evaluate_at(f"step {step}")
                step_end(step, lambda: self.state_dict(epoch, index + 1))  # noqa: B023 - called before the next batch
                if step >= self.total_steps:
                    if window:
                        self._log(window, epoch)
                    self.evaluate_at(f"epoch {epoch + 1}")
                    return
            if window:
                self._log(window, epoch)
                window = {}
            self.evaluate_at(f"epoch {epoch + 1}")

    def _log(self, window: dict[str, list[float]], epoch: int) -> None:
        values = {k: _mean_over_ranks(sum(v) / len(v)) for k, v in window.items()}
        values["lr"] = float(self.engine.get_lr()[0])
        values["window_tokens"] = float(self.throughput.tokens * device.world_size())
        values["clock"] = time.perf_counter()
        values.update(self.throughput.report())
        if "loss" in values and self.task.loss_is_token_nll:
            values["perplexity"] = math.exp(min(values["loss"], 50.0))
        self.logger.scalars("train", values, self.result.steps)
        self.result.history.append({"step": self.result.steps, "epoch": epoch, **values})
        print_rank0(f"[train] epoch {epoch} step {self.result.steps}/{self.total_steps}: {format_metrics(values)}")


def _mean_over_ranks(value: float) -> float:
    total = device.all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64))
    return float(total.item() / device.world_size())


def write_metrics(output_dir: str, result: TrainResult, extra: dict | None = None) -> None:
    """``metrics.json`` beside the model: the logged history and evaluations, for reports.

    It also records this process's peak resident memory, so a run's real footprint can be set against
    ``chatrlhf memory``'s estimate, and which speed shortcuts ran (``shortcuts``).
    """
    if not device.is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    peak_rss_mib = peak_resident_mib()
    payload = {"steps": result.steps, "history": result.history, "evals": result.evals,
               "peak_rss_mib": round(peak_rss_mib, 1), "shortcuts": shortcuts.report(), **(extra or {})}
    tmp = os.path.join(output_dir, ".metrics.json.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(tmp, os.path.join(output_dir, "metrics.json"))
