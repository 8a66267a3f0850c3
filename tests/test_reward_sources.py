"""Several reward sources in step 3: repeated --reward_fn with --reward_weights, each source's mean logged and
reported, and the flag errors that guard the weights."""
from __future__ import annotations

import json

import pytest

from chatrlhf.applications import e2e_rlhf
from chatrlhf.step3_rlhf.flags import build_parser, explicit_flags, run_settings
from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.training.validation import ConfigError

LENGTH_FN = "def shortness(prompt, response):\n    return -len(response.split()) / 10.0\n"


def settings(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_settings(args, explicit_flags(parser, argv, args))


@pytest.fixture
def length_file(tmp_path):
    path = tmp_path / "length_reward.py"
    path.write_text(LENGTH_FN)
    return f"{path}:shortness"


def test_weights_go_to_the_functions_in_order_then_to_the_reward_model(tmp_path, length_file):
    base = ["--output_dir", str(tmp_path / "o"), "--actor_model_name_or_path", "tiny-opt",
            "--critic_model_name_or_path", "tiny-opt", "--reward_fn", "synthetic_tasks", "--reward_fn", length_file]
    run = settings([*base, "--reward_model_name_or_path", "tiny-opt", "--reward_weights", "1.0", "0.25", "0.5"])
    assert run.rewards.fn_specs == ("synthetic_tasks", length_file)
    assert run.rewards.fn_weights == (1.0, 0.25) and run.rewards.model_weight == 0.5
    assert [fn.short_name for fn in run.reward_fns] == ["synthetic_tasks", "length_reward.py:shortness"]
    no_model = settings([*base, "--algorithm", "grpo", "--num_samples_per_prompt", "2"])
    assert no_model.rewards.model_path is None and no_model.rewards.fn_weights == (1.0, 1.0)
    with pytest.raises(ConfigError, match="--reward_weights has 2 weights for 2 --reward_fn and the reward model"):
        settings([*base, "--reward_model_name_or_path", "tiny-opt", "--reward_weights", "1.0", "0.25"])
    with pytest.raises(ConfigError, match="--reward_weights and --reward_fn_weight both set weights"):
        settings([*base, "--reward_weights", "1", "1", "--reward_fn_weight", "2"])


def test_two_functions_train_with_their_weighted_sum_and_each_mean_is_logged(sft_model, tmp_path, data_cache,
                                                                            length_file):
    out = tmp_path / "two"
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", "synthetic_tasks", "--reward_fn", length_file,
                     "--reward_weights", "1.0", "0.5", "--num_samples_per_prompt", "2",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "4",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "2",
                     "--eval_prompts", "0", "--num_warmup_steps", "0", "--data_output_path", data_cache]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    for step in history:
        checker = step["reward_fn_mean/synthetic_tasks"]
        length = step["reward_fn_mean/length_reward.py:shortness"]
        assert "reward_fn_mean" not in step and length < 0
        assert step["reward_mean"] == pytest.approx(1.0 * checker + 0.5 * length, abs=1e-5)
    card = (out / "actor" / "README.md").read_text()
    assert "1.0 x function `synthetic_tasks` + 0.5 x function" in card


def test_the_e2e_runner_passes_every_reward_function_to_step_3(tmp_path, length_file):
    args = e2e_rlhf.build_parser().parse_args(["--output-dir", str(tmp_path), "--actor-model", "tiny-opt",
                                               "--step3-algorithm", "grpo", "--reward-fn", "synthetic_tasks",
                                               "--reward-fn", length_file])
    plan = e2e_rlhf.make_plan(args)
    assert plan.verifier_only and plan.steps == (1, 3)
    command = plan.command(3)
    assert command[command.index("--reward_fn") + 1] == "synthetic_tasks"
    assert command[-2:] == ["--reward_fn", length_file]


def test_a_config_file_lists_the_functions_and_the_command_line_replaces_the_list(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("reward_fn: [synthetic_tasks, other.py:f]\nreward_weights: [1.0, 0.5]\n")
    parser = build_parser()
    from_file = parser.parse_args(["--config", str(config)])
    assert from_file.reward_fn == ["synthetic_tasks", "other.py:f"] and from_file.reward_weights == [1.0, 0.5]
    replaced = parser.parse_args(["--config", str(config), "--reward_fn", "mine.py:g"])
    assert replaced.reward_fn == ["mine.py:g"]
    config.write_text("reward_fn: synthetic_tasks\n")
    assert parser.parse_args(["--config", str(config)]).reward_fn == ["synthetic_tasks"]
