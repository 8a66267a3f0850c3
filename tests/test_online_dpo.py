"""Online DPO (``--algorithm online_dpo``): the best-over-worst pairs, the loss against ``preference_loss`` on
hand-computed sequence sums, the flag checks, and a short real run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatrlhf.step3_rlhf.actor_losses import online_dpo
from chatrlhf.step3_rlhf.advantages import preference_pairs
from chatrlhf.step3_rlhf.algorithms import REGISTRY, LossSettings
from chatrlhf.step3_rlhf.config import AlgorithmConfig
from chatrlhf.step3_rlhf.experience import Experience
from chatrlhf.step3_rlhf.flags import build_parser, explicit_flags, run_settings
from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.training.preference_losses import LossConfig, preference_loss
from chatrlhf.training.validation import ConfigError


def _settings(preference: LossConfig, samples: int) -> LossSettings:
    return LossSettings(cliprange=0.2, clip_high=0.2, aggregation="token_mean", norm_length=4, sequence_level=False,
                        kl_in_loss=False, kl_coef=0.1, kl_estimator="k1", entropy_coef=0.0,
                        samples_per_prompt=samples, preference=preference)


def _experience(rewards: list[float], ref_logprobs: torch.Tensor, mask: torch.Tensor) -> Experience:
    rows, width = mask.shape
    scores = torch.tensor(rewards)
    return Experience(sequences=torch.zeros(rows, width + 1, dtype=torch.long),
                      attention_mask=torch.ones(rows, width + 1, dtype=torch.long), answer_mask=mask.long(),
                      prompt_width=1, ref_logprobs=ref_logprobs, scores=scores, rewards_in=scores,
                      prompts=[""] * rows, tasks=[""] * rows)


def test_pairs_are_each_prompts_best_over_its_worst_and_ties_give_none():
    rewards = torch.tensor([0.2, 0.9, 0.1,  # best row 1, worst row 2
                            0.5, 0.5, 0.5,  # all equal: no pair
                            1.0, 0.0, 1.0,  # two best: the first; one worst
                            0.3, 0.3, 0.7])  # two worst: the first
    chosen, rejected = preference_pairs(rewards, 3)
    assert chosen.tolist() == [1, 6, 11] and rejected.tolist() == [2, 7, 9]
    with pytest.raises(ValueError, match="groups of 5"):
        preference_pairs(rewards, 5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_loss_is_preference_loss_on_summed_answer_logprobs(loss_type):
    """Two prompts of two answers, the second answers' last token padding; the second prompt's answers tie."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -0.5, -0.2], [-2.0, -1.0, -9.0], [-0.3, -0.3, -0.3], [-1.0, -5.0, -5.0]],
                            requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4, -0.4], [-1.5, -1.5, -7.0], [-0.3, -0.3, -0.3], [-1.0, -1.0, -1.0]])
    exp = _experience([0.0, 1.0, 0.5, 0.5], ref, mask)  # the second answer is chosen over the first
    config = LossConfig(loss_type=loss_type, beta=0.25)
    loss, stats = online_dpo(exp, logprobs, torch.zeros_like(logprobs), _settings(config, 2))
    # By hand: chosen sums -2.0 - 1.0 = -3.0 (policy), -1.5 - 1.5 = -3.0 (reference); rejected -1.7 and -2.0.
    expected = preference_loss(config, torch.tensor([-3.0]), torch.tensor([-1.7]), torch.tensor([-3.0]),
                               torch.tensor([-2.0]))
    assert float(loss.detach()) == pytest.approx(float(expected.losses[0]))
    if loss_type == "sigmoid":
        h = (-3.0 + 3.0) - (-1.7 + 2.0)
        assert float(loss.detach()) == pytest.approx(float(-torch.nn.functional.logsigmoid(torch.tensor(0.25 * h))))
    assert stats["dpo_pair_share"] == 0.5
    assert stats["dpo_chosen_reward"] == pytest.approx(0.0)
    assert stats["dpo_rejected_reward"] == pytest.approx(0.25 * 0.3)
    assert stats["dpo_reward_margin"] == pytest.approx(-0.25 * 0.3) and stats["dpo_reward_accuracy"] == 0.0
    loss.backward()
    assert logprobs.grad[2:].abs().sum() == 0 and logprobs.grad[1, 2] == 0  # tied prompt and padding: no gradient
    assert logprobs.grad[0, 0] != 0 and logprobs.grad[1, 0] != 0


def test_a_micro_batch_without_pairs_gives_a_zero_loss_that_still_backpropagates():
    logprobs = torch.full((2, 2), -1.0, requires_grad=True)
    exp = _experience([1.0, 1.0], torch.zeros(2, 2), torch.ones(2, 2))
    loss, stats = online_dpo(exp, logprobs, torch.zeros(2, 2), _settings(LossConfig(), 2))
    assert float(loss.detach()) == 0.0 and stats["dpo_pair_share"] == 0.0 and "dpo_loss" not in stats
    loss.backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="splits a prompt's --num_samples_per_prompt 4"):
        online_dpo(exp, logprobs, torch.zeros(2, 2), _settings(LossConfig(), 4))


def test_the_algorithm_defaults_and_its_loss_hook():
    config = AlgorithmConfig(name="online_dpo")
    assert config.num_samples_per_prompt == 2 and not config.uses_critic and not config.kl_weighted
    assert config.preference_loss() == LossConfig(loss_type="sigmoid", beta=0.1)
    assert not config.advantages_need_old_logprobs
    assert AlgorithmConfig(name="grpo", num_samples_per_prompt=2).preference_loss() is None
    with pytest.raises(TypeError, match="online_dpo has no advantages"):
        REGISTRY["online_dpo"].advantages([], None)
    with pytest.raises(ConfigError, match="--num_samples_per_prompt 2 or more"):
        AlgorithmConfig(name="online_dpo", num_samples_per_prompt=1)


def _settings_for(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_settings(args, explicit_flags(parser, argv, args))


@pytest.mark.parametrize(("extra", "message"), [
    (["--algorithm", "grpo", "--num_samples_per_prompt", "2", "--dpo_beta", "0.2"],
     "--dpo_beta applies to --algorithm online_dpo only (got --algorithm grpo)"),
    (["--dpo_loss_type", "ipo"], "--dpo_loss_type applies to --algorithm online_dpo only (got --algorithm ppo)"),
    (["--algorithm", "online_dpo", "--dpo_beta", "0"], "--dpo_beta 0.0: must be a positive number"),
    (["--algorithm", "online_dpo", "--num_samples_per_prompt", "4", "--per_device_training_batch_size", "6",
      "--per_device_generation_batch_size", "3"],
     "--per_device_training_batch_size 6 must be a multiple of --num_samples_per_prompt 4"),
    (["--algorithm", "online_dpo", "--cliprange", "0.2", "--kl_mode", "loss"],
     "--cliprange, --kl_mode mean nothing to --algorithm online_dpo"),
    (["--algorithm", "online_dpo", "--whiten_advantages"], "--whiten_advantages means nothing to --algorithm "
                                                           "online_dpo"),
])
def test_flag_errors(extra, message, tmp_path):
    base = ["--output_dir", str(tmp_path / "o"), "--reward_fn", "synthetic_tasks"]
    with pytest.raises(ConfigError) as error:
        _settings_for(base + extra)
    assert message in str(error.value)


def test_flags_set_the_loss_and_the_kl_weight_gets_one_warning(tmp_path, capsys):
    run = _settings_for(["--output_dir", str(tmp_path / "o"), "--reward_fn", "synthetic_tasks", "--algorithm",
                         "online_dpo", "--dpo_beta", "0.3", "--dpo_loss_type", "ipo", "--kl_ctl", "0",
                         "--lam", "0.9"])
    assert run.algorithm.preference_loss() == LossConfig(loss_type="ipo", beta=0.3)
    assert run.algorithm.num_samples_per_prompt == 2 and run.critic is None
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == ["warning: --algorithm online_dpo has no use for --kl_ctl; ignoring it",
                        "warning: --algorithm online_dpo trains no critic; ignoring --lam"]


def test_the_verifier_script_switches_to_online_dpo_with_one_added_flag(tmp_path, capsys):
    """What ``chatrlhf e2e --step3-algorithm online_dpo --reward-fn synthetic_tasks`` runs: the tiny verifier
    script's own flags plus ``--algorithm online_dpo`` (given after the script's ``--algorithm grpo``)."""
    import re

    scripts = Path(__file__).resolve().parents[1] / "step3_rlhf" / "training_scripts"
    script = (scripts / "tiny" / "single_gpu" / "run_tiny_verifier.sh").read_text()
    flags = [token for line in script.splitlines() if re.match(r"\s+--\w+", line) and "$" not in line
             for token in line.strip().rstrip("\\").split()]
    run = _settings_for([*flags, "--actor_model_name_or_path", "tiny-llama", "--output_dir", str(tmp_path / "o"),
                         "--algorithm", "online_dpo"])
    assert run.algorithm.name == "online_dpo" and run.algorithm.num_samples_per_prompt == 16
    assert "--kl_ctl; ignoring it" in capsys.readouterr().out


def test_a_short_run_trains_the_actor_and_logs_the_pairs(sft_model, tmp_path, data_cache):
    from safetensors.torch import load_file

    from chatrlhf.training.model_card import CARD_FILE

    # The checker alone gives the tiny model's short answers 0 each; distinct characters rank them apart.
    shaped = tmp_path / "shaped.py"
    shaped.write_text("def score(prompt, response):\n    return len(set(response)) / 10\n")
    out = tmp_path / "odpo"
    assert ppo_main(["--algorithm", "online_dpo", "--reward_fn", "synthetic_tasks", "--reward_fn", f"{shaped}:score",
                     "--num_samples_per_prompt", "4",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "4",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "2",
                     "--eval_prompts", "0", "--num_warmup_steps", "0", "--actor_learning_rate", "1e-3",
                     "--data_output_path", data_cache]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert len(history) == 2 and metrics["dpo"] == {"loss_type": "sigmoid", "beta": 0.1}
    assert "kl_coef" not in metrics and "kl_coef" not in history[0]
    for step in history:
        assert "critic_loss" not in step and "actor_loss" not in step and "flat_groups" in step
        assert step["dpo_pair_share"] == pytest.approx(1 - step["flat_groups"])
    trained = [step for step in history if step["dpo_pair_share"] > 0]
    assert trained, "no prompt's answers differed in reward: the run taught nothing"
    for key in ("dpo_loss", "dpo_chosen_reward", "dpo_rejected_reward", "dpo_reward_accuracy", "dpo_reward_margin"):
        assert key in trained[0], key
    assert "RLHF with Online DPO" in (out / "actor" / CARD_FILE).read_text()
    before, after = load_file(Path(sft_model) / "model.safetensors"), load_file(out / "actor" / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before.keys() & after.keys())
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "actor") is not None
