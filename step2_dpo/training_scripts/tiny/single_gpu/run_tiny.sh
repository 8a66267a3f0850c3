#!/bin/bash
# Step 2 alternative (DPO) on the offline tiny preset and synthetic/tasks: runs on a laptop CPU in minutes.
# Usage: bash training_scripts/tiny/single_gpu/run_tiny.sh [OUTPUT] [ZERO_STAGE] [ACTOR] [extra flags...]
#   ACTOR is the model DPO starts from and compares with (the frozen reference): the step-1 output folder (as the
#   end-to-end runner passes it), or a preset (default tiny-llama). MASTER_PORT=N moves the launcher off port 29500.
# The 4,4,2 split is the step-2 share the tiny reward model trains on, so DPO and the reward model see the same pairs.
# ORPO by default: on these pairs the sigmoid loss pushed the chosen answers' likelihood down with the rejected ones
# and lost held-out accuracy, while ORPO's NLL term on the chosen answers keeps them. Pass --loss_type sigmoid for DPO.
# Six epochs at lr 1e-3: the step-1 model has not yet learnt sort, and ORPO's likelihood term on the step-2 share's
# right answers teaches it (the README's ablation); shorter schedules at this rate can leave the word tasks damaged.
OUTPUT=${1:-./output_step2_dpo_tiny}
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
   --loss_type orpo \
   --beta 0.1 \
   --num_train_epochs 6 \
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
