#!/bin/bash
# Step 2 alternative (DPO) for meta-llama/Llama-2-7b-hf with LoRA, as DeepSpeed-Chat runs it.
# Usage: bash llama2/run_llama2_7b_lora.sh [OUTPUT] [ZERO_STAGE] [ACTOR] [extra flags...]
#   ACTOR (default meta-llama/Llama-2-7b-hf) is the model DPO starts from and its reference, e.g. a step-1 output.
OUTPUT=${1:-./output_step2_dpo_llama2_7b_lora}
ZERO_STAGE=${2:-3}
ACTOR_MODEL_PATH=${3:-meta-llama/Llama-2-7b-hf}
MAIN="$(cd "$(dirname "$0")/../.." && pwd)/main.py"
mkdir -p "$OUTPUT"

deepspeed "$MAIN" \
   --data_path Dahoas/rm-static \
   --data_split 2,4,4 \
   --model_name_or_path "$ACTOR_MODEL_PATH" \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 8 \
   --max_seq_len 512 \
   --learning_rate 9.65e-6 \
   --weight_decay 0.1 \
   --num_train_epochs 1 \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --gradient_checkpointing \
   --zero_stage "$ZERO_STAGE" \
   --deepspeed \
   --offload \
   --lora_dim 128 \
   --lora_module_name layers. \
   --enable_tensorboard \
   --tensorboard_path "$OUTPUT" \
   --output_dir "$OUTPUT" \
   "${@:4}" 2>&1 | tee -a "$OUTPUT/training.log"
exit "${PIPESTATUS[0]}"
