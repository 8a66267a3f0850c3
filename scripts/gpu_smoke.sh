#!/usr/bin/env bash
# GPU smoke test: steps 1, 2 and 3 (PPO) on the tiny OPT and LLaMA presets, in fp16 and bf16, under ZeRO-2 and
# ZeRO-3, step 3 with DeepSpeed's hybrid engine off and on, on up to 2 GPUs. Prints a pass/fail table; each
# run's log is kept under WORK_DIR. The CPU test suite cannot reach these paths (CUDA kernels, NCCL, the
# hybrid engine), so run this after changing the engine, generation or collectives code on a GPU machine.
#
# Usage: bash scripts/gpu_smoke.sh [WORK_DIR]
#   NUM_GPUS=N overrides the GPU count (default: min(2, visible GPUs));
#   DRY_RUN=1 prints each run's name and command (tab-separated) without running anything.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/chatrlhf-gpu-smoke.XXXXXX)}"
gpus="${NUM_GPUS:-$(python -c 'import torch; print(min(2, torch.cuda.device_count()))')}"
if [ -z "${DRY_RUN:-}" ] && [ "$gpus" -lt 1 ]; then
  echo "no CUDA device visible: this script tests the GPU paths (the CPU ones are in the test suite)" >&2
  exit 2
fi
port=$((29700 + RANDOM % 200))
names=()
outcomes=()

# run NAME COMMAND...: run it (or print it under DRY_RUN), log to WORK_DIR/NAME.log, record PASS or FAIL.
run() {
  local name="$1"
  shift
  if [ -n "${DRY_RUN:-}" ]; then
    printf '%s\t%s\n' "$name" "$(printf '%q ' "$@")"
    return 0
  fi
  local log="$work/${name// /_}.log"
  echo "== $name"
  if "$@" >"$log" 2>&1; then
    outcomes+=("PASS")
  else
    outcomes+=("FAIL  see $log")
  fi
  names+=("$name")
}

launch=(deepspeed --num_gpus "$gpus" --master_port "$port")
data=(--data_path synthetic/tasks --data_split 4,4,2 --data_output_path "$work/data_files")
for model in tiny-opt tiny-llama; do
  for dtype in fp16 bf16; do
    for zero in 2 3; do
      tag="$model $dtype zero$zero"
      out="$work/$model-$dtype-zero$zero"
      run "step1 $tag" "${launch[@]}" "$repo/step1_sft/main.py" "${data[@]}" --model_name_or_path "$model" \
        --dtype "$dtype" --zero_stage "$zero" --per_device_train_batch_size 4 --max_seq_len 128 --max_steps 4 \
        --eval_iters 1 --output_dir "$out/step1"
      run "step2 $tag" "${launch[@]}" "$repo/step2_reward/main.py" "${data[@]}" \
        --model_name_or_path "$out/step1" --dtype "$dtype" --zero_stage "$zero" --per_device_train_batch_size 4 \
        --max_seq_len 128 --max_steps 4 --eval_iters 1 --output_dir "$out/step2"
      for hybrid in off on; do
        extra=()
        [ "$hybrid" = on ] && extra=(--enable_hybrid_engine)
        run "step3 $tag hybrid-$hybrid" "${launch[@]}" "$repo/step3_rlhf/main.py" "${data[@]}" \
          --actor_model_name_or_path "$out/step1" --critic_model_name_or_path "$out/step2" --dtype "$dtype" \
          --actor_zero_stage "$zero" --critic_zero_stage "$zero" --per_device_generation_batch_size 4 \
          --per_device_training_batch_size 4 --max_prompt_seq_len 64 --max_answer_seq_len 32 --max_steps 2 \
          --eval_prompts 4 "${extra[@]}" --output_dir "$out/step3-hybrid-$hybrid"
      done
    done
  done
done

[ -n "${DRY_RUN:-}" ] && exit 0
echo
printf '%-40s %s\n' "run ($gpus GPU(s))" "result"
failed=0
for i in "${!names[@]}"; do
  printf '%-40s %s\n' "${names[$i]}" "${outcomes[$i]}"
  [[ "${outcomes[$i]}" == PASS ]] || failed=1
done
exit "$failed"
