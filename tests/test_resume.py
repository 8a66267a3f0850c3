"""Reliability: exact resume after SIGKILL, clean stop on SIGTERM, atomic saves, output-dir ownership."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEP1 = ["--max_steps", "8", "--per_device_train_batch_size", "4", "--max_seq_len", "64", "--learning_rate",
         "3e-3", "--log_interval", "1", "--eval_iters", "1", "--save_interval", "2", "--seed", "11"]


def start(out: Path, data_cache: str, env: dict, *extra: str, step: str = "step1_sft") -> subprocess.Popen:
    command = [sys.executable, str(ROOT / step / "main.py"), "--output_dir", str(out),
               "--data_output_path", data_cache, *STEP1, *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def wait_for(process: subprocess.Popen, marker: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError("".join(lines[-40:]))


def comparable(history: list[dict]) -> list[tuple]:
    return [(h["step"], h["loss"], h["lr"], h["window_tokens"]) for h in history]


@pytest.mark.parametrize("step", ["step1_sft", "step2_reward", "step2_dpo"])
def test_sigkill_then_resume_is_bit_exact(step, tmp_path, sft_model, data_cache, subprocess_env):
    uninterrupted = tmp_path / "whole"
    finish(start(uninterrupted, data_cache, subprocess_env, step=step))
    kill_after = random.Random(step).choice([2, 4, 6])  # fixed, so a failure reproduces
    out = tmp_path / "killed"
    process = start(out, data_cache, subprocess_env, step=step)
    wait_for(process, f"step {kill_after}: checkpoint written")
    time.sleep(random.Random(kill_after).random() * 0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    resumed = finish(start(out, data_cache, subprocess_env, "--resume", step=step))
    assert "resuming at step" in resumed
    expected = load_file(uninterrupted / "model.safetensors")
    actual = load_file(out / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert expected[name].equal(actual[name]), name
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    again = json.loads((out / "metrics.json").read_text())
    assert comparable(again["history"]) == comparable(whole["history"])
    assert [e["loss"] for e in again["evals"]] == [e["loss"] for e in whole["evals"]]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, sft_model, data_cache, subprocess_env):
    out = tmp_path / "term"
    process = start(out, data_cache, subprocess_env, "--save_interval", "100")
    wait_for(process, "[train] epoch 0 step 3/")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-2000:]
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    checkpoints = sorted(os.listdir(out / "checkpoints"))
    assert any(name.startswith("step-") for name in checkpoints)
    assert "resuming at step" in finish(start(out, data_cache, subprocess_env, "--resume"))
    assert (out / "model.safetensors").exists()


def test_save_total_limit_keeps_the_newest(tmp_path, sft_model, data_cache, subprocess_env):
    out = tmp_path / "limit"
    finish(start(out, data_cache, subprocess_env, "--save_total_limit", "2"))
    names = sorted(n for n in os.listdir(out / "checkpoints") if n.startswith("step-"))
    assert names == ["step-6", "step-8"]
    assert (out / "checkpoints" / "latest").read_text() == "step-8"


def test_output_dir_of_someone_else_is_refused(tmp_path, data_cache):
    from chatrlhf.training.run_setup import OutputDirError, require_output_dir

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match="not empty.*precious.txt"):
        require_output_dir(str(foreign), "step 1")
    assert (foreign / "precious.txt").read_text() == "keep me"
    require_output_dir(str(foreign), "step 1", overwrite=True)
    with pytest.raises(OutputDirError, match="holds the outputs of step 1"):
        require_output_dir(str(foreign), "step 2")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "training.log").write_text("started\n")
    assert require_output_dir(str(fresh), "step 2") == str(fresh)


def test_interrupted_model_save_keeps_the_previous_model(tmp_path, monkeypatch):
    """A crash while the final model is written leaves the old one whole and loadable."""
    from transformers import AutoModelForCausalLM, OPTConfig

    from chatrlhf.training import saving

    model = AutoModelForCausalLM.from_config(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                       ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16))
    target = tmp_path / "model"
    saving.save_hf_model(model, None, str(target))
    before = load_file(target / "model.safetensors")
    (target / "training.log").write_text("log line\n")

    def crash(self, folder, **kwargs):
        Path(folder, "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(type(model), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        saving.save_hf_model(model, None, str(target))
    after = load_file(target / "model.safetensors")
    assert all(before[k].equal(after[k]) for k in before)
    assert (target / "training.log").read_text() == "log line\n"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".model.tmp")]


def test_incomplete_checkpoint_is_skipped_and_refused(tmp_path):
    from chatrlhf.training.checkpoint import COMPLETE, CheckpointError, CheckpointManager

    manager = CheckpointManager(str(tmp_path))
    good = tmp_path / "checkpoints" / "step-2"
    good.mkdir(parents=True)
    (good / COMPLETE).write_text(json.dumps({"step": 2, "engines": ["model"]}))
    (tmp_path / "checkpoints" / "step-4").mkdir()
    assert manager.latest() == str(good)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        manager.load(str(tmp_path / "checkpoints" / "step-4"), {"model": object()})


TIMING_KEYS = {"clock", "generation_s", "scoring_s", "training_s", "generated_tokens_per_s"}


def test_ppo_sigkill_then_resume_is_bit_exact(tmp_path, sft_model, data_cache, subprocess_env):
    """Step 3 resumes exactly: actor, critic, EMA, KL controller, sampling random state, data position and the
    position in the unsupervised (ptx) data."""
    ptx = tmp_path / "ptx.txt"
    ptx.write_text("\n".join(f"document {i} tells of {'abcdefgh'[i % 8] * (i % 5 + 1)} and more" for i in range(60)))
    args = ["--unsupervised_dataset_name", str(ptx), "--unsup_coef", "0.5",
            "--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
            "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "4",
            "--max_prompt_seq_len", "48", "--max_answer_seq_len", "6", "--max_steps", "6", "--eval_prompts", "4",
            "--save_interval", "2", "--enable_ema", "--target_kl", "0.1", "--data_output_path", data_cache,
            "--actor_learning_rate", "1e-3", "--critic_learning_rate", "1e-3", "--seed", "5"]

    def ppo(out: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(ROOT / "step3_rlhf" / "main.py"), "--output_dir", str(out), *args, *extra]
        return subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(ppo(whole))
    process = ppo(killed)
    wait_for(process, f"iteration {random.Random(5).choice([2, 4])}: checkpoint written")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert "resuming PPO at iteration" in finish(ppo(killed, "--resume"))
    for part in ("actor", "critic", "actor_ema"):
        expected, actual = load_file(whole / part / "model.safetensors"), load_file(killed / part / "model.safetensors")
        assert all(expected[k].equal(actual[k]) for k in expected), part
    first = json.loads((whole / "metrics.json").read_text())
    second = json.loads((killed / "metrics.json").read_text())

    def strip(history):
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]

    assert strip(second["history"]) == strip(first["history"])
    assert second["held_out"] == first["held_out"] and second["kl_coef"] == first["kl_coef"]


# Online DPO keeps the same state (the actor alone), so its resume is this path; its run is in test_online_dpo.
@pytest.mark.parametrize(("algorithm", "own"), [("grpo", ("--target_kl", "0.1")),
                                                ("reinforce_pp", ("--target_kl", "0.1"))])
def test_critic_free_sigkill_then_resume_is_bit_exact(algorithm, own, tmp_path, sft_model, data_cache,
                                                      subprocess_env):
    """Critic-free step 3 resumes exactly too: its checkpoints hold the actor alone (no critic, no reward model).
    ``own``: flags of the algorithm's own (an adaptive KL controller; online DPO's beta instead)."""
    reward_file = tmp_path / "shaped.py"
    reward_file.write_text("def score(prompt, response):\n    return len(set(response)) / 10\n")
    args = ["--algorithm", algorithm, "--num_samples_per_prompt", "2", "--reward_fn", f"{reward_file}:score",
            "--actor_model_name_or_path", sft_model, "--per_device_generation_batch_size", "2",
            "--per_device_training_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_prompt_seq_len", "48",
            "--max_answer_seq_len", "6", "--max_steps", "4", "--eval_prompts", "2", "--save_interval", "2",
            *own, "--num_warmup_steps", "0", "--actor_learning_rate", "1e-3", "--seed", "5",
            "--data_output_path", data_cache]

    def grpo(out: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(ROOT / "step3_rlhf" / "main.py"), "--output_dir", str(out), *args, *extra]
        return subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(grpo(whole))
    process = grpo(killed)
    wait_for(process, "iteration 2: checkpoint written")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert json.loads((killed / "checkpoints" / "step-2" / "complete.json").read_text())["engines"] == ["actor"]
    assert f"resuming {algorithm.upper()} at iteration 2" in finish(grpo(killed, "--resume"))
    expected = load_file(whole / "actor" / "model.safetensors")
    actual = load_file(killed / "actor" / "model.safetensors")
    assert all(expected[k].equal(actual[k]) for k in expected)
    assert not (killed / "critic").exists()
    first = json.loads((whole / "metrics.json").read_text())
    second = json.loads((killed / "metrics.json").read_text())

    def strip(history):
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]

    assert strip(second["history"]) == strip(first["history"])
    assert any(h.get("actor_loss", h.get("dpo_loss", 0)) != 0 for h in first["history"])
    assert second["held_out"] == first["held_out"] and second.get("kl_coef") == first.get("kl_coef")


def test_zero3_state_dict_holds_what_state_dict_holds():
    """The ZeRO-3 gathering path keeps persistent buffers only, so a saved LLaMA loads without unexpected keys
    (the rotary embedding's frequency buffers are not part of a state dict)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatrlhf.training.saving import gathered_state_dict

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=32))
    assert any("rotary" in name for name, _ in model.named_buffers())
    assert set(gathered_state_dict(model, zero_stage=3)) == set(model.state_dict())


def launch_two_ranks(step_main: str, out: Path, env: dict, *args: str) -> subprocess.Popen:
    """A step on two CPU ranks through DeepSpeed's launcher, in a session of its own so it can be killed whole."""
    from chatrlhf.utils.device import free_port

    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
               str(free_port()), str(ROOT / step_main), "--output_dir", str(out), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.multiprocess
@pytest.mark.parametrize("step", ["step1_sft", "step3_rlhf"])
def test_two_ranks_under_zero2_resume_bit_exact_after_sigkill(step, tmp_path, sft_model, data_cache,
                                                              subprocess_env):
    """Two ranks, ZeRO-2 (each rank holds its own optimizer shard in the checkpoint), the whole process tree
    killed after a checkpoint: the resumed run ends with the weights and losses of the uninterrupted one."""
    if step == "step1_sft":
        args = ["--data_output_path", data_cache, "--model_name_or_path", sft_model, "--zero_stage", "2", *STEP1,
                "--dropout", "0.1"]
        marker, resumed, weights = "step {}: checkpoint written", "resuming at step", ("model.safetensors",)
    else:
        args = ["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                "--actor_zero_stage", "2", "--critic_zero_stage", "2", "--per_device_generation_batch_size", "2",
                "--per_device_training_batch_size", "2", "--max_prompt_seq_len", "48", "--max_answer_seq_len", "6",
                "--max_steps", "4", "--eval_prompts", "2", "--save_interval", "2", "--seed", "5",
                "--actor_learning_rate", "1e-3", "--critic_learning_rate", "1e-3", "--data_output_path", data_cache]
        marker, resumed = "iteration {}: checkpoint written", "resuming PPO at iteration"
        weights = ("actor/model.safetensors", "critic/model.safetensors")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(launch_two_ranks(f"{step}/main.py", whole, subprocess_env, *args))
    process = launch_two_ranks(f"{step}/main.py", killed, subprocess_env, *args)
    wait_for(process, marker.format(2))
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks at once, as a lost node
    process.wait(timeout=60)
    assert resumed in finish(launch_two_ranks(f"{step}/main.py", killed, subprocess_env, *args, "--resume"))
    for part in weights:
        expected, actual = load_file(whole / part), load_file(killed / part)
        assert expected.keys() == actual.keys()
        for name in expected:
            assert expected[name].equal(actual[name]), f"{part}: {name}"
    first = json.loads((whole / "metrics.json").read_text())
    second = json.loads((killed / "metrics.json").read_text())
    history = comparable if step == "step1_sft" else strip_timing
    assert history(second["history"]) == history(first["history"])


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_a_finished_run_is_never_clobbered(tmp_path, sft_model, data_cache, subprocess_env):
    """Re-running without --resume refuses, and so does resuming under another batch size; the earlier run's
    checkpoints stay byte for byte."""
    out = tmp_path / "run"
    finish(start(out, data_cache, subprocess_env, "--model_name_or_path", sft_model))

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}

    before = snapshot()
    again = start(out, data_cache, subprocess_env, "--model_name_or_path", sft_model)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 2, output[-2000:]
    assert "pass --resume to continue it, or --overwrite_output_dir" in output
    changed = start(out, data_cache, subprocess_env, "--model_name_or_path", sft_model, "--resume",
                    "--per_device_train_batch_size", "8")
    output, _ = changed.communicate(timeout=600)
    assert changed.returncode == 2, output[-2000:]
    assert "batch size: 4 -> 8" in output
    assert snapshot() == before


def test_sigterm_during_step3_final_evaluation_still_saves(tmp_path, sft_model, data_cache, subprocess_env):
    """A scheduler's SIGTERM while the final evaluation runs lets the evaluation and the save finish."""
    out = tmp_path / "ppo"
    command = [sys.executable, str(ROOT / "step3_rlhf" / "main.py"), "--output_dir", str(out),
               "--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
               "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "4",
               "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "1", "--eval_prompts", "64",
               "--data_output_path", data_cache, "--seed", "5"]
    process = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    wait_for(process, "final evaluation and save")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM arrived during the final evaluation and save; it was let finish" in output
    for part in ("actor", "critic"):
        assert (out / part / "model.safetensors").is_file()


NAN_ON_RANK_1 = """
import os, sys
import torch
from chatrlhf.step1_sft import sft_task
from chatrlhf.step1_sft.main import main

real_loss, calls = sft_task.SFTTask.loss, [0]

def loss(self, engine, batch):
    value, stats = real_loss(self, engine, batch)
    calls[0] += 1
    bad = int(os.environ["RANK"]) == 1 and calls[0] >= int(os.environ["NAN_FROM"])
    return (value * float("nan") if bad and calls[0] < int(os.environ["NAN_UNTIL"]) else value), stats

sft_task.SFTTask.loss = loss
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.multiprocess
def test_a_nan_on_one_rank_is_skipped_by_both(tmp_path, sft_model, data_cache, subprocess_env):
    """A non-finite loss on rank 1 alone: both ranks skip that batch (no hang, no lone step); a run of them past
    --max_bad_steps stops both ranks with the reason."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    args = ["--data_output_path", data_cache, "--model_name_or_path", sft_model, *STEP1, "--max_bad_steps", "3"]
    from chatrlhf.utils.device import free_port

    def two_ranks(out: Path, nan_from: int, nan_until: int) -> subprocess.Popen:
        env = {**subprocess_env, "NAN_FROM": str(nan_from), "NAN_UNTIL": str(nan_until)}
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                   str(free_port()), str(script), "--output_dir", str(out), *args]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    output = finish(two_ranks(tmp_path / "once", 3, 4))
    assert "step 3: non-finite loss, batch skipped (1 so far)" in output
    assert json.loads((tmp_path / "once" / "metrics.json").read_text())["steps"] == 8
    stopped = two_ranks(tmp_path / "always", 3, 10**6)
    output, _ = stopped.communicate(timeout=600)
    assert stopped.returncode != 0
    assert "non-finite on some rank for 3 batches in a row" in output


FAILING_REWARD = """
import os

calls = [0]


def score(prompt, response):
    calls[0] += 1
    if os.environ.get("FAIL_AT_CALL") and calls[0] >= int(os.environ["FAIL_AT_CALL"]):
        raise ValueError("the grader is down")
    return len(set(response)) / 10
"""


def test_a_failing_reward_function_leaves_a_checkpoint_that_resumes_exactly(tmp_path, sft_model, data_cache,
                                                                            subprocess_env):
    """The function raises in iteration 3: the run stops naming iteration 2's checkpoint (no --save_interval), and
    resuming from it ends where an uninterrupted run ends."""
    reward_file = tmp_path / "grader.py"
    reward_file.write_text(FAILING_REWARD)
    args = ["--algorithm", "rloo", "--num_samples_per_prompt", "2", "--reward_fn", f"{reward_file}:score",
            "--actor_model_name_or_path", sft_model, "--per_device_generation_batch_size", "2",
            "--per_device_training_batch_size", "2", "--max_prompt_seq_len", "48", "--max_answer_seq_len", "6",
            "--max_steps", "4", "--eval_prompts", "2", "--actor_learning_rate", "1e-3", "--seed", "5",
            "--data_output_path", data_cache]

    def rloo(out: Path, env: dict, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(ROOT / "step3_rlhf" / "main.py"), "--output_dir", str(out), *args, *extra]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    whole, failed = tmp_path / "whole", tmp_path / "failed"
    finish(rloo(whole, subprocess_env))
    # Held-out scoring at the start makes 10 calls (2 prompts greedy, 8 sampled answers); each iteration 4 more.
    process = rloo(failed, {**subprocess_env, "FAIL_AT_CALL": str(10 + 2 * 4 + 1)})
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 2, output[-3000:]
    assert "the grader is down" in output and "iteration 2's checkpoint was written" in output
    assert "resuming RLOO at iteration 2" in finish(rloo(failed, subprocess_env, "--resume"))
    expected = load_file(whole / "actor" / "model.safetensors")
    actual = load_file(failed / "actor" / "model.safetensors")
    assert all(expected[k].equal(actual[k]) for k in expected)
    first = json.loads((whole / "metrics.json").read_text())
    second = json.loads((failed / "metrics.json").read_text())
    assert strip_timing(second["history"]) == strip_timing(first["history"])


def test_empty_answers_past_the_limit_stop_with_a_checkpoint(tmp_path, sft_model, data_cache, subprocess_env):
    """One-token answers count as empty: --stop_empty_share_above 0.5 stops at iteration 1, with its checkpoint."""
    out = tmp_path / "empty"
    command = [sys.executable, str(ROOT / "step3_rlhf" / "main.py"), "--output_dir", str(out),
               "--algorithm", "reinforce_pp", "--reward_fn", "synthetic_tasks", "--actor_model_name_or_path",
               sft_model, "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "2",
               "--max_prompt_seq_len", "48", "--max_answer_seq_len", "1", "--max_steps", "4", "--eval_prompts", "2",
               "--seed", "5", "--data_output_path", data_cache, "--stop_empty_share_above", "0.5"]
    process = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 2, output[-3000:]
    assert "warning: iteration 1: 100% of the answers are empty" in output
    assert "step 3 stopped at iteration 1: 100% of the answers were empty, above --stop_empty_share_above 0.5" in output
    assert (out / "checkpoints" / "step-1" / "complete.json").is_file()
