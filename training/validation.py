"""Checks that run before any model loads, and the one place that turns user errors into clean exits.

Every failure names what is wrong, where (flag, file, line) and what to change; the CLI prints it
without a traceback and exits non-zero, and nothing the user had is touched.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.splitting import parse_data_split, parse_source_spec

PATH_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".csv", ".parquet", ".txt")


class ConfigError(ValueError):
    """Flags that cannot work together or point nowhere; raised before any model loads."""


def looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith(PATH_SUFFIXES)


def check_data_flags(data_path: tuple[str, ...], sft_only: tuple[str, ...], data_split: str) -> None:
    """``--data_split`` format and that every local source exists."""
    parse_data_split(data_split)
    for flag, specs in (("--data_path", data_path), ("--sft_only_data_path", sft_only)):
        for spec in specs:
            name, _ = parse_source_spec(spec)
            if looks_like_path(name) and not os.path.exists(os.path.expanduser(name)):
                raise DataError(f"{flag} {name}: no such file or folder", hint="Check the path.")


def check_model_path(flag: str, value: str) -> None:
    from chatrlhf.utils.model.presets import is_preset

    if not is_preset(value) and looks_like_path(value) and not os.path.isdir(os.path.expanduser(value)):
        raise ConfigError(f"{flag} {value}: no such model directory; give a trained model folder, a hub name, or "
                          "a preset (tiny-opt, tiny-llama, smollm2-135m)")


def model_positions(value: str) -> int | None:
    """The number of positions of a local model or preset (None when only the hub could say)."""
    from chatrlhf.utils.model.presets import is_preset, preset_config

    if is_preset(value):
        return getattr(preset_config(value), "max_position_embeddings", None)
    config_file = os.path.join(os.path.expanduser(value), "config.json")
    if not os.path.isfile(config_file):
        return None
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(os.path.dirname(config_file)), "max_position_embeddings", None)


def check_length(flag_text: str, total: int, model: str) -> None:
    limit = model_positions(model)
    if limit is not None and total > limit:
        raise ConfigError(f"{flag_text} = {total} exceeds the {limit} positions of {model}; lower it to {limit}")


def user_errors() -> tuple[type[BaseException], ...]:
    from chatrlhf.training.checkpoint import CheckpointError
    from chatrlhf.training.disk import DiskSpaceError
    from chatrlhf.training.run_control import FinalSaveError, TrainingHealthError
    from chatrlhf.training.run_setup import OutputDirError
    from chatrlhf.utils.model.loading import ModelLoadError
    from chatrlhf.utils.model.smollm2 import MissingSmolLM2Error

    return (DataError, ConfigError, OutputDirError, CheckpointError, TrainingHealthError, MissingSmolLM2Error,
            ModelLoadError, DiskSpaceError, FinalSaveError)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command; a user error is printed as ``prog: error: ...`` (no traceback) with exit code 2."""
    from chatrlhf.training.metrics_log import quiet_library_bars
    from chatrlhf.training.run_setup import release_locks

    quiet_library_bars()
    try:
        return body()
    except user_errors() as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        release_locks()


def run_step_command(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                     settings: Callable[[argparse.Namespace], object],
                     inert: tuple[str, ...] | Callable[[argparse.Namespace], tuple[str, ...]]) -> int:
    """A training step's ``main``: parse ``argv`` (once), one notice per flag in ``inert`` (or in what it gives
    for the parsed flags) that changes nothing here, then build the run from the flags (``settings``) and run
    it, saving the flags and command line with it."""
    from chatrlhf.training.compat_flags import notify_inert_flags
    from chatrlhf.training.config_file import run_record

    args = parser.parse_args(argv)
    notify_inert_flags(parser, args, inert(args) if callable(inert) else inert)

    def body() -> int:
        settings(args).run(run_record(args, argv))
        return 0

    return run_cli(prog, body)
