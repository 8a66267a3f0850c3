"""Shared plumbing of the peer benchmarks (bench_sft.py, bench_reward.py, bench_ppo.py).

The comparison is only fair if TRL and chatrlhf run the identical workload in the same session, each
measurement in a fresh process with the same threads and environment; this module holds that
machinery so that the three scripts differ only in what they run and report.

Run as a script, it is the wrapper our training processes run in, so that they report their own peak
RSS the way TRL's scripts do:
    python scripts/bench_common.py chatrlhf.step1_sft.main --data_path ... (our main's flags)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(os.environ.get("BENCH_DIR", REPO.parent / "shared" / "bench"))
WORKLOAD = Path(os.environ.get("BENCH_WORKLOAD", Path.home() / ".cache" / "chatrlhf-bench" / "workload"))
RESULT_PREFIX = "BENCH_RESULT "
PPO_MODULE = "chatrlhf.step3_rlhf.main"

# The workload's fixed settings (shared/bench/README.md): fp32, micro batch 8, length 256, lr 1e-5 constant.
MICRO_BATCH = 8
MAX_LEN = 256
LR = "1e-5"


class BenchError(SystemExit):
    """A benchmark cannot run: the message says what is missing and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def add_common_args(parser: argparse.ArgumentParser, warmup: int, steps: int) -> None:
    """The options every bench script shares."""
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs of each system, interleaved")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed optimizer steps / iterations first")
    parser.add_argument("--steps", type=int, default=steps, help="timed optimizer steps / iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every measured process")
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")


def check_counts(args: argparse.Namespace) -> None:
    """The timed window starts at the end of a warm-up step, so at least one is needed."""
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1 or args.threads < 1:
        raise BenchError("--warmup, --steps, --repeats and --threads must all be at least 1")


def bench_script(name: str) -> Path:
    """A script of the shared peer benchmark, which we call but never copy."""
    path = BENCH_DIR / name
    if not path.is_file():
        raise BenchError(f"{path} not found: point BENCH_DIR at the shared peer-benchmark folder "
                         "(the one with make_workload.py, bench_trl.py and bench_trl_ppo.py)")
    return path


def ensure_workload() -> dict:
    """Build the shared workload with make_workload.py unless it is there; return its workload.json."""
    if not (WORKLOAD / "model.safetensors").is_file() or not (WORKLOAD / "workload.json").is_file():
        cmd = [sys.executable, str(bench_script("make_workload.py")), "--out", str(WORKLOAD)]
        print(f"workload missing at {WORKLOAD}; building it (~20 s):\n$ {shlex.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, env=child_env(2), check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"make_workload.py failed (exit {proc.returncode}):\n{_tail(proc)}")
    return json.loads((WORKLOAD / "workload.json").read_text())


def require_trl(version: str) -> None:
    """TRL for SFT/RM must be importable here at the pinned version, or the peer side is not the peer's."""
    from importlib import metadata

    try:
        found = metadata.version("trl")
    except metadata.PackageNotFoundError:
        raise BenchError(f"TRL is not installed: pip install trl=={version} (or pip install -e '.[bench]')") from None
    if found != version:
        raise BenchError(f"trl {found} is installed but the peer benchmark pins trl=={version}: "
                         f"pip install trl=={version}")


def child_env(threads: int, pythonpath: str | None = None) -> dict[str, str]:
    """Environment of every measured process: offline, CPU, the same thread count for both sides;
    ``pythonpath`` first on the import path (another checkout of chatrlhf, for a before/after comparison)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (pythonpath, env.get("PYTHONPATH"))))
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR="cpu",
        BENCH_WORKLOAD=str(WORKLOAD),
    )
    return env


def _tail(proc: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return (proc.stdout[-chars // 2 :] + "\n" + proc.stderr[-chars:]).strip()


def run_json(cmd: Sequence[str], threads: int, cwd: Path, label: str, pythonpath: str | None = None) -> dict:
    """Run one measurement in a fresh process and return the JSON result it prints last."""
    print(f"[{label}] $ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(list(cmd), env=child_env(threads, pythonpath), cwd=cwd, check=False, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise BenchError(f"{label} failed (exit {proc.returncode}); end of its output:\n{_tail(proc)}")
    for line in reversed(proc.stdout.splitlines()):
        line = line.removeprefix(RESULT_PREFIX)
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise BenchError(f"{label} printed no JSON result; end of its output:\n{_tail(proc)}")


def ours_command(module: str, argv: Sequence[str]) -> list[str]:
    """Our step's main on one process, inside this file's wrapper (which reports peak RSS)."""
    return [sys.executable, str(Path(__file__).resolve()), module, *argv]


def our_training_flags(data_file: Path, split: str, output_dir: Path, steps: int) -> list[str]:
    """Flags steps 1 and 2 share: the workload's settings, per-step logging, a 1-batch evaluation."""
    return [
        "--data_path", str(data_file), "--data_split", split, "--data_output_path", str(output_dir / "data"),
        "--model_name_or_path", str(WORKLOAD), "--output_dir", str(output_dir / "model"),
        "--per_device_train_batch_size", str(MICRO_BATCH), "--max_seq_len", str(MAX_LEN),
        "--learning_rate", LR, "--lr_scheduler_type", "constant", "--num_warmup_steps", "0",
        "--weight_decay", "0", "--dtype", "fp32", "--zero_stage", "0",
        "--max_steps", str(steps), "--log_interval", "1", "--eval_iters", "1",
    ]


def run_trl_stage(stage: str, args: argparse.Namespace, label: str) -> dict:
    """One TRL SFT/RM measurement with the shared bench_trl.py, in a fresh process."""
    cmd = [sys.executable, str(bench_script("bench_trl.py")), "--stage", stage,
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        return run_json(cmd, args.threads, Path(tmp), label)


def run_ours_step(module: str, data_file: Path, split: str, args: argparse.Namespace, label: str,
                  extra: Sequence[str] = ()) -> dict:
    """One measurement of our step 1 or 2 in a fresh process, with its own output and data cache."""
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        out = Path(tmp)
        flags = our_training_flags(data_file, split, out, args.warmup + args.steps) + list(extra)
        wrapper = run_json(ours_command(module, flags), args.threads, out, label)
        window = timed_window(out / "model" / "metrics.json", args.warmup, args.steps)
    return {"system": f"chatrlhf {module}", "flags": list(extra), **window,
            "peak_rss_mib": wrapper["peak_rss_mib"], "torch_threads": wrapper["torch_threads"]}


def interleave(systems: dict[str, Callable[[str], dict]], repeats: int,
               describe: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Repeat 1 of every system, then repeat 2, ...: slow drifts of the machine hit all systems alike."""
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    for rep in range(repeats):
        for name, measure in systems.items():
            label = f"{name} #{rep + 1}/{repeats}"
            result = measure(label)
            runs[name].append(result)
            print(f"[{label}] {describe(result)}", flush=True)
    return runs


def timed_window(metrics_file: Path, warmup: int, steps: int) -> dict:
    """Our steps 1/2 timed like TRL: clock at the end of step ``warmup`` to the end of the last step."""
    history = {h["step"]: h for h in json.loads(metrics_file.read_text())["history"]}
    last = warmup + steps
    missing = [s for s in range(warmup, last + 1) if s not in history]
    if missing:
        raise BenchError(f"{metrics_file} has no history entry for steps {missing}: did the run log every step "
                         "(--log_interval 1) and reach --max_steps?")
    elapsed = history[last]["clock"] - history[warmup]["clock"]
    tokens = int(sum(history[s]["window_tokens"] for s in range(warmup + 1, last + 1)))
    losses = [history[s]["loss"] for s in (1, last) if "loss" in history[s]]
    return {"seconds": round(elapsed, 3), "steps_timed": steps, "steps_per_s": round(steps / elapsed, 4),
            "tokens_timed": tokens, "tokens_per_s": round(tokens / elapsed, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def run_step3(flags: Sequence[str], args: argparse.Namespace, out: Path, label: str, rows: int,
              pythonpath: str | None = None) -> dict:
    """One step-3 run through the wrapper: its timed window's wall clock, phase split and answers.

    ``rows`` answers a rollout; wall clock from the wrapper's iteration-end clocks, the phase split from
    step 3's ``metrics.json``.
    """
    last = args.warmup + args.steps
    wrapper = run_json(ours_command(PPO_MODULE, flags), args.threads, out, label, pythonpath)
    history = {h["step"]: h for h in json.loads((out / "model" / "metrics.json").read_text())["history"]}
    clocks = wrapper["iteration_end_clock"]
    timed = [history.get(s) for s in range(args.warmup + 1, last + 1)]
    if len(clocks) < last or None in timed:
        raise BenchError(f"{label} ran {len(clocks)} step-3 iterations, not {last}")
    seconds = clocks[last - 1] - clocks[args.warmup - 1]
    split = {key: sum(h[key] for h in timed) for key in ("generation_s", "scoring_s", "training_s")}
    new_tokens = sum(h["answer_length"] for h in timed) * rows
    return {
        "iterations_timed": args.steps,
        "seconds": round(seconds, 3),
        "generation_s": round(split["generation_s"], 3),
        "rollout_scoring_s": round(split["scoring_s"], 3),
        "training_s": round(split["training_s"], 3),
        "other_s": round(seconds - sum(split.values()), 3),
        "generated_tokens_per_s_in_generation": round(new_tokens / split["generation_s"], 1),
        "answer_lengths": [h["answer_length"] for h in timed],
        "reward_mean": [round(h["reward_mean"], 4) for h in timed],
        "kl_to_ref": [round(h["kl_to_ref"], 6) for h in timed],
        "peak_rss_mib": wrapper["peak_rss_mib"],
        "torch_threads": wrapper["torch_threads"],
    }


def summarize(runs: dict[str, list[dict]], keys: Sequence[str]) -> dict[str, dict]:
    """Median of each key per system, plus every run's value of the first key (to show the spread)."""
    summary = {}
    for system, results in runs.items():
        summary[system] = {k: statistics.median(r[k] for r in results) for k in keys}
        summary[system] |= {"runs": len(results), f"{keys[0]}_all": [r[keys[0]] for r in results]}
    return summary


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, so that the output pastes straight into a results file."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    rule = ["-" * w for w in widths]
    for row in [cells[0], rule, *cells[1:]]:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return "-" if value is None else str(value)


def emit(result: dict, json_path: Path | None) -> None:
    """The one-line JSON summary (and the full result with every run in ``json_path``)."""
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    if json_path:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {json_path}")


def wrap_main(module: str, argv: list[str]) -> int:
    """Run our step's ``main`` in this process and print its peak RSS and threads as the last line.

    For step 3 it also records the wall clock at the end of every PPO iteration (when the trainer logs
    it), because step 3's metrics.json has per-phase times but no clock, and episodes/s must be timed
    end to end like TRL's (data loading and bookkeeping between phases included).
    """
    import importlib

    from chatrlhf.utils.host_memory import peak_resident_mib

    main = importlib.import_module(module).main
    clocks: list[float] = []
    if module == PPO_MODULE:
        from chatrlhf.step3_rlhf.trainer import PPOTrainer

        original_log = PPOTrainer.log

        def log(self: PPOTrainer, metrics: dict[str, float]) -> None:
            clocks.append(time.perf_counter())
            original_log(self, metrics)

        PPOTrainer.log = log
    rc = main(argv)
    import torch

    report = {"peak_rss_mib": round(peak_resident_mib(), 1),
              "torch_threads": torch.get_num_threads(), "iteration_end_clock": clocks}
    print(RESULT_PREFIX + json.dumps(report), flush=True)
    return rc or 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python {sys.argv[0]} MODULE [our main's flags ...]")
    sys.exit(wrap_main(sys.argv[1], sys.argv[2:]))


def checkout_import_path(repo: Path, parent: Path) -> str:
    """A folder under ``parent`` from which ``import chatrlhf`` loads the checkout at ``repo`` (the repository
    root is the package), for measuring another commit beside this one."""
    if not (repo / "step3_rlhf" / "main.py").is_file():
        raise BenchError(f"{repo} is not a chatrlhf checkout (no step3_rlhf/main.py)")
    (parent / "chatrlhf").symlink_to(repo.resolve(), target_is_directory=True)
    return str(parent)
