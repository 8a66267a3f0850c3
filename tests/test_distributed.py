"""Several DeepSpeed ranks on CPU (gloo): step 1 under ZeRO-2 and ZeRO-3 follows the one-process loss curve.

Two ranks with micro-batch 4 see, at every step, exactly the 8 samples a single process with
micro-batch 8 sees (DistributedSampler deals the same permutation out round-robin). The losses still
differ slightly: each rank averages over its own response tokens and DeepSpeed averages the two ranks'
gradients, while one process averages over all tokens of the 8 samples; with samples of similar
length this reweighting moves the loss by well under 3%, so curves within 3% agree.

Step 3 runs on two ranks under ZeRO-3 too. There every module call gathers weights with a collective,
so both ranks must make the same calls although their rollouts end at different steps and their
prompts differ in length (``lockstep_needed``); before that a run died in its first rollout. The
run also has a LoRA actor with an EMA, whose update gathers one layer's base and adapter tensors at
a time.

Every run must also leave nothing in /dev/shm: DeepSpeed's CPU op never unlinks its 67 MB per-rank
all-reduce workspaces, so before ``device.unlink_shm_workspace`` each launcher run kept them in RAM.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
COMMON = ["--max_steps", str(STEPS), "--log_interval", "1", "--max_seq_len", "96", "--learning_rate", "3e-3",
          "--lr_scheduler_type", "constant", "--eval_iters", "1", "--seed", "7"]


def run_step1(out: Path, data_cache: str, *, ranks: int, zero_stage: int, micro_batch: int) -> list[float]:
    from conftest import DIST_VARIABLES

    from chatrlhf.utils.device import free_port

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    args = [str(ROOT / "step1_sft" / "main.py"), "--output_dir", str(out), "--zero_stage", str(zero_stage),
            "--per_device_train_batch_size", str(micro_batch), "--data_output_path", data_cache, *COMMON]
    port = free_port()
    if ranks == 1:
        command = [sys.executable, *args]
        env["MASTER_PORT"] = str(port)
    else:
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
                   "--master_port", str(port), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    leftovers = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    assert not leftovers, f"DeepSpeed's shared-memory workspaces outlived the run: {leftovers}"
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [h["loss"] for h in history]


@pytest.fixture(scope="module")
def single_process_curve(tmp_path_factory, cache_root, data_cache, sft_model) -> list[float]:
    return run_step1(tmp_path_factory.mktemp("one"), data_cache, ranks=1, zero_stage=0, micro_batch=8)


@pytest.mark.multiprocess
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_follow_the_single_process_loss_curve(zero_stage, single_process_curve, tmp_path, data_cache):
    curve = run_step1(tmp_path / "two", data_cache, ranks=2, zero_stage=zero_stage, micro_batch=4)
    assert len(curve) == len(single_process_curve) == STEPS
    for step, (ours, reference) in enumerate(zip(curve, single_process_curve), 1):
        assert abs(ours - reference) <= 0.03 * reference, (step, curve, single_process_curve)
    assert curve[-1] < curve[0]
    from transformers import AutoModelForCausalLM

    model, loading = AutoModelForCausalLM.from_pretrained(tmp_path / "two", output_loading_info=True)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    assert not loading["unexpected_keys"] and not loading["missing_keys"], loading


@pytest.mark.multiprocess
def test_step3_on_two_ranks_under_zero3_runs_its_ranks_in_lockstep(sft_model, tmp_path, data_cache):
    from conftest import DIST_VARIABLES

    from chatrlhf.utils.device import free_port

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    out, port = tmp_path / "ppo", free_port()
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
               str(ROOT / "step3_rlhf" / "main.py"), "--actor_model_name_or_path", sft_model,
               "--critic_model_name_or_path", sft_model, "--actor_zero_stage", "3", "--critic_zero_stage", "3",
               "--actor_lora_dim", "4", "--actor_lora_module_name", "layers.", "--enable_ema",
               "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "4",
               "--max_prompt_seq_len", "48", "--max_answer_seq_len", "24", "--max_steps", "2", "--eval_prompts", "4",
               "--data_output_path", data_cache, "--output_dir", str(out), "--seed", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 2
    assert all(h["critic_loss"] == h["critic_loss"] for h in metrics["history"])
    from transformers import AutoModelForCausalLM

    ema = AutoModelForCausalLM.from_pretrained(out / "actor_ema")
    assert all(torch.isfinite(p).all() for p in ema.parameters())
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
