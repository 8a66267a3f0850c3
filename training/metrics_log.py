"""Console and TensorBoard logging, and the throughput line (tokens/s, samples/s, TFLOP/s)."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from chatrlhf.utils import device


def print_rank0(*args: object) -> None:
    """A line on the console from rank 0, written above any live progress bar rather than through it."""
    if device.is_main_process():
        from tqdm import tqdm

        tqdm.write(" ".join(str(arg) for arg in args), file=sys.stdout)
        sys.stdout.flush()


def console_is_tty() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str):
    """A progress bar on a terminal only: redirected output gets the metric lines and no carriage-return frames."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True,
                disable=not (device.is_main_process() and console_is_tty()))


def quiet_library_bars() -> None:
    """The progress bars of datasets and transformers (loading, mapping, saving) off unless on a terminal."""
    if console_is_tty():
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


class MetricsLogger:
    """Scalars to TensorBoard (rank 0, when enabled) and a compact line to the console."""

    def __init__(self, enabled: bool, log_dir: str, job_name: str) -> None:
        self.writer = None
        if enabled and device.is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(log_dir, job_name))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


EMPTY_EVAL_NOTICE = (
    "eval: the held-out set is empty, so no eval metrics are reported (not a loss of 0). Give a source an eval "
    "split or more records (a source without one holds out 10% of its prompts), and see the data report above for "
    "what was dropped.")


def report_empty_eval() -> dict[str, float]:
    """Say that there was nothing to evaluate, and return no metrics: an average over no samples is not 0."""
    print_rank0(EMPTY_EVAL_NOTICE)
    return {}


def format_metrics(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


@dataclass
class Throughput:
    """Tokens and samples since the last report, and the FLOP rate at 6 FLOPs per parameter per token."""

    num_params: int
    tokens: int = 0
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, tokens: int, samples: int) -> None:
        self.tokens += tokens
        self.samples += samples

    def report(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        world = device.world_size()
        figures = {
            "tokens_per_s": self.tokens * world / elapsed,
            "samples_per_s": self.samples * world / elapsed,
            "tflops": 6 * self.num_params * self.tokens * world / elapsed / 1e12,
        }
        self.tokens, self.samples, self.started = 0, 0, time.perf_counter()
        return figures

