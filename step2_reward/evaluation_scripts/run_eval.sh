#!/bin/bash
# Score chosen/rejected pairs with a step-2 reward model. Usage: bash run_eval.sh MODEL [PAIRS_FILE] [rw_eval flags...]
# Without PAIRS_FILE the built-in HH-style and synthetic/tasks pairs are scored.
MODEL=${1:?usage: run_eval.sh MODEL [PAIRS_FILE] [rw_eval flags]}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PAIRS=()
if [ -n "$2" ]; then
    PAIRS=(--pairs_file "$2")
fi
python "$HERE/rw_eval.py" \
    --model_name_or_path "$MODEL" \
    "${PAIRS[@]}" \
    "${@:3}"
