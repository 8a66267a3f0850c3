#!/bin/bash
# Step 3 (PPO) for facebook/opt-6.7b with a opt-350m critic, as DeepSpeed-Chat runs it.
# Usage: bash training_scripts/opt/single_node/run_6.7b.sh ACTOR_PATH CRITIC_PATH [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]
ACTOR_MODEL_PATH=${1:?usage: run_6.7b.sh ACTOR CRITIC [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]}
CRITIC_MODEL_PATH=${2:?usage: run_6.7b.sh ACTOR CRITIC [ACTOR_ZERO_STAGE] [CRITIC_ZERO_STAGE] [OUTPUT]}
ACTOR_ZERO_STAGE=${3:-3}
CRITIC_ZERO_STAGE=${4:-3}
OUTPUT=${5:-./output_step3_6.7b}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed "$MAIN" \
   --data_path Dahoas/rm-static \
   --data_split 2,4,4 \
   --actor_model_name_or_path "$ACTOR_MODEL_PATH" \
   --critic_model_name_or_path "$CRITIC_MODEL_PATH" \
   --num_padding_at_beginning 1 \
   --per_device_generation_batch_size 4 \
   --per_device_training_batch_size 4 \
   --generation_batches 1 \
   --ppo_epochs 1 \
   --max_answer_seq_len 256 \
   --max_prompt_seq_len 256 \
   --actor_learning_rate 9.65e-6 \
   --critic_learning_rate 5e-6 \
   --num_train_epochs 1 \
   --lr_scheduler_type cosine \
   --gradient_accumulation_steps 1 \
   --num_warmup_steps 100 \
   --seed 1234 \
   --enable_hybrid_engine \
   --actor_gradient_checkpointing \
   --actor_dropout 0.0 \
   --actor_zero_stage "$ACTOR_ZERO_STAGE" \
   --critic_zero_stage "$CRITIC_ZERO_STAGE" \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --deepspeed \
   --output_dir "$OUTPUT" \
   "${@:6}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
