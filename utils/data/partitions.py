"""Each step's records: every source split 3 ways by ``--data_split``, weighted, blended and shuffled."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.records import DropReport, Record
from chatrlhf.utils.data.sources import open_source, to_records
from chatrlhf.utils.data.splitting import parse_data_split, parse_source_spec, split_indices, weighted_take


@dataclass
class SourceRecords:
    """One source's validated records before step partitioning."""

    name: str
    weight: float
    train: list[Record]
    eval: list[Record]
    report: DropReport
    sft_only: bool = False


@dataclass
class StepRecords:
    train: list[Record]
    eval: list[Record]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    reports: list[DropReport] = field(default_factory=list)


def _carve_eval(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded held-out slice for sources that ship no eval split."""
    order = np.random.RandomState(seed + 7).permutation(len(records))
    num_eval = int(round(len(records) * fraction))
    held = set(order[:num_eval].tolist())
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [records[i] for i in sorted(held)]


def load_source_records(spec: str, cfg: DataConfig, *, sft_only: bool = False) -> SourceRecords:
    """Validate one source; partitions are cut from this list so they agree across the three steps."""
    name, weight = parse_source_spec(spec)
    raw = open_source(name, seed=cfg.seed, options=cfg.source, output_path=cfg.data_output_path)
    flags = dict(skip_bad_records=cfg.skip_bad_records, strict_data=cfg.strict_data)
    train, report = to_records(raw, "train", **flags)
    has_eval = raw.get_eval_data() is not None
    if has_eval:
        evals, eval_report = to_records(raw, "eval", **flags)
        report.dropped.update(eval_report.dropped)
        report.skipped_broken += eval_report.skipped_broken
        report.examples.extend(eval_report.examples[: DropReport.MAX_EXAMPLES - len(report.examples)])
    else:
        train, evals = _carve_eval(train, cfg.eval_fraction, cfg.seed)
    return SourceRecords(name, weight, train, evals, report, sft_only)


def iter_sources(cfg: DataConfig) -> Iterator[SourceRecords]:
    for spec in cfg.data_path:
        yield load_source_records(spec, cfg)
    for spec in cfg.sft_only_data_path:
        yield load_source_records(spec, cfg, sft_only=True)


def _take(records: list[Record], step: int, fractions: list[float], weight: float, seed: int) -> list[Record]:
    part = split_indices(len(records), fractions, seed)[step - 1]
    chosen = part[weighted_take(len(part), weight, seed + step)] if len(part) else part
    return [records[i] for i in chosen]


def step_records(cfg: DataConfig, step: int, sources: list[SourceRecords] | None = None) -> StepRecords:
    """The blended train and eval records of ``step`` (1, 2 or 3)."""
    fractions = parse_data_split(cfg.data_split)
    if sources is None:
        sources = [s for s in iter_sources(cfg) if step == 1 or not s.sft_only]
    result = StepRecords([], [])
    for src in sources:
        if src.sft_only:
            if step != 1:
                continue
            train, evals = list(src.train), list(src.eval)
        else:
            train = _take(src.train, step, fractions, src.weight, cfg.seed)
            evals = _take(src.eval, step, fractions, 1.0, cfg.seed)
        if step == 2:
            train, evals = _pairs_only(train, src.report), _pairs_only(evals, src.report)
        result.train.extend(train)
        result.eval.extend(evals)
        result.counts[src.name] = (len(train), len(evals))
        result.reports.append(src.report)
    rng = np.random.RandomState(cfg.seed)
    result.train = [result.train[i] for i in rng.permutation(len(result.train))]
    return result


def _pairs_only(records: list[Record], report: DropReport) -> list[Record]:
    """Step 2 needs a rejected answer; prompt-only rows of a source are dropped and counted."""
    kept = []
    for record in records:
        if record.is_pair:
            kept.append(record)
        else:
            report.drop("prompt-only row in a pair source", record.origin)
    return kept


def corpus_texts(cfg: DataConfig) -> Iterator[str]:
    """Every text of every source (all partitions), for training a preset's tokenizer."""
    for src in iter_sources(cfg):
        for record in (*src.train, *src.eval):
            yield record.prompt + record.chosen
            if record.rejected is not None:
                yield record.prompt + record.rejected
