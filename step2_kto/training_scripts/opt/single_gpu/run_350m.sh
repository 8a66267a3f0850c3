#!/bin/bash
# Step 2 alternative (KTO) for facebook/opt-350m, as DeepSpeed-Chat runs it.
# Usage: bash opt/single_gpu/run_350m.sh [OUTPUT] [ZERO_STAGE] [ACTOR] [extra flags...]
#   ACTOR (default facebook/opt-350m) is the model KTO starts from and its reference, e.g. a step-1 output folder.
OUTPUT=${1:-./output_step2_kto_350m}
ZERO_STAGE=${2:-0}
ACTOR_MODEL_PATH=${3:-facebook/opt-350m}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed --num_gpus 1 "$MAIN" \
   --data_path Dahoas/rm-static \
   --data_split 2,4,4 \
   --model_name_or_path "$ACTOR_MODEL_PATH" \
   --per_device_train_batch_size 16 \
   --per_device_eval_batch_size 16 \
   --max_seq_len 512 \
   --learning_rate 1e-3 \
   --weight_decay 0.1 \
   --dropout 0.0 \
   --num_train_epochs 1 \
   --gradient_accumulation_steps 4 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --zero_stage "$ZERO_STAGE" \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --deepspeed \
   --output_dir "$OUTPUT" \
   "${@:4}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
