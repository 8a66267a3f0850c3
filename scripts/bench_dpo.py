"""Peer benchmark, DPO: our step2_dpo against TRL 1.16's DPOTrainer on the shared CPU workload.

Runs TRL with the shared bench_trl.py (its defaults: sigmoid loss, beta 0.1, a live frozen reference scored
every step) and our DPO in the same session, each measurement a fresh process, repeats interleaved, all timed
alike: the wall clock from the end of optimizer step `warmup` to the end of the last step, and the non-pad
tokens of those steps (chosen and rejected both count); a step is one micro-batch of 8 pairs. Our second row
precomputes the reference's log-probs in one pass before training (--precompute_ref_log_probs); that pass
happens before step 0, so it is outside the timed window, and its wall time is reported beside the row.

Usage:
  python scripts/bench_dpo.py [--repeats N] [--warmup 3 --steps 20] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse

import bench_common as bc

TRL_VERSION = "1.16.0"
MODULE = "chatrlhf.step2_dpo.main"
SYSTEMS = {
    "trl": "TRL 1.16 DPOTrainer (live reference)",
    "ours_live": "chatrlhf dpo, live reference, --group_by_length",
    "ours_precomputed": "chatrlhf dpo, --precompute_ref_log_probs, --group_by_length",
}


def with_pairs(result: dict) -> dict:
    """Pairs/s: every timed step is one full micro-batch of pairs on both sides."""
    return result | {"pairs_per_s": round(result["steps_per_s"] * bc.MICRO_BATCH, 3)}


def measure(args: argparse.Namespace) -> dict:
    bc.require_trl(TRL_VERSION)
    bc.bench_script("bench_trl.py")
    workload = bc.ensure_workload()
    data = bc.WORKLOAD / "pairs.jsonl"
    print(f"workload {bc.WORKLOAD}: {workload['pairs']} pairs; {args.warmup} warm-up + {args.steps} timed steps "
          f"of {bc.MICRO_BATCH} pairs, {args.threads} threads, {args.repeats} repeat(s)")
    grouped = ["--group_by_length"]
    systems = {
        "trl": lambda label: with_pairs(bc.run_trl_stage("dpo", args, label)),
        "ours_live": lambda label: with_pairs(bc.run_ours_step(MODULE, data, "0,10,0", args, label, grouped)),
        "ours_precomputed": lambda label: with_pairs(bc.run_ours_step(
            MODULE, data, "0,10,0", args, label, [*grouped, "--precompute_ref_log_probs"])),
    }
    runs = bc.interleave(
        systems, args.repeats,
        lambda r: f"{r['tokens_per_s']} tok/s  {r['pairs_per_s']} pairs/s  rss {r['peak_rss_mib']} MiB",
    )
    summary = bc.summarize(runs, ("tokens_per_s", "pairs_per_s", "steps_per_s", "peak_rss_mib"))
    ratios = {
        f"{ours}_vs_trl": {key: bc.ratio(summary[ours][key], summary["trl"][key])
                           for key in ("tokens_per_s", "pairs_per_s", "peak_rss_mib")}
        for ours in ("ours_live", "ours_precomputed")
    }
    return {"benchmark": "dpo", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "repeats": args.repeats, "summary": summary, "ratios": ratios, "runs": runs}


def report(result: dict) -> None:
    print(f"\nDPO, medians of {result['repeats']} run(s)\n")
    rows = [[SYSTEMS[k], s["tokens_per_s"], s["pairs_per_s"], s["steps_per_s"], s["peak_rss_mib"],
             s["tokens_per_s_all"]] for k, s in result["summary"].items()]
    bc.print_table(["system", "tokens/s (non-pad)", "pairs/s", "steps/s", "peak RSS MiB", "tokens/s runs"], rows)
    for ours in ("ours_live", "ours_precomputed"):
        r = result["ratios"][f"{ours}_vs_trl"]
        print(f"{SYSTEMS[ours]} / TRL: {r['tokens_per_s']} (tokens/s), {r['pairs_per_s']} (pairs/s), "
              f"{r['peak_rss_mib']} (peak RSS)")


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
