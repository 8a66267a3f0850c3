#!/bin/bash
# Step 1 (SFT) for meta-llama/Llama-2-7b-hf, as DeepSpeed-Chat runs it. Usage: bash llama2/single_node/run_7b_lora.sh [OUTPUT] [ZERO_STAGE]
OUTPUT=${1:-./output_step1_llama2_7b_lora}
ZERO_STAGE=${2:-3}
MAIN="$(cd "$(dirname "$0")/../../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed "$MAIN" \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path meta-llama/Llama-2-7b-hf \
   --gradient_accumulation_steps 1 \
   --learning_rate 9.65e-6 \
   --lora_dim 128 \
   --lora_module_name layers. \
   --only_optimize_lora \
   --gradient_checkpointing \
   --dtype bf16 \
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
