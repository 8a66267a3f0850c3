#!/bin/bash
# Step 2 alternative (KTO) for facebook/opt-350m on all GPUs of a node, as DeepSpeed-Chat runs it.
# Usage: bash opt/single_node/run_350m.sh [OUTPUT] [ZERO_STAGE] [ACTOR] [extra flags...]
#   ACTOR (default facebook/opt-350m) is the model KTO starts from and its reference, e.g. a step-1 output folder.
OUTPUT=${1:-./output_step2_kto_350m}
ZERO_STAGE=${2:-0}
ACTOR_MODEL_PATH=${3:-facebook/opt-350m}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed "$MAIN" \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path "$ACTOR_MODEL_PATH" \
   --per_device_train_batch_size 4 \
   --per_device_eval_batch_size 4 \
   --max_seq_len 512 \
   --learning_rate 5e-5 \
   --weight_decay 0.1 \
   --dropout 0.0 \
   --num_train_epochs 1 \
   --gradient_accumulation_steps 1 \
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
