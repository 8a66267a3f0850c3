"""``chatrlhf e2e``: run steps 1-3 through their training scripts, timed and checked, then write ``report.md``.

Takes DeepSpeed-Chat's runner flags (``--step``, ``--actor-model``, ``--reward-model``, the ZeRO stages,
``--output-dir``, ``--deployment-type``). Each step runs its ``training_scripts/<family>/<deployment>/run_<size>.sh``
from the step's directory, which appends to ``training.log`` in the step's output folder:

    OUTPUT/actor-models/<actor>                 step 1 (SFT)
    OUTPUT/reward-models/<reward>               step 2 (reward model)
    OUTPUT/dpo-models/<actor>                   step 2 with --step2-method dpo (DPO of the step-1 model; no step 3)
    OUTPUT/step3-models/<actor>                 step 3, PPO (actor/, critic/)
    OUTPUT/step3-models/<actor>-<algorithm>     step 3, a critic-free algorithm (actor/)
    OUTPUT/ablation-models/<actor>-<method>     step 1 trained further on step 2's chosen answers, as many updates
                                                as DPO or step 3 made: the likelihood-only ablation in the report

``--step3-algorithm grpo|rloo|reinforce_pp|rejection_sampling|online_dpo`` switches step 3's algorithm; with
``--reward-fn`` (e.g. ``synthetic_tasks``, the exact checker) step 3 trains on that function and needs no reward
model, so the default steps become 1 and 3 and step 3 runs the family's ``run_<size>_verifier.sh``.

``--step2-method dpo`` replaces steps 2 and 3 by DPO (``step2_dpo/``) of the step-1 model on the step-2 pairs:
the default steps become 1 and 2, the DPO script gets the step-1 folder as its ACTOR argument (the opt family's
``run_350m.sh``, LLaMA-2's ``run_llama2_<size>.sh``, or the tiny script), and the report compares base, SFT and
DPO. It takes no step-3 or reward-model flags.

OPT sizes (1.3b, 6.7b, 13b, 66b; 350m for the reward model) and LLaMA-2 sizes (llama2-7b, …) pick the
``opt`` and ``llama2`` scripts; any other name or path (a preset such as ``tiny-opt``, a hub name, a
directory) runs the ``tiny`` scripts, the ones that take the model from the environment (``MODEL``).
Without a GPU the default is the tiny preset on ``synthetic/tasks``, which finishes on a 2-core CPU in
minutes. A failed step shows the tail of its log (and, after an out-of-memory error, what to change).

Run it as ``chatrlhf e2e …`` or ``python applications/e2e_rlhf.py …``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from chatrlhf.step3_rlhf import algorithms

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
STEP_DIRS = {1: PACKAGE_ROOT / "step1_sft", 2: PACKAGE_ROOT / "step2_reward", 3: PACKAGE_ROOT / "step3_rlhf"}
DPO_DIR = PACKAGE_ROOT / "step2_dpo"
DPO_OUTPUT_KIND = "dpo-models"
ABLATION_OUTPUT_KIND = "ablation-models"
STEP2_METHODS = ("reward", "dpo")
STEP_NAMES = {1: "SFT", 2: "reward model", 3: "RL"}
OUTPUT_KINDS = {1: "actor-models", 2: "reward-models", 3: "step3-models"}
DEPLOYMENTS = ("single_gpu", "single_node", "multi_node")
GPU_DEFAULTS = ("1.3b", "350m")
FROM_STEP1 = "step1"
# Without a GPU: the tiny LLaMA preset (rotary positions learn the copying tasks; tiny-opt's learned positions
# reached 38% checker accuracy where it reached 61%), and step 2 starts from the step-1 model.
CPU_DEFAULTS = ("tiny-llama", FROM_STEP1)
TIMINGS_FILE = "e2e_timings.json"
LOG_TAIL_LINES = 40
_OPT_SIZE = re.compile(r"^(?:facebook/opt-)?(\d+(?:\.\d+)?[mb])$", re.IGNORECASE)
_LLAMA2_SIZE = re.compile(r"^(?:llama2-|meta-llama/llama-2-)(\d+b)(?:-hf)?$", re.IGNORECASE)
_OOM = re.compile(
    r"out of memory|OutOfMemoryError|can't allocate memory|cannot allocate memory|std::bad_alloc|MemoryError"
    r"|exits with return code = -9|^Killed",
    re.IGNORECASE | re.MULTILINE,
)
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


class RunnerError(RuntimeError):
    """A problem found before or while running a step; the message says what to do."""


@dataclass(frozen=True)
class ModelChoice:
    """How a ``--actor-model``/``--reward-model`` value is run: script family and size, and the folder name."""

    label: str
    family: str
    size: str
    base: str
    model_env: str | None = None

    @property
    def memory_name(self) -> str:
        """The name ``chatrlhf memory --model`` knows this model by."""
        if self.family == "opt":
            return f"opt-{self.size}"
        if self.family == "llama2":
            return f"llama-2-{self.size}"
        return self.base


def parse_model(value: str, *, actor_dir: Path | None = None) -> ModelChoice:
    """OPT and LLaMA-2 sizes pick those script families; ``step1`` (reward only) and any other value the tiny one."""
    value = value.strip()
    opt = _OPT_SIZE.match(value)
    if opt:
        size = opt.group(1).lower()
        return ModelChoice(size, "opt", size, f"facebook/opt-{size}")
    llama = _LLAMA2_SIZE.match(value)
    if llama:
        size = llama.group(1).lower()
        return ModelChoice(f"llama2-{size}", "llama2", size, f"meta-llama/Llama-2-{size}-hf")
    if value == FROM_STEP1:
        if actor_dir is None:
            raise RunnerError(f"--reward-model {FROM_STEP1} starts step 2 from the step-1 model; only for the reward")
        return ModelChoice(f"{FROM_STEP1}-{actor_dir.name}", "tiny", "tiny", str(actor_dir), str(actor_dir))
    local = Path(value).expanduser()
    base = str(local.resolve()) if local.exists() else value
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", local.name if local.exists() else value.replace("/", "_")).strip("_")
    return ModelChoice(label or "model", "tiny", "tiny", base, base)


def default_models() -> tuple[str, str]:
    """DeepSpeed-Chat's OPT-1.3b actor and OPT-350m reward model on a GPU; without one, the tiny LLaMA preset.

    Without a GPU step 2 starts from the step-1 model: its pair accuracy on held-out pairs beat starting from
    either base preset, in the least time.
    """
    from chatrlhf.utils.device import has_cuda

    return GPU_DEFAULTS if has_cuda() else CPU_DEFAULTS


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, resolved from the flags before any step starts."""

    steps: tuple[int, ...]
    actor: ModelChoice
    reward: ModelChoice
    actor_zero_stage: str
    reward_zero_stage: str
    output_dir: Path
    deployment: str
    extra_args: dict[int, list[str]]
    algorithm: str = algorithms.DEFAULT
    reward_fns: tuple[str, ...] = ()
    seed: int | None = None
    step2_method: str = "reward"

    @property
    def dpo(self) -> bool:
        """Step 2 is DPO of the step-1 model (``--step2-method dpo``): it trains the actor, and no step 3 follows."""
        return self.step2_method == "dpo"

    def runs_dpo(self, step: int) -> bool:
        return step == 2 and self.dpo

    def code_dir(self, step: int) -> Path:
        """The step's folder, holding its ``main.py`` and ``training_scripts``."""
        return DPO_DIR if self.runs_dpo(step) else STEP_DIRS[step]

    def step_name(self, step: int) -> str:
        return "DPO" if self.runs_dpo(step) else STEP_NAMES[step]

    @property
    def verifier_only(self) -> bool:
        """Step 3 trains on the reward function alone: no critic, no reward model, no step 2 needed."""
        return bool(self.reward_fns) and not algorithms.REGISTRY[self.algorithm].uses_critic

    def step_dir(self, step: int) -> Path:
        if self.runs_dpo(step):
            return self.output_dir / DPO_OUTPUT_KIND / self.actor.label
        label = self.reward.label if step == 2 else self.actor.label
        if step == 3 and self.algorithm != algorithms.DEFAULT:
            label = f"{label}-{self.algorithm}"
        return self.output_dir / OUTPUT_KINDS[step] / label

    @property
    def policy_method(self) -> str | None:
        """The method that trains the policy after step 1 in this run (dpo, ppo, grpo, ...), or None."""
        if self.dpo:
            return "dpo" if 2 in self.steps else None
        return self.algorithm if 3 in self.steps else None

    def ablation_dir(self, method: str) -> Path:
        """Where the likelihood-only ablation of ``method`` goes: the step-1 model trained further on the step-2
        pairs' chosen answers for as many updates as ``method`` made."""
        return self.output_dir / ABLATION_OUTPUT_KIND / f"{self.actor.label}-{method}"

    def policy_dir(self, method: str) -> Path:
        """The folder of ``method``'s trained policy (its metrics.json counts its updates)."""
        if method == "dpo":
            return replace(self, step2_method="dpo").step_dir(2)
        return replace(self, step2_method="reward", algorithm=method).step_dir(3)

    def ablation_command(self, method: str, schedule: dict[str, str]) -> list[str]:
        """Step 1's script from the step-1 model on step 2's share (``--data_share 2``), with the policy step's
        number of updates and learning-rate schedule (``schedule``: step-1 flag name -> value)."""
        base = replace(self, step2_method="reward").command(1)
        base[2] = str(self.ablation_dir(method))
        flags = [token for name, value in schedule.items() for token in (f"--{name}", value)]
        return [*base, "--model_name_or_path", str(self.step_dir(1)), "--data_share", "2", *flags]

    def choice(self, step: int) -> ModelChoice:
        return self.reward if step == 2 and not self.dpo else self.actor

    def _script_candidates(self, step: int) -> tuple[Path, list[str]]:
        choice = self.choice(step)
        root = self.code_dir(step) / "training_scripts" / choice.family
        if self.runs_dpo(step):
            # DeepSpeed-Chat's DPO scripts: opt-350m's for the OPT family (the actor is passed to them), and LLaMA-2's
            # without a deployment folder.
            if choice.family == "llama2":
                return root, [f"run_llama2_{choice.size}.sh", f"run_llama2_{choice.size}_lora.sh"]
            return root / self.deployment, ["run_350m.sh" if choice.family == "opt" else f"run_{choice.size}.sh"]
        folder = root / self.deployment
        if step == 3 and self.verifier_only:
            return folder, [f"run_{choice.size}_verifier.sh"]
        return folder, [f"run_{choice.size}.sh", f"run_{choice.size}_lora.sh"]

    def script(self, step: int) -> Path:
        """``training_scripts/<family>/<deployment>/run_<size>.sh`` (or its ``_lora`` variant) of the step."""
        choice = self.choice(step)
        folder, names = self._script_candidates(step)
        for name in names:
            if (folder / name).is_file():
                return folder / name
        there = sorted(p.name for p in folder.glob("*.sh")) if folder.is_dir() else []
        listing = f"; there: {', '.join(there)}" if there else " (no such folder)"
        raise RunnerError(
            f"step {step} ({self.step_name(step)}): no script {names[0]} for --{self._flag(step)} "
            f"{choice.base} and --deployment-type {self.deployment} in {folder}{listing}. "
            "Pick another model size or --deployment-type, or copy a script there as a template."
        )

    def _flag(self, step: int) -> str:
        return "reward-model" if step == 2 and not self.dpo else "actor-model"

    def command(self, step: int) -> list[str]:
        """The script's command line, then the run's own flags, then extra flags.

        OUTPUT ZERO_STAGE for steps 1 and 2; OUTPUT ZERO_STAGE ACTOR for DPO (the step-1 model, at the actor's
        stage); step 3: ACTOR CRITIC ZEROs OUTPUT, or ACTOR ZERO_STAGE OUTPUT for a verifier script (no critic, no
        reward model).
        """
        if self.runs_dpo(step):
            args = [str(self.step_dir(2)), self.actor_zero_stage, str(self.step_dir(1))]
        elif step == 3 and self.verifier_only:
            args = [str(self.step_dir(1)), self.actor_zero_stage, str(self.step_dir(3))]
        elif step == 3:
            args = [str(self.step_dir(1)), str(self.step_dir(2)), self.actor_zero_stage, self.reward_zero_stage,
                    str(self.step_dir(3))]
        else:
            args = [str(self.step_dir(step)), self.actor_zero_stage if step == 1 else self.reward_zero_stage]
        own = ["--seed", str(self.seed)] if self.seed is not None else []
        if step == 3 and self.algorithm != algorithms.DEFAULT:
            own += ["--algorithm", self.algorithm]
        if step == 3:
            own += [token for spec in self.reward_fns for token in ("--reward_fn", spec)]
        return ["bash", str(self.script(step)), *args, *own, *self.extra_args.get(step, [])]

    def env(self, step: int) -> dict[str, str]:
        """The tiny scripts read the model from ``MODEL``; no other script may see a stray one.

        They also take the launcher's port from ``MASTER_PORT``: a port free at that moment, chosen per step, so
        a run never collides with another job on DeepSpeed's default 29500 or with an inherited ``MASTER_PORT``
        (a caller's own process group may still hold that one).
        """
        from chatrlhf.utils.device import free_port

        env = dict(os.environ)
        env.pop("MODEL", None)
        env["MASTER_PORT"] = str(free_port())
        choice = self.choice(step)
        if step in (1, 2) and not self.runs_dpo(step) and choice.model_env is not None:
            env["MODEL"] = choice.model_env
        return env

    def retrain_hint(self, step: int) -> str:
        flags = [f"--step {step}", f"--actor-model {shlex.quote(self.actor.base)}"]
        if self.seed is not None:
            flags.append(f"--seed {self.seed}")
        if self.dpo:
            flags.append("--step2-method dpo")
        elif step == 2:
            reward = FROM_STEP1 if self.reward.label.startswith(f"{FROM_STEP1}-") else self.reward.base
            flags.append(f"--reward-model {shlex.quote(reward)}")
        flags.append(f"--output-dir {shlex.quote(str(self.output_dir))}")
        return "chatrlhf e2e " + " ".join(flags)


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training.cli_parser import new_parser

    parser = new_parser(
        "chatrlhf e2e", __doc__.splitlines()[0], config_file=True,
        epilog="Extra flags reach a step's script through --stepN-args, e.g. --step1-args=\"--max_steps 50\";\n"
               "PPO_STEPS=N shortens the tiny step 3.",
    )
    parser.add_argument("--step", type=int, nargs="+", choices=(1, 2, 3), default=None,
                        help="Which steps to run (any subset; they run in order 1, 2, 3). Default: 1 2 3, or 1 3 "
                             "when step 3 trains a critic-free algorithm on --reward-fn alone.")
    parser.add_argument("--actor-model", default=None,
                        help="1.3b, 6.7b, 13b, 66b (facebook/opt-*), llama2-7b, llama2-13b, llama2-70b, or any name or "
                             "path (tiny scripts). Default: 1.3b on a GPU, tiny-llama without one.")
    parser.add_argument("--reward-model", default=None,
                        help=f"350m (facebook/opt-350m), any name or path (tiny scripts), or '{FROM_STEP1}' to start "
                             "from the step-1 model. Default: 350m on a GPU, step1 without one.")
    parser.add_argument("--actor-zero-stage", default="", choices=("", "0", "1", "2", "3"),
                        help="ZeRO stage of step 1 and of step 3's actor ('': the script's own).")
    parser.add_argument("--reward-zero-stage", default="", choices=("", "0", "1", "2", "3"),
                        help="ZeRO stage of step 2 and of step 3's critic ('': the script's own).")
    parser.add_argument("--output-dir", default="./output", help="Where actor-models/, reward-models/ and "
                                                                  "step3-models/ and report.md go.")
    parser.add_argument("--deployment-type", default="single_gpu", choices=DEPLOYMENTS,
                        help="Which scripts run: one GPU, one node, or several nodes.")
    parser.add_argument("--step2-method", default="reward", choices=STEP2_METHODS,
                        help="Step 2 trains a reward model for step 3 (reward), or replaces steps 2 and 3 by DPO of "
                             "the step-1 model on the step-2 pairs into dpo-models/ (dpo; --step then defaults to "
                             "1 2).")
    parser.add_argument("--step3-algorithm", default=None, choices=algorithms.names(),
                        help="Step 3's algorithm: PPO with a critic, or critic-free GRPO, RLOO, REINFORCE++, "
                             "rejection sampling or online DPO (unset: ppo).")
    parser.add_argument("--reward-fn", action="append", default=None, metavar="NAME|FILE.py:FUNCTION",
                        help="Step 3 rewards from a function (prompt, response) -> float, e.g. synthetic_tasks (the "
                             "exact checker); repeat it for several (weights: --step3-args '--reward_weights ...'). "
                             "With a critic-free algorithm no reward model is trained or loaded.")
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed of every step (model init, data order, the synthetic data and the report's "
                             "held-out prompts). Default: the scripts' own (1234).")
    for step in (1, 2, 3):
        parser.add_argument(f"--step{step}-args", default="", metavar="FLAGS",
                            help=f"Flags appended to step {step}'s script (one quoted string; '': none).")
    report = parser.add_mutually_exclusive_group()
    report.add_argument("--no-report", action="store_true", help="Do not write report.md at the end.")
    report.add_argument("--report-only", action="store_true",
                        help="Run no step; (re)write report.md from the outputs already in --output-dir.")
    parser.add_argument("--no-ablation", action="store_true",
                        help="Skip the likelihood-only ablation: after DPO or step 3, the step-1 model trained further "
                             "on the step-2 pairs' chosen answers for as many updates, shown in the report's "
                             "comparison (a preference method that does not beat it gained nothing from the pairs).")
    parser.add_argument("--report-prompts", type=int, default=200,
                        help="Held-out synthetic/tasks prompts in the report's model comparison.")
    parser.add_argument("--report-examples", type=int, default=5, help="Answers shown side by side in the report.")
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    actor_default, reward_default = default_models() if None in (args.actor_model, args.reward_model) else ("", "")
    output_dir = Path(args.output_dir).expanduser().resolve()
    actor = parse_model(args.actor_model or actor_default)
    actor_dir = output_dir / OUTPUT_KINDS[1] / actor.label
    reward = parse_model(args.reward_model or reward_default, actor_dir=actor_dir)
    try:
        extra = {step: shlex.split(getattr(args, f"step{step}_args")) for step in (1, 2, 3)}
    except ValueError as exc:
        raise RunnerError(f"--stepN-args: {exc}") from exc
    reward_fns = tuple(_caller_path(spec) for spec in args.reward_fn or ())
    algorithm = args.step3_algorithm or algorithms.DEFAULT
    dpo = args.step2_method == "dpo"
    if dpo:
        check_dpo_flags(args)
    verifier_only = bool(reward_fns) and not algorithms.REGISTRY[algorithm].uses_critic
    requested = args.step or ((1, 2) if dpo else (1, 3) if verifier_only else (1, 2, 3))
    steps = () if args.report_only else tuple(sorted(set(requested)))
    plan = Plan(steps, actor, reward, args.actor_zero_stage, args.reward_zero_stage,
                output_dir, args.deployment_type, extra, algorithm=algorithm, reward_fns=reward_fns,
                seed=args.seed, step2_method=args.step2_method)
    for step in plan.steps:
        plan.script(step)
    return plan


def check_dpo_flags(args: argparse.Namespace) -> None:
    """``--step2-method dpo`` trains the actor on preferences directly: flags of step 3 or of a reward model would
    be ignored, so they are refused."""
    unused = [flag for flag, given in (("--step3-algorithm", args.step3_algorithm is not None),
                                       ("--reward-fn", bool(args.reward_fn)),
                                       ("--reward-model", args.reward_model is not None),
                                       ("--reward-zero-stage", bool(args.reward_zero_stage)),
                                       ("--step3-args", bool(args.step3_args)),
                                       ("--step 3", 3 in (args.step or ()))) if given]
    if unused:
        raise RunnerError(
            f"--step2-method dpo cannot be combined with {', '.join(unused)}: DPO trains the step-1 model on the "
            "step-2 pairs directly, with no reward model and no step 3 (its ZeRO stage is --actor-zero-stage). "
            "Drop those flags, or use --step2-method reward for the reward model and step 3."
        )


def _caller_path(reward_fn: str) -> str:
    """``file.py:function`` with the file made absolute: the step runs from its own folder, not the caller's."""
    file, sep, function = reward_fn.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{Path(file).expanduser().resolve()}:{function}"
    return reward_fn


# ----- checks before step 3


def _weights_problem(file: Path) -> str | None:
    """Why a weights file does not open (a truncated or foreign file), or None; never loads the tensors."""
    try:
        if file.name.endswith(".index.json"):
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
            for shard in shards:
                problem = _weights_problem(file.parent / shard)
                if problem:
                    return problem
        elif file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as handle:
                if not list(handle.keys()):
                    return f"{file.name} holds no tensors"
        else:
            import torch

            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # whatever stops the file from opening is the answer
        return f"{file.name} does not open ({_first_line(exc)})"
    return None


def model_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a loadable saved model (config, weights, tokenizer), or None when it is."""
    if not folder.is_dir():
        return "the directory does not exist"
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(folder)
    except Exception as exc:  # any load failure is reported as is
        return f"its config does not load ({_first_line(exc)})"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return f"it holds no weights ({', '.join(WEIGHT_FILES)})"
    problem = _weights_problem(weights[0])
    if problem:
        return problem
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # any load failure is reported as is
        return f"its tokenizer does not load ({_first_line(exc)})"
    if not tokenizer("Human: hello", add_special_tokens=False)["input_ids"]:
        # Without tokenizer files transformers builds, without complaint, a tokenizer that encodes nothing.
        return "its tokenizer does not load (no tokenizer files: it encodes text to nothing)"
    return None


def check_step3_inputs(plan: Plan) -> None:
    """Step 3 starts from the step-1 actor and, unless it trains on a reward function alone, the step-2 reward
    model: they must exist and load."""
    problems = []
    needed = ((1, "actor"),) if plan.verifier_only else ((1, "actor"), (2, "reward model"))
    for step, role in needed:
        folder = plan.step_dir(step)
        problem = model_problem(folder)
        if problem:
            problems.append(
                f"step 3 needs the step-{step} {role} in {folder}, but {problem}.\n"
                f"  Run step {step} first: {plan.retrain_hint(step)}"
            )
    if not problems and not plan.verifier_only and not same_tokenizer(plan.step_dir(1), plan.step_dir(2)):
        problems.append(
            f"the step-1 actor ({plan.step_dir(1)}) and the step-2 reward model ({plan.step_dir(2)}) use different "
            "tokenizers, so the reward model cannot score the actor's answers (were they trained from different "
            "base models or preset versions?).\n"
            f"  Re-run steps 1 and 2: {plan.retrain_hint(2).replace('--step 2', '--step 1 2')}"
        )
    if problems:
        raise RunnerError("\n".join(problems))


def check_dpo_inputs(plan: Plan) -> None:
    """DPO starts from the step-1 actor (and compares with it): it must exist and load."""
    folder = plan.step_dir(1)
    problem = model_problem(folder)
    if problem:
        raise RunnerError(f"DPO starts from the step-1 actor in {folder}, but {problem}.\n"
                          f"  Run step 1 first: {plan.retrain_hint(1)}")


def same_tokenizer(actor: Path, reward: Path) -> bool:
    """Whether the two models tokenise alike, compared as step 3 compares them before it trains."""
    from chatrlhf.utils.data.fingerprint import tokenizer_fingerprint
    from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer

    options = ModelOptions()
    return tokenizer_fingerprint(load_tokenizer(str(actor), options)) == tokenizer_fingerprint(
        load_tokenizer(str(reward), options))


# ----- running the steps


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def log_size(log: Path) -> int:
    """Bytes already in a log: the scripts append (``tee -a``), so a run's own lines start there."""
    return log.stat().st_size if log.is_file() else 0


def _log_text(log: Path, start: int) -> str:
    """The log from byte ``start`` on (what one run appended), carriage returns kept."""
    if not log.is_file():
        return ""
    with open(log, "rb") as handle:
        handle.seek(start)
        return handle.read().decode("utf-8", errors="replace")


def log_tail(log: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> list[str]:
    """The last lines of a log from byte ``start``, with progress-bar redraws (carriage returns) reduced to their
    final state."""
    text = _log_text(log, start).rstrip("\n")
    if not text:
        return []
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")][-lines:]


def looks_out_of_memory(log: Path, returncode: int, start: int = 0) -> bool:
    """An OOM message in the log from byte ``start``, or the kernel's OOM killer (SIGKILL: 137, -9)."""
    if returncode in (137, -9):
        return True
    return bool(_OOM.search(_log_text(log, start)))


def oom_advice(plan: Plan, step: int) -> str:
    """What to change when a step runs out of memory, with the flags of that step."""
    reward_stage = step == 2 and not plan.dpo
    zero_flag = "--reward-zero-stage" if reward_stage else "--actor-zero-stage"
    current = (plan.reward_zero_stage if reward_stage else plan.actor_zero_stage) or "the script's default"
    if step == 3:
        batch = "--per_device_generation_batch_size and --per_device_training_batch_size"
        checkpointing = "--actor_gradient_checkpointing --critic_gradient_checkpointing"
        lora = "--actor_lora_dim 128 --critic_lora_dim 128 --only_optimize_lora"
        zero = "--actor-zero-stage 3 --reward-zero-stage 3"
        extra = "; --offload_reference_model / --offload_reward_model move the frozen models to the CPU"
    else:
        batch = "--per_device_train_batch_size (raise --gradient_accumulation_steps to keep the batch)"
        checkpointing = "--gradient_checkpointing"
        lora = "--lora_dim 128 --only_optimize_lora"
        zero = f"{zero_flag} 3"
        extra = "; --offload_reference_model moves DPO's frozen reference to the CPU" if plan.dpo else ""
    choice = plan.choice(step)
    device = "" if _has_cuda() else " --device cpu"
    memory = (f"chatrlhf memory --step {step} --model {shlex.quote(choice.memory_name)}"
              + (f" --critic_model {shlex.quote(plan.reward.memory_name)}" if step == 3 else "")
              + f" --zero_stage 3 --offload{device}")
    return "\n".join([
        f"Step {step} looks out of memory. Change one of these (in {plan.script(step)}, or append flags with "
        f"--step{step}-args=\"...\"):",
        f"  - a smaller batch: {batch}",
        f"  - a higher ZeRO stage (now {current}): {zero}",
        f"  - ZeRO-Offload of optimizer states to the CPU: --offload{extra}",
        f"  - gradient checkpointing: {checkpointing}",
        f"  - LoRA, training only the adapters: {lora}",
        f"Estimate what fits before re-running: {memory}",
    ])


def _has_cuda() -> bool:
    from chatrlhf.utils.device import has_cuda

    return has_cuda()


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def run_step(plan: Plan, step: int) -> float:
    """Run one step's script from its directory; returns its wall time or raises with the log tail."""
    return _run_script(plan, step, f"step {step}", plan.step_name(step), plan.command(step), plan.step_dir(step),
                       plan.env(step))


# The policy step's flags whose values the ablation takes over (its flag -> step 1's), so both train alike: as many
# updates of as many answers each, at the same learning-rate schedule.
SCHEDULE_FLAGS = {"learning_rate": "learning_rate", "actor_learning_rate": "learning_rate",
                  "lr_scheduler_type": "lr_scheduler_type", "num_warmup_steps": "num_warmup_steps",
                  "per_device_train_batch_size": "per_device_train_batch_size",
                  "per_device_training_batch_size": "per_device_train_batch_size",
                  "gradient_accumulation_steps": "gradient_accumulation_steps"}


def policy_schedule(plan: Plan, method: str) -> dict[str, str]:
    """How ``method`` trained the policy, as step-1 flags: its number of optimizer updates (``metrics.json``) and,
    from its saved flags, its batch size, learning rate and schedule. A fair ablation trains as long and as fast."""
    from chatrlhf.training.config_file import ARGS_FILE

    folder = plan.policy_dir(method)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunnerError(f"the ablation needs the {method} run's update count from {folder / 'metrics.json'}, "
                          f"which does not read ({_first_line(exc)}); re-run that step, or pass --no-ablation") from exc
    updates = metrics.get("actor_updates") or metrics.get("steps") or 0
    if updates <= 0:
        raise RunnerError(f"{folder / 'metrics.json'} records no optimizer update of the {method} policy; pass "
                          "--no-ablation")
    schedule = {"max_steps": str(int(updates))}
    try:
        saved = json.loads((folder / ARGS_FILE).read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        saved = {}
    for name, step1_name in SCHEDULE_FLAGS.items():
        if saved.get(name) is not None:
            schedule[step1_name] = str(saved[name])
    return schedule


def run_ablation(plan: Plan, method: str) -> float:
    """The likelihood-only ablation of ``method``: step 1 trained further on step 2's chosen answers."""
    schedule = policy_schedule(plan, method)
    env = plan.env(1)
    if env.get("MODEL"):
        env["MODEL"] = str(plan.step_dir(1))
    detail = f"step 1 + chosen answers, {schedule['max_steps']} updates"
    return _run_script(plan, 1, f"ablation of {method}", detail, plan.ablation_command(method, schedule),
                       plan.ablation_dir(method), env, record_as="ablation")


def _run_script(plan: Plan, step: int, name: str, detail: str, command: list[str], folder: Path, env: dict,
                record_as: int | str | None = None) -> float:
    """Run a script of ``step`` (its code folder) into ``folder``, timed under ``name`` ("step 2", "ablation of
    ppo") and recorded as ``record_as`` (default ``step``); returns its wall time or raises with the log tail."""
    code_dir = plan.code_dir(step)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"---=== Running {name} ({detail}) ===---\n{shlex.join(command)}", flush=True)
    log = folder / "training.log"
    earlier = log_size(log)
    started = time.perf_counter()
    returncode = subprocess.run(command, cwd=code_dir, env=env).returncode
    elapsed = time.perf_counter() - started
    status = "ok" if returncode == 0 else f"failed (exit code {returncode})"
    record_timing(plan, step if record_as is None else record_as, folder, elapsed, status)
    if returncode == 0:
        print(f"---=== Finished {name} in {_duration(elapsed)} ===---", flush=True)
        return elapsed
    lines = [f"{name[0].upper()}{name[1:]} ({detail}) failed with exit code {returncode} after {_duration(elapsed)}.",
             f"Command (run in {code_dir}): {shlex.join(command)}"]
    tail = log_tail(log, start=earlier)
    if tail:
        lines += [f"Last {len(tail)} lines of {log} (this run's):", *(f"  | {line}" for line in tail)]
    else:
        lines.append(f"This run wrote nothing to {log}: the script failed before training started.")
    if looks_out_of_memory(log, returncode, earlier):
        lines.append(oom_advice(plan, step))
    raise RunnerError("\n".join(lines))


def read_timings(output_dir: Path) -> dict[str, dict]:
    """Wall times of this and earlier runs into the same output folder, by step output folder.

    Steps may run in separate invocations, and one step into several folders (e.g. two reward models).
    """
    try:
        return json.loads((output_dir / TIMINGS_FILE).read_text()).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return {}


def record_timing(plan: Plan, step: int | str, folder: Path, seconds: float, status: str) -> None:
    timings = read_timings(plan.output_dir)
    timings[str(folder)] = {
        "step": step, "wall_time_s": seconds, "status": status,
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    tmp = plan.output_dir / f".{TIMINGS_FILE}.tmp"
    tmp.write_text(json.dumps({"outputs": timings}, indent=1))
    os.replace(tmp, plan.output_dir / TIMINGS_FILE)


def make_report(plan: Plan, args: argparse.Namespace) -> Path:
    from chatrlhf.applications.e2e_report import ReportInputs, algorithm_name, write_report

    if plan.dpo:
        method = {"step 2 method": "DPO of the step-1 model (no reward model, no step 3)"}
    else:
        functions = " + ".join(f"function {spec}" for spec in plan.reward_fns)
        method = {"reward": functions if plan.verifier_only else f"model {plan.reward.base}"
                  + (f" + {functions}" if functions else ""),
                  "step 3 algorithm": algorithm_name(plan.algorithm)}
    stages = {"actor ZeRO stage": plan.actor_zero_stage or "script default"}
    if not plan.dpo:
        stages["reward ZeRO stage"] = plan.reward_zero_stage or "script default"
    reward_plan = replace(plan, step2_method="reward")
    inputs = ReportInputs(
        output_dir=plan.output_dir,
        step_dirs={step: reward_plan.step_dir(step) for step in (1, 2, 3)},
        base_model=plan.actor.base,
        timings=read_timings(plan.output_dir),
        settings={"actor model": plan.actor.base, **method, "seed": plan.seed or "scripts' default", **stages,
                  "deployment": plan.deployment, "steps run": " ".join(map(str, plan.steps)) or "none (report only)"},
        synthetic=args.report_prompts,
        examples=args.report_examples,
        seed=1234 if plan.seed is None else plan.seed,
        rl_dirs=rl_dirs(plan),
        dpo_dir=dpo_dir(plan),
        ablation_dirs=ablation_dirs(plan),
    )
    return write_report(inputs)


def ablation_dirs(plan: Plan) -> dict[str, Path]:
    """Every likelihood-only ablation of this actor in the output folder, by the method whose updates it matches."""
    folders = {}
    for method in ("dpo", *algorithms.names()):
        folder = plan.ablation_dir(method)
        if (folder / "config.json").is_file():
            folders[method] = folder
    return folders


def dpo_dir(plan: Plan) -> Path | None:
    """The DPO output of this actor in the output folder, whichever method this run used: they compare."""
    folder = plan.policy_dir("dpo")
    return folder if folder.is_dir() else None


def rl_dirs(plan: Plan) -> dict[str, Path]:
    """Every step-3 output of this actor in the output folder, by algorithm: runs of several algorithms compare."""
    folders = {}
    for algorithm in algorithms.names():
        folder = plan.policy_dir(algorithm)
        if folder.is_dir():
            folders[algorithm] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.training.metrics_log import quiet_library_bars

    # The steps quiet their own bars (run_cli); the checks before a step and the report load models here.
    quiet_library_bars()
    if args.actor_zero_stage or args.reward_zero_stage:
        print("note: non-default ZeRO stages may run out of memory or run slower.", flush=True)
    started = time.perf_counter()
    try:
        plan = make_plan(args)
        for step in plan.steps:
            if step == 3:
                check_step3_inputs(plan)
            if plan.runs_dpo(step):
                check_dpo_inputs(plan)
            run_step(plan, step)
        method = plan.policy_method
        if method is not None and not args.no_ablation:
            run_ablation(plan, method)
    except RunnerError as exc:
        print(f"chatrlhf e2e: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("chatrlhf e2e: interrupted; finished steps keep their outputs.", file=sys.stderr, flush=True)
        return 130
    if len(plan.steps) > 1:
        print(f"---=== Finished steps {' '.join(map(str, plan.steps))} in {_duration(time.perf_counter() - started)}"
              " ===---", flush=True)
    if not args.no_report:
        report_started = time.perf_counter()
        path = make_report(plan, args)
        print(f"wrote {path} in {_duration(time.perf_counter() - report_started)}; "
              f"total {_duration(time.perf_counter() - started)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
