"""Peer benchmark, step 3: our PPO against TRL 1.12's PPOTrainer on the shared CPU workload.

TRL removed PPO in 1.13, so its side runs the shared bench_trl_ppo.py in a separate TRL 1.12 venv
(created on first use). Both sides: rollouts of 8 prompts, exactly 64 new tokens sampled at
temperature 1.0, one PPO epoch of one optimizer step per rollout, actor = reference = the workload
model, critic = reward = the same weights with a seeded scalar head. Timed alike: wall clock from the
end of iteration `warmup` to the end of the last one, split into generation, rollout scoring and
training, each measurement a fresh process, repeats interleaved.

Usage:
  python scripts/bench_ppo.py [--repeats N] [--warmup 1 --steps 4] [--threads 2] [--json out.json]
  python scripts/bench_ppo.py --baseline_repo /path/to/other/checkout [--no_trl] ...

``--baseline_repo`` also measures another checkout of chatrlhf (e.g. the commit before a change), interleaved
with this one, so a change's effect on speed is measured in one session rather than across hours whose
machine speed differs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_common as bc

TRL_VERSION = "1.12.0"
VENV = Path(os.environ.get("BENCH_TRL112_VENV", Path.home() / ".cache" / "chatrlhf-bench" / "venv-trl112"))
VENV_INSTALLS = (["torch==2.13.0"], [f"trl=={TRL_VERSION}", "transformers", "datasets", "accelerate", "peft"])
BATCH = 8
ANSWER_LEN = 64
PHASES = ("generation_s", "rollout_scoring_s", "training_s", "other_s")
SYSTEMS = {"trl": "TRL 1.12 PPOTrainer (experimental)", "ours": "chatrlhf step 3",
           "baseline": "chatrlhf step 3, --baseline_repo"}
# Our data layer holds 10% of the 64 prompts out as eval (58 train): 7 full rollouts of 8 in one epoch.
MAX_ITERATIONS = 7


def venv_versions(python: Path) -> dict | None:
    """torch/transformers/trl versions importable by ``python``, or None if TRL is not there."""
    code = "import json, torch, transformers, trl; print(json.dumps({m.__name__: m.__version__ " \
           "for m in (torch, transformers, trl)}))"
    proc = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def ensure_venv() -> Path:
    """The TRL 1.12 venv's python, creating the venv as the shared README says on first use."""
    python = VENV / "bin" / "python"
    versions = venv_versions(python) if python.exists() else None
    if versions and versions["trl"] == TRL_VERSION:
        return python
    manual = (f"python3 -m venv {VENV} && {VENV}/bin/pip install torch==2.13.0 && "
              f"{VENV}/bin/pip install trl=={TRL_VERSION} transformers datasets accelerate peft")
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(VENV)]]
    steps += [[str(python), "-m", "pip", "install", *pkgs] for pkgs in VENV_INSTALLS]
    print(f"creating the TRL {TRL_VERSION} venv at {VENV} (first use; downloads torch and TRL)", flush=True)
    for cmd in steps:
        print(f"$ {shlex.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise bc.BenchError(f"creating the TRL {TRL_VERSION} venv failed (exit {proc.returncode}):\n"
                                f"{(proc.stdout[-1500:] + proc.stderr[-2500:]).strip()}\n"
                                f"fix the cause, or create it by hand: {manual}")
    versions = venv_versions(python)
    if not versions or versions["trl"] != TRL_VERSION:
        raise bc.BenchError(f"{python} still has no trl=={TRL_VERSION} (found {versions}); create it by hand: {manual}")
    print(f"venv ready: {versions}", flush=True)
    return python


def run_trl(python: Path, args: argparse.Namespace, label: str) -> dict:
    cmd = [str(python), str(bc.bench_script("bench_trl_ppo.py")), "--warmup", str(args.warmup),
           "--iters", str(args.steps)]
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        result = bc.run_json(cmd, args.threads, Path(tmp), label)
    phases = result["generation_s"] + result["rollout_scoring_s"] + result["training_s"]
    return result | {"other_s": round(result["seconds"] - phases, 3)}


def our_flags(out: Path, iterations: int) -> list[str]:
    """The workload's PPO settings, on its prompt-only file of 64 prompts."""
    workload = str(bc.WORKLOAD)
    return [
        "--data_path", str(bc.WORKLOAD / "ppo_prompts.jsonl"),
        "--data_split", "0,0,10", "--data_output_path", str(out / "data"), "--output_dir", str(out / "model"),
        "--actor_model_name_or_path", workload, "--critic_model_name_or_path", workload,
        "--per_device_generation_batch_size", str(BATCH), "--per_device_training_batch_size", str(BATCH),
        "--ppo_epochs", "1", "--generation_batches", "1",
        "--max_prompt_seq_len", "128", "--max_answer_seq_len", str(ANSWER_LEN), "--min_answer_seq_len", str(ANSWER_LEN),
        "--temperature", "1.0", "--actor_learning_rate", bc.LR, "--critic_learning_rate", bc.LR,
        "--lr_scheduler_type", "constant", "--num_warmup_steps", "0", "--eval_prompts", "0", "--dtype", "fp32",
        "--actor_zero_stage", "0", "--critic_zero_stage", "0",
        "--max_steps", str(iterations), "--log_interval", "1",
    ]


def run_ours(args: argparse.Namespace, label: str, pythonpath: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        out = Path(tmp)
        timing = bc.run_step3(our_flags(out, args.warmup + args.steps), args, out, label, BATCH, pythonpath)
    episodes = BATCH * args.steps
    return {
        "system": "chatrlhf step 3",
        "episodes_timed": episodes,
        "episodes_per_s": round(episodes / timing["seconds"], 4),
        **timing,
    }


def measure(args: argparse.Namespace) -> dict:
    bc.bench_script("bench_trl_ppo.py")
    bc.ensure_workload()
    print(f"{args.warmup} warm-up + {args.steps} timed PPO iterations of {BATCH} prompts x {ANSWER_LEN} new tokens, "
          f"{args.threads} threads, {args.repeats} repeat(s)")
    systems = {"ours": lambda label: run_ours(args, label)}
    if not args.no_trl:
        python = ensure_venv()
        systems["trl"] = lambda label: run_trl(python, args, label)
    if args.baseline_repo:
        baseline_path = bc.checkout_import_path(args.baseline_repo, Path(tempfile.mkdtemp(prefix="chatrlhf-base-")))
        systems["baseline"] = lambda label: run_ours(args, label, baseline_path)
    runs = bc.interleave(
        systems, args.repeats,
        lambda r: (f"{r['episodes_per_s']} episodes/s  gen {r['generation_s']} s  score {r['rollout_scoring_s']} s  "
                   f"train {r['training_s']} s  other {r['other_s']} s  rss {r['peak_rss_mib']} MiB"),
    )
    keys = ("episodes_per_s", *PHASES, "seconds", "peak_rss_mib", "generated_tokens_per_s_in_generation")
    summary = bc.summarize(runs, keys)
    ratios = {other: {key: bc.ratio(summary["ours"][key], summary[other][key]) for key in ("episodes_per_s", *PHASES)}
              for other in ("trl", "baseline") if other in summary}
    return {"benchmark": "ppo", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "repeats": args.repeats, "trl_venv": None if args.no_trl else str(VENV),
            "baseline_repo": str(args.baseline_repo) if args.baseline_repo else None, "summary": summary,
            "ratios_ours_over_trl": ratios.get("trl"), "ratios_ours_over_baseline": ratios.get("baseline"),
            "runs": runs}


def report(result: dict) -> None:
    summary, iters = result["summary"], result["steps"]
    print(f"\nStep 3 PPO, medians of {result['repeats']} run(s), {iters} timed iterations = {BATCH * iters} episodes\n")
    rows = [[SYSTEMS[k], s["episodes_per_s"], *(s[p] for p in PHASES), s["seconds"], s["peak_rss_mib"],
             s["generated_tokens_per_s_in_generation"]] for k, s in summary.items()]
    bc.print_table(["system", "episodes/s", "generation s", "rollout scoring s", "training s", "other s", "wall s",
                    "peak RSS MiB", "new tokens/s in generation"], rows)
    if result.get("ratios_ours_over_baseline"):
        print(f"\nours / baseline ({result['baseline_repo']}), episodes/s: "
              f"{result['ratios_ours_over_baseline']['episodes_per_s']}")
    if "trl" not in summary:
        return
    ours, trl = summary["ours"], summary["trl"]
    print(f"\nours / TRL, episodes/s: {result['ratios_ours_over_trl']['episodes_per_s']}")
    print("where our time goes, per iteration (share of our wall clock; TRL's seconds alongside):")
    for phase in PHASES:
        share = ours[phase] / ours["seconds"] if ours["seconds"] else 0.0
        print(f"  {phase.removesuffix('_s'):<16} {ours[phase] / iters:7.2f} s ({100 * share:4.1f}%)   "
              f"TRL {trl[phase] / iters:6.2f} s   difference {(ours[phase] - trl[phase]) / iters:+6.2f} s")
    print("  (our scoring = reference and reward forward passes; the actor's old log-probs and the critic's "
          "values come from the first training forward. TRL's scoring = reference, critic and reward passes.)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_common_args(parser, warmup=1, steps=4)
    parser.add_argument("--baseline_repo", type=Path, default=None,
                        help="another checkout of chatrlhf to measure beside this one, interleaved")
    parser.add_argument("--no_trl", action="store_true", help="skip TRL's side (e.g. for a before/after comparison)")
    args = parser.parse_args()
    bc.check_counts(args)
    if args.warmup + args.steps > MAX_ITERATIONS:
        raise bc.BenchError(f"--warmup + --steps is at most {MAX_ITERATIONS}: our step 3 trains on 58 of the 64 "
                            f"prompts (10% held out), i.e. {MAX_ITERATIONS} full rollouts of {BATCH} in one epoch")
    result = measure(args)
    report(result)
    bc.emit(result, args.json)


if __name__ == "__main__":
    main()
