#!/bin/bash
# Step 2 (reward model) on the offline tiny preset and synthetic/tasks: runs on a laptop CPU in minutes.
# Usage: bash training_scripts/tiny/single_gpu/run_tiny.sh [OUTPUT] [ZERO_STAGE]
#   MODEL=<step-1 output dir> starts from the SFT model (the end-to-end runner's CPU default) instead of the base
#   preset; MODEL=tiny-opt switches family; MASTER_PORT=N moves the launcher off port 29500.
# The next-token loss on the chosen rows (--lm_loss_coef) is what lifts pair accuracy here: without it the
# model overfits the pairs with more epochs (docs/perfect_demonstrations.md, measured on the perfect set).
OUTPUT=${1:-./output_step2_tiny}
ZERO_STAGE=${2:-0}
MODEL=${MODEL:-tiny-llama}
# The next-token loss reads the embedding matrix outside the forward pass, which ZeRO-3 partitions.
LM_LOSS_COEF=1.0
if [ "$ZERO_STAGE" = 3 ]; then
   LM_LOSS_COEF=0
   echo "ZeRO-3: training without --lm_loss_coef (expect a few points less held-out accuracy)"
fi
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed --num_gpus 1 --master_port "${MASTER_PORT:-29500}" "$MAIN" \
   --data_path synthetic/tasks \
   --data_split 4,4,2 \
   --model_name_or_path "$MODEL" \
   --num_padding_at_beginning 0 \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 32 \
   --max_seq_len 128 \
   --learning_rate 1e-3 \
   --weight_decay 0.0 \
   --num_train_epochs 3 \
   --lm_loss_coef "$LM_LOSS_COEF" \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 20 \
   --group_by_length \
   --seed 1234 \
   --zero_stage "$ZERO_STAGE" \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --output_dir "$OUTPUT" \
   "${@:3}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
