#!/bin/bash
# Step 3 on a verifier: a critic-free algorithm (GRPO by default) trained on a reward function, with no
# critic and no reward model, from the step-1 tiny preset on synthetic/tasks. Runs on a laptop CPU in minutes.
# Usage: bash training_scripts/tiny/single_gpu/run_tiny_verifier.sh ACTOR [ACTOR_ZERO_STAGE] [OUTPUT] [FLAGS...]
#   (--algorithm rloo|reinforce_pp and --reward_fn FILE.py:FUNCTION among FLAGS switch either; RL_STEPS=N
#   shortens the run)
# The exact checker alone (1 right, 0 wrong), groups scaled by their spread and no KL term: on the default data
# the step-1 model repeats its demonstrators' slips on part of its samples, so most groups hold right and wrong
# answers and the checker cannot be gamed; nothing needs holding back to the reference (README: the default data).
ACTOR_MODEL_PATH=${1:?usage: run_tiny_verifier.sh ACTOR [ACTOR_ZERO_STAGE] [OUTPUT] [FLAGS...]}
ACTOR_ZERO_STAGE=${2:-0}
OUTPUT=${3:-./output_step3_tiny_verifier}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"
# The checker unless FLAGS name reward functions of their own: --reward_fn repeats, so both would add up.
REWARD_FN=(--reward_fn synthetic_tasks)
for flag in "${@:4}"; do
   case "$flag" in --reward_fn|--reward_fn=*) REWARD_FN=() ;; esac
done

deepspeed --num_gpus 1 --master_port "${MASTER_PORT:-29500}" "$MAIN" \
   --data_path synthetic/tasks \
   --data_split 4,4,2 \
   --actor_model_name_or_path "$ACTOR_MODEL_PATH" \
   --algorithm grpo \
   "${REWARD_FN[@]}" \
   --num_samples_per_prompt 16 \
   --per_device_generation_batch_size 8 \
   --per_device_training_batch_size 64 \
   --ppo_epochs 1 \
   --max_prompt_seq_len 64 \
   --max_answer_seq_len 48 \
   --actor_learning_rate 1e-4 \
   --actor_weight_decay 0.0 \
   --num_train_epochs 4 \
   --max_steps ${RL_STEPS:-100} \
   --lr_scheduler_type constant \
   --num_warmup_steps 0 \
   --temperature 1.0 \
   --kl_ctl 0 \
   --seed 1234 \
   --actor_zero_stage "$ACTOR_ZERO_STAGE" \
   --eval_prompts 128 \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --output_dir "$OUTPUT" \
   "${@:4}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
