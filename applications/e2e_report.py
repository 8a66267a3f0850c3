"""``report.md`` of an end-to-end run: wall times, each step's final metrics, training curves, a model comparison.

The figures come from each step's ``metrics.json``. The curves are drawn from the TensorBoard event files the
steps wrote, so the report shows what TensorBoard would. The comparison generates with the base, step-1,
likelihood-only ablation and DPO models (those that ran) and every step-3 model of the actor (one per algorithm
that ran) on held-out ``synthetic/tasks`` prompts, greedy and sampled, scored by the task checker and the step-2
reward model, beside the demonstrators' own answers; a second table asks the word tasks of words outside
``words.txt``, so a gain that is only memorised words shows there.
Sections whose step has no output yet are left out, so a partial run still gets a report.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from chatrlhf.step3_rlhf import algorithms

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
STEP_NAMES = {1: "SFT", 2: "reward model", 3: "PPO"}
# TensorBoard's default smoothing weight, so the noisy PPO curves read as they do there.
SMOOTHING = 0.6
LAST_ITERATIONS = 10
RL_CURVES = (("reward_mean", "reward", "reward"), ("accuracy", "checker accuracy (sampled)", "accuracy"),
             ("kl_to_ref", "KL to reference", "kl"), ("answer_length", "answer length (tokens)", "answer_length"))
# Online DPO's figures of its best-over-worst pairs: table rows of its section (absent from the other algorithms').
PREFERENCE_ROWS = (("dpo_loss", "DPO loss"), ("dpo_reward_accuracy", "DPO reward accuracy"),
                   ("dpo_reward_margin", "DPO reward margin"), ("dpo_pair_share", "share of prompts with a pair"))

Series = dict[str, list[tuple[int, float]]]


@dataclass(frozen=True)
class ReportInputs:
    """Where the steps wrote their outputs, what the run was, and how large the comparison is."""

    output_dir: Path
    step_dirs: dict[int, Path]
    base_model: str
    timings: dict[str, dict] = field(default_factory=dict)  # by step output folder
    settings: dict[str, str] = field(default_factory=dict)
    synthetic: int = 200
    examples: int = 5
    max_new_tokens: int = 64
    seed: int = 1234  # the run's data seed: the held-out prompts are the head of its eval stream
    sampled: int = 8  # answers sampled per prompt for pass@1
    rl_dirs: dict[str, Path] = field(default_factory=dict)  # algorithm -> step-3 folder, for the comparison
    dpo_dir: Path | None = None  # the DPO output of the actor (``--step2-method dpo``)
    # The step-1 model trained further on the step-2 pairs' chosen answers (likelihood only), by the method (dpo, ppo,
    # grpo, ...) whose number of updates it matches, for the comparison.
    ablation_dirs: dict[str, Path] = field(default_factory=dict)


DEMONSTRATORS_LABEL = "demonstrators (step 1's data)"


def ablation_label(method: str) -> str:
    return f"ablation: step 1 + chosen answers ({algorithm_name(method)}'s updates)"


def step1_data_paths(step1_dir: Path) -> list[str]:
    """The ``--data_path`` step 1 trained on, from its saved flags (empty when it did not save them)."""
    from chatrlhf.training.config_file import ARGS_FILE

    try:
        return list(json.loads((step1_dir / ARGS_FILE).read_text())["args"]["data_path"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def algorithm_name(method: str) -> str:
    """A step-3 algorithm's display name (REINFORCE++), or another method's name in capitals (DPO)."""
    known = algorithms.REGISTRY.get(method)
    return known.display_name if known is not None else method.upper()


def read_metrics(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the newest event file in each folder below ``folder``: a re-run leaves older files behind."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    newest: dict[Path, Path] = {}
    for file in folder.rglob("events.out.tfevents.*"):
        current = newest.get(file.parent)
        if current is None or file.stat().st_mtime >= current.stat().st_mtime:
            newest[file.parent] = file
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in sorted(newest.values()):
        accumulator = EventAccumulator(str(file), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return scalars


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    smoothed, last = [], 0.0
    for count, value in enumerate(values, 1):
        last = last * weight + (1 - weight) * value
        smoothed.append(last / (1 - weight**count))
    return smoothed


def draw(path: Path, title: str, ylabel: str, series: Series, *, xlabel: str = "step", log_scale: bool = False,
         smoothed: bool = False, secondary: frozenset[str] = frozenset()) -> bool:
    """One PNG of ``series`` (label → points), written atomically; False when there is nothing to draw.

    ``secondary`` series (breakdowns of a main one) are drawn thin and dashed so the main curves stand out.
    """
    lines = {label: points for label, points in series.items() if points}
    if not lines:
        return False
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    for label, points in lines.items():
        steps, values = zip(*points)
        marker = "o" if len(values) <= 20 else None
        if smoothed and len(values) > 2:
            (raw,) = axes.plot(steps, values, alpha=0.3, label=f"{label} (raw)")
            axes.plot(steps, smooth(list(values)), color=raw.get_color(), label=f"{label} (smoothed)")
        elif label in secondary:
            axes.plot(steps, values, linestyle="--", linewidth=1, alpha=0.7, label=label)
        else:
            axes.plot(steps, values, marker=marker, linewidth=2, label=label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if log_scale:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _images(plots: list[tuple[str, str]]) -> list[str]:
    return [" ".join(f"![{alt}]({PLOTS_DIR}/{name})" for alt, name in plots), ""] if plots else []


class ReportWriter:
    """Builds the report's sections one step at a time, drawing each step's plots as it goes."""

    def __init__(self, inputs: ReportInputs) -> None:
        self.inputs = inputs
        self.plots_dir = inputs.output_dir / PLOTS_DIR

    def relative(self, folder: Path) -> str:
        try:
            return str(folder.relative_to(self.inputs.output_dir))
        except ValueError:
            return str(folder)

    def header(self) -> list[str]:
        when = datetime.datetime.now().isoformat(timespec="seconds")
        lines = ["# chatrlhf end-to-end run", "", f"Output folder `{self.inputs.output_dir}`, written {when}.", ""]
        lines += _table(["setting", "value"], [[k, f"`{v}`"] for k, v in self.inputs.settings.items()])
        return [*lines, ""]

    def _step_outputs(self) -> list[tuple[str, Path]]:
        """Each step's output folder with its label, DPO beside the reward model."""
        outputs = [(f"{step} ({STEP_NAMES[step]})", self.inputs.step_dirs[step]) for step in (1, 2, 3)]
        if self.inputs.dpo_dir is not None:
            outputs.insert(2, ("2 (DPO)", self.inputs.dpo_dir))
        outputs += [(f"ablation ({algorithm_name(method)}'s updates)", folder)
                    for method, folder in self.inputs.ablation_dirs.items()]
        return outputs

    def wall_times(self, report_seconds: float) -> list[str]:
        rows, total = [], 0.0
        for label, folder in self._step_outputs():
            timing = self.inputs.timings.get(str(folder), {})
            metrics = read_metrics(folder) or {}
            seconds = timing.get("wall_time_s")
            if seconds is None and not metrics:
                continue
            if timing.get("status") == "ok":
                total += seconds
            rows.append([label, f"`{self.relative(folder)}`", _duration(seconds), _duration(metrics.get("wall_time_s")),
                         timing.get("status", "not timed")])
        if not rows:
            return []
        rows.append(["report", f"`{REPORT_FILE}`, `{PLOTS_DIR}/`", _duration(report_seconds), "", "ok"])
        rows.append(["total", "", f"**{_duration(total + report_seconds)}**", "", ""])
        lines = ["## Wall time", "",
                 "Runner time per step (script start to exit: launcher, imports, data, training, evaluation, "
                 "saving); the training process's own time is from the step's `metrics.json`. The report's time "
                 "is mostly the model comparison.", ""]
        lines += _table(["step", "output", "wall time", "training process", "status"], rows)
        return [*lines, ""]

    def imperfect_data(self) -> bool:
        """Whether step 1 learnt from ``synthetic/tasks``' imperfect demonstrators (alone)."""
        from chatrlhf.utils.data.synthetic_tasks import IMPERFECT_NAME

        return step1_data_paths(self.inputs.step_dirs[1]) == [IMPERFECT_NAME]

    def data(self) -> list[str]:
        """The data card of the imperfect set, when step 1 learnt from it."""
        if not self.imperfect_data():
            return []
        from chatrlhf.utils.data.synthetic_tasks import data_card

        return ["## Data: `synthetic/tasks`, imperfect demonstrators", "",
                "Step 1 imitates demonstrations that carry one typical slip per task at these rates; each step-2 "
                "pair's chosen answer is such a demonstration and its rejected answer has one more mistake. "
                "Imitation alone reaches the demonstrators; only the comparisons say which answers are better "
                "(`synthetic/tasks-perfect` is the set whose demonstrations are all right).", "",
                *[f"- {line}" for line in data_card()], ""]

    def step1(self) -> list[str]:
        folder = self.inputs.step_dirs[1]
        metrics = read_metrics(folder)
        if metrics is None:
            return []
        evals = metrics.get("evals") or [{}]
        start, end = evals[0], evals[-1]
        lines = ["## Step 1: supervised fine-tuning", "",
                 f"`{self.relative(folder)}`: {metrics.get('steps', 0)} optimizer steps. Held-out evaluation:", ""]
        lines += _table(["held-out", "start", "end"], [["loss", _num(start.get("loss")), _num(end.get("loss"))],
                                                      ["perplexity", _num(start.get("perplexity")),
                                                       _num(end.get("perplexity"))]])
        history = metrics.get("history") or []
        if history:
            last = history[-1]
            lines += ["", f"Last logged train loss {_num(last.get('loss'))} (perplexity {_num(last.get('perplexity'))})"
                          f" at step {last.get('step')}."]
        scalars = read_scalars(folder)
        plots = []
        for key, ylabel, name, log_scale in (("loss", "loss", "step1_loss.png", False),
                                             ("perplexity", "perplexity", "step1_perplexity.png", True)):
            series = {"train": scalars.get(f"train/{key}", []), "held-out": scalars.get(f"eval/{key}", [])}
            if draw(self.plots_dir / name, f"Step 1 (SFT): {key}", ylabel, series, xlabel="optimizer step",
                    log_scale=log_scale):
                plots.append((f"step 1 {key}", name))
        return [*lines, "", *_images(plots)]

    def step2(self) -> list[str]:
        folder = self.inputs.step_dirs[2]
        metrics = read_metrics(folder)
        if metrics is None:
            return []
        intro = (f"`{self.relative(folder)}`: {metrics.get('steps', 0)} optimizer steps. Held-out pairs (chosen "
                 "scored above rejected):")
        return self._pair_section(metrics, folder, "reward model", intro, "accuracy",
                                  ("chosen_score", "rejected_score", "margin", "loss"), "step2_accuracy.png")

    def dpo(self) -> list[str]:
        folder = self.inputs.dpo_dir
        metrics = read_metrics(folder) if folder is not None else None
        if metrics is None:
            return []
        settings = metrics.get("dpo") or {}
        intro = (f"`{self.relative(folder)}`: {metrics.get('steps', 0)} optimizer steps of the "
                 f"`{settings.get('loss_type', '?')}` loss, beta {settings.get('beta', '?')}, reference: "
                 f"{settings.get('reference', '?')}. Held-out pairs (chosen rewarded above rejected; the reward is "
                 "beta x the policy's log-prob of the answer over the reference's):")
        return self._pair_section(metrics, folder, "DPO", intro, "reward_accuracy",
                                  ("reward_margin", "chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp",
                                   "loss"), "step2_dpo_accuracy.png")

    def _pair_section(self, metrics: dict, folder: Path, method: str, intro: str, accuracy: str,
                      figures: tuple[str, ...], plot: str) -> list[str]:
        """A step-2 section (``method``: reward model or DPO): held-out pair accuracy and figures at start and end,
        per task and mistake, and the accuracy curves."""
        evals = metrics.get("evals") or [{}]
        start, end = evals[0], evals[-1]
        lines = [f"## Step 2: {method}", "", intro, ""]
        rows = [[accuracy.replace("_", " "), _pct(start.get(accuracy)), _pct(end.get(accuracy))]]
        rows += [[name.replace("_", " "), _num(start.get(name)), _num(end.get(name))]
                 for name in figures if name in end]
        lines += _table(["held-out", "start", "end"], rows)
        for prefix, kind in (("acc_task_", "task"), ("acc_mistake_", "mistake")):
            keys = sorted(k for k in end if k.startswith(prefix))
            if keys:
                lines += ["", f"Accuracy per {kind}:", ""]
                lines += _table([kind, "start", "end"],
                                [[k.removeprefix(prefix), _pct(start.get(k)), _pct(end[k])] for k in keys])
        scalars = read_scalars(folder)
        series = {"train": scalars.get(f"train/{accuracy}", []), "held-out": scalars.get(f"eval/{accuracy}", [])}
        per_task = {f"held-out {tag.removeprefix('eval/acc_task_')}": points for tag, points in sorted(scalars.items())
                    if tag.startswith("eval/acc_task_")}
        plots = []
        if draw(self.plots_dir / plot, f"Step 2 ({method}): pair accuracy", "accuracy", {**series, **per_task},
                xlabel="optimizer step", secondary=frozenset(per_task)):
            plots.append((f"step 2 {method} accuracy", plot))
        return [*lines, "", *_images(plots)]

    def step3(self) -> list[str]:
        """One section per step-3 run of the actor (one per algorithm), with its curves."""
        runs = self.inputs.rl_dirs or {algorithms.DEFAULT: self.inputs.step_dirs[3]}
        return [line for algorithm, folder in runs.items() for line in self._rl_run(algorithm, folder)]

    def _rl_run(self, algorithm: str, folder: Path) -> list[str]:
        metrics = read_metrics(folder)
        if metrics is None:
            return []
        name = algorithm_name(algorithm)
        history = metrics.get("history") or []
        dpo = metrics.get("dpo")
        control = (f"DPO loss `{dpo.get('loss_type', '?')}`, beta {dpo.get('beta', '?')}" if dpo
                   else f"final KL coefficient {_num(metrics.get('kl_coef'))}")
        lines = [f"## Step 3: {name}", "",
                 f"`{self.relative(folder)}`: {metrics.get('iterations', metrics.get('steps', 0))} {name} iterations, "
                 f"{control}.", ""]
        if history:
            recent = history[-LAST_ITERATIONS:]
            rows = []
            for key, label in (*((key, label) for key, label, _ in RL_CURVES), *PREFERENCE_ROWS):
                values = [h[key] for h in recent if key in h]
                if not values and key not in history[0]:
                    continue
                rows.append([label, _num(history[0].get(key)), _num(sum(values) / len(values) if values else None),
                             _num(history[-1].get(key))])
            for key in sorted(k for k in history[0] if k == "reward_model_mean" or k.startswith("reward_fn_mean")):
                values = [h[key] for h in recent if key in h]
                label = ("reward model score" if key == "reward_model_mean"
                         else f"function {key.partition('/')[2] or 'reward'} value")
                rows.append([label, _num(history[0][key]), _num(sum(values) / len(values) if values else None),
                             _num(history[-1].get(key))])
            lines += ["Sampled rollouts during training:", ""]
            lines += _table(["metric", "first iteration", f"mean of last {len(recent)}", "last iteration"], rows)
        held_out = metrics.get("held_out") or {}
        start, end = held_out.get("start") or {}, held_out.get("end") or {}
        if start or end:
            tasks = sorted(k for k in {**start, **end} if k.startswith("accuracy_") and k != "accuracy_overall")
            rows = []
            for key in ["mean_reward", "accuracy_overall", *tasks, "sampled_mean_reward", "sampled_accuracy_overall"]:
                if key not in start and key not in end:
                    continue
                fmt = _pct if "accuracy_" in key else _num
                before, after = start.get(key), end.get(key)
                change = "-" if before is None or after is None else (
                    f"{100 * (after - before):+.1f} pt" if fmt is _pct else f"{after - before:+.4g}")
                rows.append([key.replace("accuracy_", "checker accuracy ").replace("_", " "), fmt(before), fmt(after),
                             change])
            lines += ["", f"The run's own held-out prompts before and after {name}, greedy answers (the `sampled` "
                          f"rows: {metrics.get('eval_samples', 4)} answers a prompt at the training temperature, the "
                          "same random draws before and after):", ""]
            lines += _table(["held-out", "start", "end", "change"], rows)
        scalars = read_scalars(folder)
        plots = []
        for key, label, stem in RL_CURVES:
            file = f"step3_{algorithm}_{stem}.png"
            if draw(self.plots_dir / file, f"Step 3 ({name}): {label}", label, {label: scalars.get(f"ppo/{key}", [])},
                    xlabel=f"{name} iteration", smoothed=True):
                plots.append((f"step 3 {name} {label}", file))
        return [*lines, "", *_images(plots)]

    def comparison(self) -> list[str]:
        """Base, step-1 and step-3 models on the same held-out prompts, scored by checker and reward model."""
        from chatrlhf.utils.comparison import ComparisonSettings, compare_models
        from chatrlhf.utils.data.config import DataConfig
        from chatrlhf.utils.model.generation import GenerationSettings

        step1, step2 = (self.inputs.step_dirs[s] for s in (1, 2))
        models = {f"base ({self.inputs.base_model})": self.inputs.base_model}
        if read_metrics(step1) is not None:
            models["step 1 (SFT)"] = str(step1)
        for method, folder in self.inputs.ablation_dirs.items():
            if (folder / "config.json").is_file():
                models[ablation_label(method)] = str(folder)
        dpo = self.inputs.dpo_dir
        if dpo is not None and (dpo / "config.json").is_file():
            models["step 2 (DPO)"] = str(dpo)
        for algorithm, folder in self.inputs.rl_dirs.items():
            if (folder / "actor" / "config.json").is_file():
                models[f"step 3 ({algorithm_name(algorithm)})"] = str(folder / "actor")
        if len(models) < 2 or self.inputs.synthetic <= 0:
            return []
        reward = str(step2) if (step2 / "config.json").is_file() else None
        lines = [f"## Model comparison on held-out prompts: {', '.join(models)}", "",
                 f"{self.inputs.synthetic} held-out `synthetic/tasks` prompts (the head of seed "
                 f"{self.inputs.seed}'s eval stream, in no training split), greedy answers of up to "
                 f"{self.inputs.max_new_tokens} tokens, and pass@1 over {self.inputs.sampled} answers a prompt "
                 "sampled at temperature 1; checker accuracy by the exact task checker"
                 + (f", mean reward by the step-2 model `{self.relative(step2)}`." if reward else "."), ""]
        generation = GenerationSettings(max_new_tokens=self.inputs.max_new_tokens, batch_size=50)
        common = dict(models=models, synthetic=self.inputs.synthetic, seed=self.inputs.seed,
                      data=DataConfig(seed=self.inputs.seed), generation=generation)
        references = {}
        if self.imperfect_data():
            from chatrlhf.utils.data.synthetic_tasks import demonstrations

            references[DEMONSTRATORS_LABEL] = [answer for _, answer in
                                               demonstrations(self.inputs.seed, self.inputs.synthetic)]
            lines += [f"The `{DEMONSTRATORS_LABEL}` row scores the demonstrators' own answers to the same prompts "
                      "(one each, so its greedy and sampled figures are the same draw).", ""]
        if self.inputs.ablation_dirs:
            lines += ["An `ablation` row is the step-1 model trained further on the step-2 pairs' chosen answers, "
                      "likelihood only, for as many optimizer updates as the method it names: a preference method "
                      "that does not beat it gained nothing from the comparisons.", ""]
        try:
            result = compare_models(ComparisonSettings(**common, reward_model=reward, examples=self.inputs.examples,
                                                       sampled=self.inputs.sampled, references=references))
            novel = compare_models(ComparisonSettings(**common, novel_words=True, examples=0))
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"report: the model comparison failed: {exc}", flush=True)
            return [*lines, f"The comparison failed: `{exc}`", ""]
        print(result.console(), flush=True)
        return [*lines, result.markdown(), "### The same prompts with the word tasks asked of words outside "
                "`words.txt`", "", "Reverse, upper and count ask about pronounceable non-words no training set "
                "holds; add and sort keep their held-out prompts. Greedy answers:", "", novel.markdown()]


def write_report(inputs: ReportInputs) -> Path:
    """Write ``report.md`` (atomically) and its plots into the output folder; returns the report's path."""
    started = time.perf_counter()
    writer = ReportWriter(inputs)
    body = [writer.data(), writer.step1(), writer.step2(), writer.dpo(), writer.step3(), writer.comparison()]
    sections = [writer.header(), writer.wall_times(time.perf_counter() - started), *body]
    text = "\n".join(line for section in sections for line in section).rstrip() + "\n"
    path = inputs.output_dir / REPORT_FILE
    tmp = inputs.output_dir / f".{REPORT_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
