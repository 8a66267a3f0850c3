#!/bin/bash
# Step 3 (PPO) on the offline tiny preset and synthetic/tasks: runs on a laptop CPU in minutes.
# Usage: bash training_scripts/tiny/single_gpu/run_tiny.sh ACTOR CRITIC [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]
# KL coefficient 0.2: looser ones raised the reward model's score further but began to trade away correct answers
# on held-out prompts (docs/perfect_demonstrations.md, measured on the perfect set).
ACTOR_MODEL_PATH=${1:?usage: run_tiny.sh ACTOR CRITIC [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]}
CRITIC_MODEL_PATH=${2:?usage: run_tiny.sh ACTOR CRITIC [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]}
ACTOR_ZERO_STAGE=${3:-0}
CRITIC_ZERO_STAGE=${4:-0}
OUTPUT=${5:-./output_step3_tiny}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed --num_gpus 1 --master_port "${MASTER_PORT:-29500}" "$MAIN" \
   --data_path synthetic/tasks \
   --data_split 4,4,2 \
   --actor_model_name_or_path "$ACTOR_MODEL_PATH" \
   --critic_model_name_or_path "$CRITIC_MODEL_PATH" \
   --num_padding_at_beginning 0 \
   --per_device_generation_batch_size 32 \
   --per_device_training_batch_size 32 \
   --generation_batches 1 \
   --ppo_epochs 1 \
   --max_prompt_seq_len 64 \
   --max_answer_seq_len 48 \
   --actor_learning_rate 1e-4 \
   --critic_learning_rate 1e-4 \
   --actor_weight_decay 0.0 \
   --critic_weight_decay 0.0 \
   --num_train_epochs 2 \
   --max_steps ${PPO_STEPS:-112} \
   --lr_scheduler_type constant \
   --num_warmup_steps 0 \
   --temperature 1.0 \
   --kl_ctl 0.2 \
   --normalize_reward \
   --seed 1234 \
   --actor_zero_stage "$ACTOR_ZERO_STAGE" \
   --critic_zero_stage "$CRITIC_ZERO_STAGE" \
   --eval_prompts 128 \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --output_dir "$OUTPUT" \
   "${@:6}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
