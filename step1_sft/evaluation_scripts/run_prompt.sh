#!/bin/bash
# Compare a baseline and a fine-tuned model side by side. Usage: bash run_prompt.sh BASELINE FINETUNED [flags...]
# e.g. bash run_prompt.sh tiny-opt ./output_step1_tiny --synthetic 200
BASELINE=${1:?usage: run_prompt.sh BASELINE FINETUNED [prompt_eval flags]}
FINETUNED=${2:?usage: run_prompt.sh BASELINE FINETUNED [prompt_eval flags]}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
python "$HERE/prompt_eval.py" \
    --model_name_or_path_baseline "$BASELINE" \
    --model_name_or_path_finetune "$FINETUNED" \
    "${@:3}"
