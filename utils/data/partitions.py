"""Each step's records: every source split 3 ways by ``--data_split``, weighted, blended and shuffled."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.records import DropReport, Record
from chatrlhf.utils.data.sources import open_source, to_records
from chatrlhf.utils.data.splitting import parse_data_split, parse_source_spec, split_indices, weighted_take
from chatrlhf.utils.data.unpaired import is_unpaired_source_row, record_label


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


def _by_prompt(records: list[Record]) -> list[list[int]]:
    """Record indices grouped by prompt (first appearance order), so duplicates always travel together."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.prompt, []).append(index)
    return list(groups.values())


def _carve_eval(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded held-out slice, by prompt, for sources that ship no eval split."""
    groups = _by_prompt(records)
    order = np.random.RandomState(seed + 7).permutation(len(groups))
    held = {i for g in order[: int(round(len(groups) * fraction))] for i in groups[g]}
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [records[i] for i in sorted(held)]


def _drop_seen(evals: list[Record], train: list[Record], report: DropReport) -> list[Record]:
    """Eval records whose prompt also appears in train would flatter the evaluation: drop and count them."""
    seen = {r.prompt for r in train}
    kept = [r for r in evals if r.prompt not in seen]
    for record in evals:
        if record.prompt in seen:
            report.drop("eval prompt also in train", record.origin)
    return kept


def load_source_records(spec: str, cfg: DataConfig, *, sft_only: bool = False, tokenizer=None) -> SourceRecords:
    """Validate one source; partitions are cut from this list so they agree across the three steps."""
    name, weight = parse_source_spec(spec)
    options = replace(cfg.source, seed=cfg.seed, skip_bad_records=cfg.skip_bad_records)
    raw = open_source(name, seed=cfg.seed, options=options, output_path=cfg.data_output_path, tokenizer=tokenizer)
    flags = dict(skip_bad_records=cfg.skip_bad_records, strict_data=cfg.strict_data)
    train, report = to_records(raw, "train", **flags)
    has_eval = raw.get_eval_data() is not None
    if has_eval:
        evals, eval_report = to_records(raw, "eval", **flags)
        report.dropped.update(eval_report.dropped)
        report.skipped_broken += eval_report.skipped_broken
        report.examples.extend(eval_report.examples[: DropReport.MAX_EXAMPLES - len(report.examples)])
        evals = _drop_seen(evals, train, report)
    else:
        train, evals = _carve_eval(train, cfg.eval_fraction, cfg.seed)
    return SourceRecords(name, weight, train, evals, report, sft_only)


def iter_sources(cfg: DataConfig, tokenizer=None) -> Iterator[SourceRecords]:
    for spec in cfg.data_path:
        yield load_source_records(spec, cfg, tokenizer=tokenizer)
    for spec in cfg.sft_only_data_path:
        yield load_source_records(spec, cfg, sft_only=True, tokenizer=tokenizer)


def _own_steps(records: list[Record], fractions: list[float], seed: int) -> list[int]:
    """Each record's step (1-3) from its source's own seeded split of its prompts."""
    groups = _by_prompt(records)
    steps = [0] * len(records)
    for step, part in enumerate(split_indices(len(groups), fractions, seed), start=1):
        for g in part:
            for i in groups[g]:
                steps[i] = step
    return steps


def _take(records: list[Record], steps: list[int], step: int, weight: float, seed: int) -> list[Record]:
    """The step's share of a source's prompts (all records of a prompt together), weighted for the blend."""
    part = [i for group in _by_prompt(records) for i in group if steps[i] == step]
    chosen = [part[i] for i in weighted_take(len(part), weight, seed + step)] if part else []
    return [records[i] for i in chosen]


def _shared_roles(sources: list[SourceRecords]) -> list[SourceRecords]:
    """Move each record to train or eval as the first source holding its prompt has it, so a prompt shared by
    two sources is never trained on by one and evaluated on by the other."""
    role: dict[str, str] = {}
    moved = []
    for src in sources:
        for name, records in (("train", src.train), ("eval", src.eval)):
            for record in records:
                role.setdefault(record.prompt, name)
        both = [*src.train, *src.eval]
        moved.append(replace(src, train=[r for r in both if role[r.prompt] == "train"],
                             eval=[r for r in both if role[r.prompt] == "eval"]))
    return moved


def _step_assignments(
    sources: list[SourceRecords], fractions: list[float], seed: int, *, shared: bool
) -> list[tuple[list[int], list[int]]]:
    """Each source's (train, eval) record steps. With ``shared``, a prompt goes to the step of the first source
    (in --data_path order, then --sft_only_data_path) that holds it, so no prompt straddles two steps; step-1-only
    sources claim step 1, and their records whose prompt another source gave to step 2 or 3 get step 0 (dropped)."""
    owner: dict[str, int] = {}
    assignments = []
    for src in sources:
        pair = []
        for records in (src.train, src.eval):
            own = [1] * len(records) if src.sft_only else _own_steps(records, fractions, seed)
            if shared:
                own = [owner.setdefault(r.prompt, s) for r, s in zip(records, own)]
                if src.sft_only:
                    own = [s if s == 1 else 0 for s in own]
            pair.append(own)
        assignments.append((pair[0], pair[1]))
    return assignments


def step_records(
    cfg: DataConfig, step: int, sources: list[SourceRecords] | None = None, tokenizer=None, *, unpaired: bool = False
) -> StepRecords:
    """The blended train and eval records of ``step`` (1, 2 or 3), from ``cfg.data_share``'s share when set.

    ``unpaired`` (step 2 for KTO): keep labelled completions as well as pairs."""
    fractions = parse_data_split(cfg.data_split)
    if sources is None:
        sources = list(iter_sources(cfg, tokenizer))
    shared = not cfg.allow_cross_step_duplicates
    if shared:
        sources = _shared_roles(sources)
    result = StepRecords([], [])
    share = cfg.data_share or step
    for src, (train_steps, eval_steps) in zip(sources, _step_assignments(sources, fractions, cfg.seed, shared=shared)):
        if src.sft_only and share != 1:
            continue
        weight = 1.0 if src.sft_only else src.weight
        train = _take(src.train, train_steps, share, weight, cfg.seed)
        evals = _take(src.eval, eval_steps, share, 1.0, cfg.seed)
        if src.sft_only:
            for record, owned in zip(src.train + src.eval, train_steps + eval_steps):
                if owned == 0:
                    src.report.drop("prompt in a later step's partition of another source", record.origin)
        if step == 1:
            train, evals = _with_response(train, src.report), _with_response(evals, src.report)
        if step == 2:
            keep = _unpaired_rows if unpaired else _pairs_only
            train, evals = keep(train, src.report), keep(evals, src.report)
        result.train.extend(train)
        result.eval.extend(evals)
        result.counts[src.name] = (len(train), len(evals))
        result.reports.append(src.report)
    if cfg.strict_data:
        refuse_drops(step, result.reports)
    rng = np.random.RandomState(cfg.seed)
    result.train = [result.train[i] for i in rng.permutation(len(result.train))]
    return result


# What to change for each drop the partitioning makes (the sources' own drops raise as they are found).
DROP_HINTS = {
    "eval prompt also in train": "remove the eval records whose prompt is also in the source's train split",
    "prompt-only row in a pair source": "give step 2 pair rows only (prompt-only rows feed step 3)",
    "prompt-only row in an SFT source": "give step 1 rows with a response (prompt-only rows feed step 3)",
    "undesirable completion in an SFT source": "give step 1 desirable completions (label true) only",
    "unpaired row in a pair source": "give the reward model and DPO pairs (labelled completions feed KTO)",
    "row without a label or a rejected answer": "give KTO pairs or prompt/completion/label rows",
    "prompt in a later step's partition of another source": (
        "pass --allow_cross_step_duplicates, or remove the shared prompts from the --sft_only_data_path source"),
}


def refuse_drops(step: int, reports: list[DropReport]) -> None:
    """``--strict_data``: any record the step would drop is an error naming each reason, its count and the fix."""
    found = [(report.source, reason, n) for report in reports for reason, n in sorted(report.dropped.items()) if n]
    if not found:
        return
    what = "; ".join(f"{source}: {reason}: {n}" for source, reason, n in found)
    fixes = sorted({DROP_HINTS[reason] for _, reason, _ in found if reason in DROP_HINTS})
    if fixes:
        hint = "To keep them, " + "; ".join(fixes) + "; or drop --strict_data to drop and count them."
    else:
        hint = "Fix the records, or drop --strict_data to drop and count them."
    raise DataError(f"--strict_data: step {step} would drop records ({what})", hint=hint)


def _pairs_only(records: list[Record], report: DropReport) -> list[Record]:
    """Step 2 needs a rejected answer; prompt-only and unpaired rows of a source are dropped and counted."""
    kept = []
    for record in records:
        if record.is_pair:
            kept.append(record)
        elif record_label(record) is not None:
            report.drop("unpaired row in a pair source", record.origin)
        else:
            report.drop("prompt-only row in a pair source", record.origin)
    return kept


def _unpaired_rows(records: list[Record], report: DropReport) -> list[Record]:
    """KTO trains on pairs and labelled completions; anything else (an SFT or prompt-only row) is dropped and
    counted, and a label that is not a boolean is an error naming the record."""
    kept = []
    for record in records:
        if is_unpaired_source_row(record):
            kept.append(record)
        else:
            report.drop("row without a label or a rejected answer", record.origin)
    return kept


def _with_response(records: list[Record], report: DropReport) -> list[Record]:
    """Step 1 learns responses: prompt-only rows (a step-3 prompt file) and completions labelled undesirable (KTO
    data) are dropped and counted."""
    kept = []
    for record in records:
        if not record.has_response:
            report.drop("prompt-only row in an SFT source", record.origin)
        elif record_label(record) is False:
            report.drop("undesirable completion in an SFT source", record.origin)
        else:
            kept.append(record)
    return kept


def corpus_texts(cfg: DataConfig) -> Iterator[str]:
    """Every text of every source (all partitions), for training a preset's tokenizer."""
    for src in iter_sources(cfg):
        for record in (*src.train, *src.eval):
            yield record.prompt + (record.chosen or "")
            if record.rejected is not None:
                yield record.prompt + record.rejected
