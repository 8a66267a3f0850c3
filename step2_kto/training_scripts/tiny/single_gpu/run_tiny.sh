#!/bin/bash
# Step 2 alternative (KTO) on the offline tiny preset and synthetic/tasks: runs on a laptop CPU in minutes.
# Usage: bash training_scripts/tiny/single_gpu/run_tiny.sh [OUTPUT] [ZERO_STAGE] [ACTOR] [extra flags...]
#   ACTOR is the model KTO starts from and compares with (the frozen reference): the step-1 output folder (as the
#   end-to-end runner passes it), or a preset (default tiny-llama). MASTER_PORT=N moves the launcher off port 29500.
# The 4,4,2 split is the step-2 share the tiny reward model and DPO train on; KTO sees the same pairs unpaired, each
# giving a desirable and an undesirable completion (local prompt/completion/label files work as --data_path too).
OUTPUT=${1:-./output_step2_kto_tiny}
ZERO_STAGE=${2:-0}
ACTOR_MODEL_PATH=${3:-tiny-llama}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed --num_gpus 1 --master_port "${MASTER_PORT:-29500}" "$MAIN" \
   --data_path synthetic/tasks \
   --data_split 4,4,2 \
   --model_name_or_path "$ACTOR_MODEL_PATH" \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 32 \
   --max_seq_len 128 \
   --learning_rate 1e-3 \
   --weight_decay 0.0 \
   --loss_type kto \
   --beta 0.1 \
   --num_train_epochs 1 \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 20 \
   --group_by_length \
   --seed 1234 \
   --zero_stage "$ZERO_STAGE" \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --output_dir "$OUTPUT" \
   "${@:4}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
