"""A demo that a broken RL update cannot pass: on the same seed and budget, GRPO's real update raises its reward,
while the same run with the advantages' sign flipped lowers it and a zero learning rate leaves it where it was.

The reward (the share of an answer's characters that are the letter ``s``) is one the barely trained step-1
model can move within a few iterations, so the test stays small; the checker-reward gain on the default data is
the e2e's to show.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from chatrlhf.step3_rlhf import advantages
from chatrlhf.step3_rlhf.main import main as ppo_main

ITERATIONS = 10
WINDOW = 3


def _reward_file(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "letter_reward.py").write_text(textwrap.dedent("""\
        def score(prompt, response):
            text = response.strip()
            return text.count("s") / max(len(text), 1)
        """))
    return f"{folder / 'letter_reward.py'}:score"


def _reward_gain(sft_model: str, out: Path, data_cache: str, reward: str, learning_rate: str) -> float:
    """The mean training reward of the last ``WINDOW`` iterations minus that of the first ``WINDOW``."""
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", reward, "--num_samples_per_prompt", "8",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "32",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "12", "--max_steps", str(ITERATIONS),
                     "--eval_prompts", "0", "--num_warmup_steps", "0", "--kl_ctl", "0",
                     "--actor_learning_rate", learning_rate, "--seed", "7",
                     "--data_output_path", data_cache]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    rewards = [step["reward_fn_mean"] for step in history]
    assert len(rewards) == ITERATIONS
    return sum(rewards[-WINDOW:]) / WINDOW - sum(rewards[:WINDOW]) / WINDOW


@pytest.fixture(scope="module")
def reward(tmp_path_factory) -> str:
    return _reward_file(tmp_path_factory.mktemp("rewards"))


def test_the_real_update_gains_what_a_flipped_or_frozen_one_does_not(sft_model, tmp_path, data_cache, reward,
                                                                      monkeypatch):
    real = _reward_gain(sft_model, tmp_path / "real", data_cache, reward, "3e-3")
    frozen = _reward_gain(sft_model, tmp_path / "frozen", data_cache, reward, "0")
    original = advantages.grpo_advantages
    monkeypatch.setattr(advantages, "grpo_advantages", lambda *args, **kwargs: -original(*args, **kwargs))
    flipped = _reward_gain(sft_model, tmp_path / "flipped", data_cache, reward, "3e-3")
    assert real > 0.05, (real, frozen, flipped)
    assert flipped < real - 0.05 and frozen < real - 0.05, (real, frozen, flipped)
    assert flipped < 0.02, (real, frozen, flipped)
