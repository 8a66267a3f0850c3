"""The ``README.md`` model card every saved model carries, in Hugging Face's format.

A folder found months later should say what it is: the model it started from, the step and loss that made it,
the exact command, the data, and how it did. Each step fills a ``ModelCard`` from what its run already records
(the evaluations and history ``metrics.json`` gets); this module alone turns one into Markdown. A figure a run
did not compute is left out, never an error: the card must not fail a save.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from chatrlhf.training.config_file import ARGS_FILE
from chatrlhf.utils.data.splitting import parse_source_spec

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
STEP_SHARES = {1: "first", 2: "second", 3: "third"}


@dataclass(frozen=True)
class Result:
    """One row of the card's results table: a metric before and after training (None: not measured)."""

    label: str
    start: float | None
    end: float | None


@dataclass
class ModelCard:
    """What a saved model's card says; ``None`` values and empty results are simply not shown."""

    tags: tuple[str, ...]  # after "chatrlhf": the step's kind (sft, reward-model, dpo, rlhf), then e.g. the algorithm
    title: str
    method: str  # how the model was trained, in a sentence or two
    base_model: str
    step: int  # whose share of --data_split the model trained on
    sources: tuple[str, ...]  # --data_path as given (NAME or NAME:WEIGHT)
    data_split: str
    sft_only_sources: tuple[str, ...] = ()
    extra_datasets: tuple[str, ...] = ()  # other data the run read, e.g. step 3's unsupervised dataset
    settings: dict[str, object] = field(default_factory=dict)
    training: dict[str, object] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    run_dir: str | None = None  # the run's output folder, when the model is saved in a subfolder of it
    command: str = field(default_factory=lambda: shlex.join(sys.argv))


def eval_results(evals: list[dict], labels: Mapping[str, str]) -> list[Result]:
    """The first and the last evaluation of a run, for the metrics ``labels`` names (key -> label)."""
    if not evals:
        return []
    start, end = evals[0], evals[-1]
    return [Result(label, _number(start.get(key)), _number(end.get(key))) for key, label in labels.items()]


def last_values(history: list[dict], labels: Mapping[str, str], suffix: str = "") -> list[Result]:
    """Figures of the last logged training window (no start value: the first window is already trained)."""
    if not history:
        return []
    return [Result(label + suffix, None, _number(history[-1].get(key))) for key, label in labels.items()]


def tokens_seen(history: list[dict]) -> int | None:
    """Tokens trained on, summed over the logged windows (None when the loop did not count them)."""
    counts = [entry.get("window_tokens") for entry in history]
    return int(sum(counts)) if counts and all(isinstance(c, int | float) for c in counts) else None


def dataset_names(card: ModelCard) -> list[str]:
    """The sources without their blend weights, each once."""
    names = [parse_source_spec(spec)[0] for spec in (*card.sources, *card.sft_only_sources)]
    return list(dict.fromkeys([*names, *card.extra_datasets]))


def render(card: ModelCard, *, args_file: str | None = None, metrics_file: str = METRICS_FILE) -> str:
    """The card as Markdown with YAML front matter; ``args_file`` and ``metrics_file`` are links relative to it."""
    lines = ["---", f"base_model: {_yaml(card.base_model)}", "datasets:"]
    lines += [f"- {_yaml(name)}" for name in dataset_names(card)]
    lines += [f"library_name: {_yaml('transformers')}", "tags:"]
    lines += [*(f"- {_yaml(tag)}" for tag in ("chatrlhf", *card.tags)), "---"]
    lines += ["", f"# {card.title}", "", card.method, "", "## How it was made", "",
              f"Fine-tuned from `{card.base_model}` with chatrlhf by:", "", "```bash", card.command, "```", ""]
    lines += _table(("setting", "value"), ((name, _value(value)) for name, value in card.settings.items()
                                            if value is not None))
    if args_file:
        lines += [f"Every resolved argument is in [`{os.path.basename(args_file)}`]({args_file}).", ""]
    lines += ["## Data", "", "- Sources (`--data_path`): " + ", ".join(f"`{s}`" for s in card.sources)]
    if card.sft_only_sources:
        lines.append("- Used whole by this step (`--sft_only_data_path`): "
                     + ", ".join(f"`{s}`" for s in card.sft_only_sources))
    share = STEP_SHARES.get(card.step)
    lines.append(f"- `--data_split {card.data_split}`" + (f": this step trained on the {share} share of each "
                                                           "source" if share else ""))
    lines += ["", "## Training", ""]
    lines += [f"- {name}: {value:,}" if isinstance(value, int) else f"- {name}: {_value(value)}"
              for name, value in card.training.items() if value is not None]
    rows = [(r.label, _value(r.start), _value(r.end)) for r in card.results if r.end is not None]
    if rows:
        lines += ["", "## Results", "", *_table(("metric", "start", "end"), rows)[:-1]]
    lines += ["", f"The logged history and every evaluation are in [`{METRICS_FILE}`]({metrics_file}).", ""]
    return "\n".join(lines)


def write_card(card: ModelCard, folder: str, target: str) -> None:
    """Write ``card`` into ``folder``, the staging folder of a model being saved to ``target``."""
    run_dir = card.run_dir or target
    text = render(card, args_file=_args_link(folder, target, run_dir),
                  metrics_file=os.path.relpath(os.path.join(run_dir, METRICS_FILE), target))
    with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as handle:
        handle.write(text)


def _args_link(folder: str, target: str, run_dir: str) -> str | None:
    """Where the run's resolved arguments are, relative to ``target``: saved with the model, already beside
    it, or in the run's folder."""
    for where in (folder, target, run_dir):
        if os.path.isfile(os.path.join(where, ARGS_FILE)):
            return os.path.relpath(os.path.join(target if where == folder else where, ARGS_FILE), target)
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _yaml(text: str) -> str:
    """A YAML scalar that stays a string whatever it holds (JSON strings are YAML)."""
    return json.dumps(str(text))


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]
