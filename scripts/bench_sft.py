"""Peer benchmark, step 1: our SFT against TRL 1.16's SFTTrainer on the shared CPU workload.

Runs TRL's three options (padded, packing=True, and its length grouping, train_sampling_strategy=
"group_by_length") with the shared bench_trl.py and our step 1 (padded per batch, --group_by_length, --packing) in
the same session, each measurement a fresh process, repeats interleaved, all timed alike: the wall clock
from the end of optimizer step `warmup` to the end of the last step, non-pad tokens of those steps. Ratios
are against the best of TRL's options. Also measures the machine's fp32 matmul rate, so that the
throughput reads as a fraction of what the two cores can do (6 x parameters x tokens/s).

Usage:
  python scripts/bench_sft.py [--repeats N] [--warmup 3 --steps 20] [--threads 2] [--json out.json]
                              [--systems trl_packed trl_grouped ours_grouped ours_packed]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

TRL_VERSION = "1.16.0"
MATMUL_N = 2048
SYSTEMS = {
    "trl_padded": "TRL 1.16 SFTTrainer, padded",
    "trl_packed": "TRL 1.16 SFTTrainer, packing=True",
    "trl_grouped": "TRL 1.16 SFTTrainer, group_by_length",
    "ours_padded": "chatrlhf step 1, padded per batch",
    "ours_grouped": "chatrlhf step 1, --group_by_length",
    "ours_packed": "chatrlhf step 1, --packing",
}
OURS = ("ours_padded", "ours_grouped", "ours_packed")


def measure_matmul(threads: int, seconds: float) -> dict:
    """fp32 GFLOP/s of a 2048^3 matmul loop: the ceiling a training step's FLOPs are compared against."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=gen) for _ in range(2))
    out = torch.empty(MATMUL_N, MATMUL_N)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    count, start = 0, time.perf_counter()
    while count < 5 or time.perf_counter() - start < seconds:
        torch.matmul(a, b, out=out)
        count += 1
    elapsed = time.perf_counter() - start
    return {"gflops": round(2 * MATMUL_N**3 * count / elapsed / 1e9, 2), "matmuls": count,
            "seconds": round(elapsed, 3), "torch_threads": torch.get_num_threads()}


def run_matmul(args: argparse.Namespace, label: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--matmul", "--threads", str(args.threads),
           "--matmul_seconds", str(args.matmul_seconds)]
    with tempfile.TemporaryDirectory(prefix="chatrlhf-bench-") as tmp:
        return bc.run_json(cmd, args.threads, Path(tmp), label)


def measure(args: argparse.Namespace) -> dict:
    bc.require_trl(TRL_VERSION)
    bc.bench_script("bench_trl.py")
    workload = bc.ensure_workload()
    data = bc.WORKLOAD / "sft.jsonl"
    module = "chatrlhf.step1_sft.main"
    print(f"workload {bc.WORKLOAD}: {workload['pairs']} SFT rows, {workload['params']:,} parameters; "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, {args.repeats} repeat(s)")
    systems = {
        "matmul": lambda label: run_matmul(args, label),
        "trl_padded": lambda label: bc.run_trl_stage("sft", args, label),
        "trl_packed": lambda label: bc.run_trl_stage("sft_packed", args, label),
        "trl_grouped": lambda label: bc.run_trl_stage("sft_grouped", args, label),
        "ours_padded": lambda label: bc.run_ours_step(module, data, "10,0,0", args, label),
        "ours_grouped": lambda label: bc.run_ours_step(module, data, "10,0,0", args, label, ["--group_by_length"]),
        "ours_packed": lambda label: bc.run_ours_step(module, data, "10,0,0", args, label, ["--packing"]),
    }
    if args.systems:
        systems = {name: run for name, run in systems.items() if name == "matmul" or name in args.systems}

    def describe(r: dict) -> str:
        if "gflops" in r:
            return f"{r['gflops']} GFLOP/s fp32 matmul"
        return f"{r['tokens_per_s']} tok/s  {r['steps_per_s']} steps/s  rss {r['peak_rss_mib']} MiB"

    runs = bc.interleave(systems, args.repeats, describe)
    gflops = statistics.median(r["gflops"] for r in runs.pop("matmul"))
    summary = bc.summarize(runs, ("tokens_per_s", "steps_per_s", "peak_rss_mib"))
    for row in summary.values():
        row["matmul_fraction"] = round(row["tokens_per_s"] * 6 * workload["params"] / (gflops * 1e9), 4)
    trl_options = [name for name in ("trl_padded", "trl_packed", "trl_grouped") if name in summary]
    ours_options = [name for name in OURS if name in summary]
    best_trl = max(trl_options, key=lambda k: summary[k]["tokens_per_s"]) if trl_options else None
    ratios = {
        f"{ours}_vs_{ref}": bc.ratio(summary[ours]["tokens_per_s"], summary[ref]["tokens_per_s"])
        for ours in ours_options for ref in [*trl_options, *ours_options] if ours != ref
    }
    if best_trl:
        ratios |= {f"{ours}_vs_trl_best": ratios[f"{ours}_vs_{best_trl}"] for ours in ours_options}
    return {"benchmark": "sft", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "repeats": args.repeats, "params": workload["params"], "matmul_gflops": gflops, "trl_best": best_trl,
            "summary": summary, "ratios_tokens_per_s": ratios, "runs": runs}


def report(result: dict) -> None:
    summary = result["summary"]
    print(f"\nStep 1 SFT, medians of {result['repeats']} run(s); fp32 matmul {result['matmul_gflops']} GFLOP/s; "
          f"'% matmul' = tokens/s x 6 x {result['params'] / 1e6:.1f} M params / matmul rate\n")
    rows = [[SYSTEMS[k], s["tokens_per_s"], s["steps_per_s"], s["peak_rss_mib"], f"{100 * s['matmul_fraction']:.1f}%",
             s["tokens_per_s_all"]] for k, s in summary.items()]
    bc.print_table(["system", "tokens/s (non-pad)", "steps/s", "peak RSS MiB", "% matmul", "tokens/s runs"], rows)
    if result["trl_best"]:
        print(f"\nTRL's best measured: {SYSTEMS[result['trl_best']]}")
    print("\nratios of non-pad tokens/s (medians):")
    for name, value in result["ratios_tokens_per_s"].items():
        print(f"  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_common_args(parser, warmup=3, steps=20)
    parser.add_argument("--matmul", action="store_true", help="internal: only measure the matmul rate here")
    parser.add_argument("--matmul_seconds", type=float, default=5.0)
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=None,
                        help="measure these only (the matmul rate always); default: all")
    args = parser.parse_args()
    bc.check_counts(args)
    if args.matmul:
        print(json.dumps(measure_matmul(args.threads, args.matmul_seconds)))
        return
    result = measure(args)
    report(result)
    bc.emit(result, args.json)


if __name__ == "__main__":
    main()
