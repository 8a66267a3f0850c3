"""Peer benchmark, step 2: our reward-model training against TRL 1.16's RewardTrainer on the shared CPU workload.

Runs TRL with the shared bench_trl.py and our step 2 (padded per batch, and --group_by_length) in the
same session, each measurement a fresh process, repeats interleaved, all timed alike: the wall clock
from the end of optimizer step `warmup` to the end of the last step, non-pad tokens of those steps
(chosen and rejected sequences both count); a step is one micro-batch of 8 pairs.

Usage:
  python scripts/bench_reward.py [--repeats N] [--warmup 3 --steps 20] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse

import bench_common as bc

TRL_VERSION = "1.16.0"
SYSTEMS = {
    "trl": "TRL 1.16 RewardTrainer",
    "ours_padded": "chatrlhf step 2, padded per batch",
    "ours_grouped": "chatrlhf step 2, --group_by_length",
}


def with_pairs(result: dict) -> dict:
    """Pairs/s: every timed step is one full micro-batch of pairs on both sides."""
    return result | {"pairs_per_s": round(result["steps_per_s"] * bc.MICRO_BATCH, 3)}


def measure(args: argparse.Namespace) -> dict:
    bc.require_trl(TRL_VERSION)
    bc.bench_script("bench_trl.py")
    workload = bc.ensure_workload()
    data = bc.WORKLOAD / "pairs.jsonl"
    module = "chatrlhf.step2_reward.main"
    print(f"workload {bc.WORKLOAD}: {workload['pairs']} pairs; {args.warmup} warm-up + {args.steps} timed steps "
          f"of {bc.MICRO_BATCH} pairs, {args.threads} threads, {args.repeats} repeat(s)")
    systems = {
        "trl": lambda label: with_pairs(bc.run_trl_stage("rm", args, label)),
        "ours_padded": lambda label: with_pairs(bc.run_ours_step(module, data, "0,10,0", args, label)),
        "ours_grouped": lambda label: with_pairs(
            bc.run_ours_step(module, data, "0,10,0", args, label, ["--group_by_length"])),
    }
    runs = bc.interleave(
        systems, args.repeats,
        lambda r: f"{r['tokens_per_s']} tok/s  {r['pairs_per_s']} pairs/s  rss {r['peak_rss_mib']} MiB",
    )
    summary = bc.summarize(runs, ("tokens_per_s", "pairs_per_s", "steps_per_s", "peak_rss_mib"))
    ratios = {
        f"{ours}_vs_trl": {key: bc.ratio(summary[ours][key], summary["trl"][key])
                           for key in ("tokens_per_s", "pairs_per_s")}
        for ours in ("ours_padded", "ours_grouped")
    }
    return {"benchmark": "reward", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "repeats": args.repeats, "summary": summary, "ratios": ratios, "runs": runs}


def report(result: dict) -> None:
    print(f"\nStep 2 reward model, medians of {result['repeats']} run(s)\n")
    rows = [[SYSTEMS[k], s["tokens_per_s"], s["pairs_per_s"], s["steps_per_s"], s["peak_rss_mib"],
             s["tokens_per_s_all"]] for k, s in result["summary"].items()]
    bc.print_table(["system", "tokens/s (non-pad)", "pairs/s", "steps/s", "peak RSS MiB", "tokens/s runs"], rows)
    ratios = result["ratios"]
    print(f"\nours / TRL: padded {ratios['ours_padded_vs_trl']['tokens_per_s']} (tokens/s), "
          f"{ratios['ours_padded_vs_trl']['pairs_per_s']} (pairs/s); grouped "
          f"{ratios['ours_grouped_vs_trl']['tokens_per_s']} (tokens/s), "
          f"{ratios['ours_grouped_vs_trl']['pairs_per_s']} (pairs/s)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_common_args(parser, warmup=3, steps=20)
    args = parser.parse_args()
    bc.check_counts(args)
    result = measure(args)
    report(result)
    bc.emit(result, args.json)


if __name__ == "__main__":
    main()
