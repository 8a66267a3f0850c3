#!/bin/bash
# Step 1 (SFT) for facebook/opt-1.3b, as DeepSpeed-Chat runs it. Usage: bash opt/single_node/run_1.3b.sh [OUTPUT] [ZERO_STAGE]
OUTPUT=${1:-./output_step1_1.3b}
ZERO_STAGE=${2:-2}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed "$MAIN" \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path facebook/opt-1.3b \
   --gradient_accumulation_steps 1 \
   --learning_rate 9.65e-6 \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 8 \
   --max_seq_len 512 \
   --weight_decay 0. \
   --num_train_epochs 16 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --zero_stage "$ZERO_STAGE" \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --deepspeed \
   --output_dir "$OUTPUT" \
   "${@:3}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
