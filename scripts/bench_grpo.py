"""Peer benchmark, step 3 GRPO: our `--algorithm grpo` against TRL 1.16's GRPOTrainer on the shared CPU workload.

TRL's side is the shared bench_trl_grpo.py, run in this venv (trl==1.16.0). Both sides: the workload
OPT model as the policy and its frozen copy as the reference; 8 prompts x 4 samples an iteration (32
completions of exactly 64 new tokens at temperature 1.0), the rule reward
bench_rewards.distinct_ratio (no reward model), group-normalised advantages, the KL to the reference
in the loss (k3 estimator, coefficient 0.04 = TRL's beta), one optimizer step on the 32 completions
per iteration, lr 1e-5 constant, fp32, one process. Timed alike: wall clock from the end of iteration
`warmup` to the end of the last one, completions/s over that window, the share of it spent generating
(TRL: its `_generate`; ours: sampling), and the process's peak RSS. Each measurement is a fresh
process; repeats are interleaved (ours, TRL, ours, TRL, ...) and the table reports their medians.

Usage:
  python scripts/bench_grpo.py [--repeats N] [--warmup 1 --steps 4] [--threads 2] [--json out.json]
  python scripts/bench_grpo.py --only ours --baseline_repo /path/to/other/checkout ...
  python scripts/bench_grpo.py --only ours --iterations 2 --threads 1      # one side only (no ratio)
`--iterations` is another name for `--steps` (timed iterations, after `--warmup` untimed ones).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import bench_common as bc

TRL_VERSION = "1.16.0"
PROMPTS = 8
GROUP = 4
COMPLETIONS = PROMPTS * GROUP
ANSWER_LEN = 64
KL_COEF = "0.04"
REWARD_FN = "distinct_ratio"
SYSTEMS = {"ours": "chatrlhf step 3, --algorithm grpo", "trl": "TRL 1.16 GRPOTrainer",
           "baseline": "chatrlhf step 3, --algorithm grpo, --baseline_repo"}
KEYS = ("completions_per_s", "seconds", "generation_s", "generation_share", "peak_rss_mib",
        "generated_tokens_per_s_in_generation")
OUR_PHASES = ("generation_s", "rollout_scoring_s", "training_s", "other_s")
# Our data layer holds 10% of the 64 prompts out as eval (58 train): 7 full batches of 8 prompts in one epoch.
MAX_ITERATIONS = 7


def run_trl(args: argparse.Namespace, label: str) -> dict:
    cmd = [sys.executable, str(bc.bench_script("bench_trl_grpo.py")), "--warmup", str(args.warmup),
           "--iters", str(args.steps)]
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        result = bc.run_json(cmd, args.threads, Path(tmp), label)
    generation = result["generation_s_per_iteration"] * result["iterations_timed"]
    return result | {"generation_s": round(generation, 3),
                     "generation_share": round(generation / result["seconds"], 4),
                     "generated_tokens_per_s_in_generation": result["generated_tokens_per_s"]}


def our_flags(out: Path, iterations: int) -> list[str]:
    """The workload's GRPO settings, on its prompt-only file of 64 prompts; TRL's defaults where it keeps them."""
    return [
        "--data_path", str(bc.WORKLOAD / "ppo_prompts.jsonl"),
        "--data_split", "0,0,10", "--data_output_path", str(out / "data"), "--output_dir", str(out / "model"),
        "--actor_model_name_or_path", str(bc.WORKLOAD),
        "--algorithm", "grpo", "--num_samples_per_prompt", str(GROUP),
        "--reward_fn", f"{bc.bench_script('bench_rewards.py')}:{REWARD_FN}",
        # TRL's beta with its k3 estimator in the loss; its defaults scale_rewards="group", epsilon 0.2 and
        # loss_type "dapo" (one process, no accumulation: the mean over every completion token of the batch).
        "--kl_ctl", KL_COEF, "--kl_mode", "loss", "--kl_estimator", "k3",
        "--scale_rewards", "group", "--cliprange", "0.2", "--loss_aggregation", "token_mean",
        "--per_device_generation_batch_size", str(PROMPTS), "--per_device_training_batch_size", str(COMPLETIONS),
        "--gradient_accumulation_steps", "1", "--ppo_epochs", "1", "--generation_batches", "1",
        "--max_prompt_seq_len", "128", "--max_answer_seq_len", str(ANSWER_LEN), "--min_answer_seq_len", str(ANSWER_LEN),
        "--temperature", "1.0", "--actor_learning_rate", bc.LR,
        "--lr_scheduler_type", "constant", "--num_warmup_steps", "0", "--eval_prompts", "0", "--dtype", "fp32",
        "--actor_zero_stage", "0", "--max_steps", str(iterations), "--log_interval", "1",
    ]


def run_ours(args: argparse.Namespace, label: str, pythonpath: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        out = Path(tmp)
        timing = bc.run_step3(our_flags(out, args.warmup + args.steps), args, out, label, COMPLETIONS, pythonpath)
    completions = COMPLETIONS * args.steps
    return {
        "system": SYSTEMS["ours"],
        "completions_timed": completions,
        "completions_per_s": round(completions / timing["seconds"], 3),
        "generation_share": round(timing["generation_s"] / timing["seconds"], 4),
        **timing,
    }


def measure(args: argparse.Namespace) -> dict:
    names = [args.only] if args.only else ["ours", "trl"]
    if "trl" in names:
        bc.require_trl(TRL_VERSION)
        bc.bench_script("bench_trl_grpo.py")
    bc.bench_script("bench_rewards.py")
    bc.ensure_workload()
    measures = {"ours": lambda label: run_ours(args, label), "trl": lambda label: run_trl(args, label)}
    if args.baseline_repo:
        baseline_path = bc.checkout_import_path(args.baseline_repo, Path(tempfile.mkdtemp(prefix="chatrlhf-base-")))
        measures["baseline"] = lambda label: run_ours(args, label, baseline_path)
        names.append("baseline")
    print(f"{args.warmup} warm-up + {args.steps} timed GRPO iterations of {PROMPTS} prompts x {GROUP} samples x "
          f"{ANSWER_LEN} new tokens, {args.threads} threads, {args.repeats} repeat(s): {', '.join(names)}")
    runs = bc.interleave(
        {name: measures[name] for name in names}, args.repeats,
        lambda r: (f"{r['completions_per_s']} completions/s  wall {r['seconds']} s  gen {r['generation_s']} s "
                   f"({100 * r['generation_share']:.1f}%)  rss {r['peak_rss_mib']} MiB"),
    )
    summary = {name: bc.summarize({name: results}, KEYS + (OUR_PHASES[1:] if name != "trl" else ()))[name]
               for name, results in runs.items()}
    both = "ours" in summary and "trl" in summary
    ratios = {key: bc.ratio(summary["ours"][key], summary["trl"][key]) if both else None
              for key in ("completions_per_s", "generation_s", "peak_rss_mib")}
    baseline = ({key: bc.ratio(summary["ours"][key], summary["baseline"][key]) for key in ("completions_per_s",
                                                                                         "peak_rss_mib")}
                if "ours" in summary and "baseline" in summary else None)
    return {"benchmark": "grpo", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "repeats": args.repeats, "systems": names, "summary": summary, "ratios_ours_over_trl": ratios,
            "baseline_repo": str(args.baseline_repo) if args.baseline_repo else None,
            "ratios_ours_over_baseline": baseline, "runs": runs}


def report(result: dict) -> None:
    summary, iters = result["summary"], result["steps"]
    print(f"\nStep 3 GRPO, medians of {result['repeats']} run(s), {iters} timed iterations = "
          f"{COMPLETIONS * iters} completions of {ANSWER_LEN} tokens\n")
    rows = [[SYSTEMS[k], s["completions_per_s"], s["seconds"], s["generation_s"],
             f"{100 * s['generation_share']:.1f}%", s["peak_rss_mib"], s["generated_tokens_per_s_in_generation"],
             s["completions_per_s_all"]] for k, s in summary.items()]
    bc.print_table(["system", "completions/s", "wall s", "generation s", "generation share", "peak RSS MiB",
                    "new tokens/s in generation", "completions/s runs"], rows)
    if result.get("ratios_ours_over_baseline"):
        print(f"\nours / baseline ({result['baseline_repo']}): {result['ratios_ours_over_baseline']}")
    ratios = result["ratios_ours_over_trl"]
    if ratios["completions_per_s"] is not None:
        print(f"\nours / TRL, completions/s: {ratios['completions_per_s']}   generation s: {ratios['generation_s']}"
              f"   peak RSS: {ratios['peak_rss_mib']}")
    if "ours" in summary:
        ours = summary["ours"]
        print("our time per iteration:")
        for phase in OUR_PHASES:
            share = ours[phase] / ours["seconds"] if ours["seconds"] else 0.0
            print(f"  {phase.removesuffix('_s'):<16} {ours[phase] / iters:7.2f} s ({100 * share:4.1f}%)")
        print("  (scoring = the reference's forward pass and the reward function; the actor's old log-probs come "
              "from the training forward)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_common_args(parser, warmup=1, steps=4)
    parser.add_argument("--iterations", dest="steps", type=int, default=argparse.SUPPRESS,
                        help="the same as --steps: timed GRPO iterations")
    parser.add_argument("--only", choices=("ours", "trl"), help="measure one side only (no TRL ratio)")
    parser.add_argument("--baseline_repo", type=Path, default=None,
                        help="also measure this other chatrlhf checkout (e.g. the commit before a change), "
                             "interleaved with this one")
    args = parser.parse_args()
    bc.check_counts(args)
    if args.warmup + args.steps > MAX_ITERATIONS:
        raise bc.BenchError(f"--warmup + --steps is at most {MAX_ITERATIONS}: our step 3 trains on 58 of the 64 "
                            f"prompts (10% held out), i.e. {MAX_ITERATIONS} full batches of {PROMPTS} in one epoch")
    result = measure(args)
    report(result)
    bc.emit(result, args.json)


if __name__ == "__main__":
    main()
