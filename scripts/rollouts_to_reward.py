"""How many sampled answers (rollouts) step-3 runs spend to reach a training reward: the measure behind
``--dynamic_sampling``'s claim of learning from fewer rollouts.

For each baseline run (e.g. GRPO) and the run compared with it (the same seed with ``--dynamic_sampling``), the
target is the baseline's training reward at ``--target_iteration`` (default its last; the mean over the
``--window`` iterations up to it); each run's cost
is the number of answers it had sampled when its trailing ``--window``-iteration mean first reached the target.
The training reward is the reward sources' mean over every answer drawn, groups dropped by dynamic sampling
included (``reward_fn_mean``), so both runs are measured on the same thing. Held-out figures from each run's
final evaluation are printed beside.

Usage:
  python scripts/rollouts_to_reward.py --baseline RUN_A1 RUN_A2 RUN_A3 --compared RUN_B1 RUN_B2 RUN_B3 [--window 10]
                                       [--target_iteration N]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def answers_per_batch(run: Path) -> int:
    """Answers one generation batch holds on one rank: prompts x samples per prompt (from the saved flags)."""
    args = json.loads((run / "chatrlhf_args.json").read_text())["args"]
    return int(args["per_device_generation_batch_size"]) * int(args["num_samples_per_prompt"])


def reward_curve(run: Path, key: str) -> tuple[list[float], list[int]]:
    """Per iteration: the training reward, and the answers sampled up to and including it."""
    metrics = json.loads((run / "metrics.json").read_text())
    args = json.loads((run / "chatrlhf_args.json").read_text())["args"]
    per_batch = answers_per_batch(run)
    rewards, spent, total = [], [], 0
    for row in metrics["history"]:
        if key not in row:
            raise SystemExit(f"{run}/metrics.json: iteration {row.get('step')} has no {key!r}; pass --key")
        batches = row.get("dynamic_batches_drawn", args.get("generation_batches", 1))
        total += int(batches) * per_batch
        rewards.append(row[key])
        spent.append(total)
    return rewards, spent


def trailing_means(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i + 1 - window): i + 1]) for i in range(len(values))]


def answers_to_reach(rewards: list[float], spent: list[int], target: float, window: int) -> tuple[int, int] | None:
    """Answers sampled, and the iteration (1-based), when the trailing mean first reached ``target`` (None: never).
    The iteration is the update count: dynamic sampling spends more answers an update to waste fewer updates."""
    for iteration, (mean, answers) in enumerate(zip(trailing_means(rewards, window), spent), start=1):
        if mean >= target:
            return answers, iteration
    return None


def held_out(run: Path) -> str:
    end = json.loads((run / "metrics.json").read_text()).get("held_out", {}).get("end", {})
    greedy, sampled = end.get("accuracy_overall"), end.get("sampled_accuracy_overall")
    return "-" if greedy is None else f"held-out greedy {100 * greedy:.1f}%, sampled {100 * sampled:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", nargs="+", type=Path, required=True)
    parser.add_argument("--compared", nargs="+", type=Path, required=True)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--key", default="reward_fn_mean", help="the history's training-reward column")
    parser.add_argument("--target_iteration", type=int, default=0,
                        help="the baseline iteration whose trailing mean is the target (0: its last)")
    args = parser.parse_args()
    if len(args.baseline) != len(args.compared):
        raise SystemExit("give one --compared run per --baseline run (same seeds, same order)")
    ratios, update_ratios = [], []
    for base, other in zip(args.baseline, args.compared):
        base_rewards, base_spent = reward_curve(base, args.key)
        end = args.target_iteration or len(base_rewards)
        target = statistics.fmean(base_rewards[max(0, end - args.window):end])
        base_cost = answers_to_reach(base_rewards, base_spent, target, args.window)
        rewards, spent = reward_curve(other, args.key)
        cost = answers_to_reach(rewards, spent, target, args.window)
        final = statistics.fmean(rewards[-args.window:])
        print(f"{base}: target {target:.3f} (iteration {end}) {reached(base_cost)} (of {base_spent[-1]}); "
              f"{held_out(base)}")
        print(f"{other}: {reached(cost)} (of {spent[-1]}; final {final:.3f}); {held_out(other)}")
        same_updates = min(end, len(rewards))
        print(f"  at iteration {same_updates} (as many updates): baseline "
              f"{trailing_means(base_rewards, args.window)[same_updates - 1]:.3f}, compared "
              f"{trailing_means(rewards, args.window)[same_updates - 1]:.3f}")
        if cost is not None and base_cost:
            ratios.append(cost[0] / base_cost[0])
            update_ratios.append(cost[1] / base_cost[1])
    for name, values in (("answers", ratios), ("iterations", update_ratios)):
        if values:
            print(f"{name} to the target, compared / baseline: "
                  f"{', '.join(f'{r:.2f}' for r in values)} (mean {statistics.fmean(values):.2f})")


def reached(cost: tuple[int, int] | None) -> str:
    return "never reached" if cost is None else f"reached after {cost[0]} answers, iteration {cost[1]}"


if __name__ == "__main__":
    main()
