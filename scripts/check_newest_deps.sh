#!/usr/bin/env bash
# Drift check: the newest releases the registry serves, past pyproject.toml's caps, in a throwaway venv.
# Runs the shortcut exactness tests and a short step-1 + step-3 run, then prints which speed shortcuts
# fell back. Nothing is installed into the active environment.
#
# Usage: bash scripts/check_newest_deps.sh [VENV_DIR]
#   TORCH_SPEC (default torch==2.13.0) chooses torch: PyPI's newest torch is a multi-GB CUDA build.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$(mktemp -d /tmp/chatrlhf-drift.XXXXXX)}"
work="$(mktemp -d /tmp/chatrlhf-drift-run.XXXXXX)"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip install -q --upgrade pip
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q --no-deps -e "$repo"
mapfile -t names < <(python - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
    if name != "torch":
        print(name)
EOF
)
pip install -q -U "${names[@]}"

echo "== versions: newest here / pinned in constraints.txt"
for name in torch transformers deepspeed peft datasets tokenizers; do
  have=$(python -c "import importlib.metadata as m; print(m.version('$name'))")
  pinned=$(grep -i "^$name==" "$repo/constraints.txt" | cut -d= -f3 || true)
  echo "$name $have / ${pinned:-unpinned}"
done

export DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CHATRLHF_CACHE="$work/cache"
echo "== shortcut exactness tests"
tests_status=0
(cd "$repo" && python -m pytest -q -p no:cacheprovider tests/test_exact_shortcuts.py tests/test_shortcut_probes.py) \
  || tests_status=$?

echo "== short step 1 + step 3 run"
cd "$work"
chatrlhf sft --model_name_or_path tiny-llama --data_output_path "$work/data" --output_dir "$work/sft" \
  --max_steps 20 --per_device_train_batch_size 16 --max_seq_len 128 --learning_rate 3e-3 > "$work/sft.log" 2>&1 \
  || { tail -20 "$work/sft.log"; exit 1; }
chatrlhf ppo --actor_model_name_or_path "$work/sft" --critic_model_name_or_path "$work/sft" \
  --data_output_path "$work/data" --output_dir "$work/ppo" --max_steps 2 --per_device_generation_batch_size 8 \
  --per_device_training_batch_size 8 --max_prompt_seq_len 64 --max_answer_seq_len 16 --eval_prompts 8 \
  > "$work/ppo.log" 2>&1 || { tail -20 "$work/ppo.log"; exit 1; }
grep "warning: speed shortcut" "$work/sft.log" "$work/ppo.log" || echo "no shortcut fell back"

echo "== shortcuts recorded in metrics.json"
python - "$work" <<'EOF'
import json, sys
for step in ("sft", "ppo"):
    shortcuts = json.load(open(f"{sys.argv[1]}/{step}/metrics.json")).get("shortcuts", {})
    print(step, ", ".join(f"{name}: {state}" for name, state in shortcuts.items()) or "none asked for")
EOF
echo "shortcut tests exit status: $tests_status (venv: $venv, runs: $work)"
exit "$tests_status"
