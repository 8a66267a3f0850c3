"""Step 3's critic-free algorithms (GRPO, RLOO, REINFORCE++), the algorithm registry, the loss options, and reward
functions."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from chatrlhf.step3_rlhf import algorithms
from chatrlhf.step3_rlhf.advantages import (
    GROUP_STD_EPS,
    broadcast,
    discounted_returns,
    flat_group_fraction,
    grpo_advantages,
    rloo_advantages,
    sequence_rewards,
    whiten_across_ranks,
)
from chatrlhf.step3_rlhf.algorithms import AdvantageSettings, Algorithm
from chatrlhf.step3_rlhf.config import AlgorithmConfig, PPOConfig, RewardConfig
from chatrlhf.step3_rlhf.experience import Experience, repeat_prompts
from chatrlhf.step3_rlhf.flags import build_parser, explicit_flags
from chatrlhf.step3_rlhf.kl_control import KLController
from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.step3_rlhf.ppo_math import aggregate, kl_penalty, logprobs_and_entropy, policy_loss
from chatrlhf.step3_rlhf.reward_functions import RewardFunction, RewardFunctionError, absolute_spec
from chatrlhf.training.validation import ConfigError

ADD_PROMPT = "\n\nHuman: What is 3 plus 4?\n\nAssistant:"


# ----- the estimators, against hand-computed numbers
def test_grpo_advantages_are_group_normalised():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (std + GROUP_STD_EPS) * s for s in (1, -1, -1, 1)] + [0.0] * 4
    assert grpo_advantages(rewards, 4).tolist() == pytest.approx(expected)
    assert grpo_advantages(rewards, 4, scale=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    assert flat_group_fraction(rewards, 4) == 0.5
    with pytest.raises(ValueError, match="groups of 3"):
        grpo_advantages(rewards, 3)


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert rloo_advantages(rewards, 3).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0])


def test_sequence_rewards_clip_the_score_and_subtract_the_kl():
    kl = torch.tensor([[0.5, 0.25], [0.0, 0.0]])
    rewards = sequence_rewards(torch.tensor([9.0, -1.0]), kl, kl_coef=0.2, clip_reward_value=5.0)
    assert rewards.tolist() == pytest.approx([5.0 - 0.2 * 0.75, -1.0])
    assert sequence_rewards(torch.tensor([9.0]), None, 0.2, 5.0).tolist() == [5.0]
    assert broadcast(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])).tolist() == [
        [2.0, 2.0], [-1.0, 0.0]]


def test_reinforce_returns_and_global_normalisation():
    returns = discounted_returns(torch.tensor([[1.0, 0.0, 2.0, 9.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 0.5)
    assert returns[0].tolist() == pytest.approx([1.5, 1.0, 2.0, 0.0])
    parts = whiten_across_ranks([returns, torch.tensor([[3.0]])], [torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
                                                                   torch.ones(1, 1)])
    tokens = [1.5, 1.0, 2.0, 3.0]
    mean = sum(tokens) / 4
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 4 + 1e-8)
    assert parts[0][0].tolist() == pytest.approx([(1.5 - mean) / std, (1.0 - mean) / std, (2.0 - mean) / std, 0.0])
    assert parts[1].item() == pytest.approx((3.0 - mean) / std)


def test_kl_estimators_k1_k2_k3():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * 0.5**2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)


def test_loss_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(16 / 4)
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx((2 + 10) / 2)


def test_asymmetric_clipping_and_aggregation_reach_the_policy_loss():
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.5, 1.5], [0.5, 1.0]]))
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2, cliprange_high=0.28)
    # Row 0: ratio 1.5 clipped to 1.28; row 1: ratio 0.5 with a negative advantage, clipped to 0.8.
    assert loss.item() == pytest.approx((-1.28 - 1.28 + 0.8) / 3)
    assert stats["clip_frac"] == pytest.approx(1.0)
    per_sequence, _ = policy_loss(new, old, adv, mask, 0.2, 0.28, "sequence_mean")
    assert per_sequence.item() == pytest.approx((-1.28 + 0.8) / 2)
    symmetric, _ = policy_loss(new, old, adv, mask, 0.2)
    assert symmetric.item() == pytest.approx((-1.2 - 1.2 + 0.8) / 3)


def test_entropy_head_carries_a_gradient():
    logits = torch.randn(3, 5, requires_grad=True)
    logprobs, entropy = logprobs_and_entropy(logits, torch.tensor([0, 1, 2]))
    probs = torch.softmax(logits, -1)
    assert entropy.detach().tolist() == pytest.approx((-(probs * probs.log()).sum(-1)).tolist(), abs=1e-6)
    entropy.sum().backward()
    assert logits.grad.abs().sum() > 0


def _experience(scores, ref_logprobs, mask, old_logprobs=None, kl=None) -> Experience:
    rows, width = mask.shape
    return Experience(sequences=torch.zeros(rows, width + 1, dtype=torch.long),
                      attention_mask=torch.ones(rows, width + 1, dtype=torch.long), answer_mask=mask.long(),
                      prompt_width=1, ref_logprobs=ref_logprobs, scores=scores, rewards_in=scores,
                      prompts=[""] * rows, tasks=[""] * rows, old_logprobs=old_logprobs, kl=kl)


def _trainer(algorithm: AlgorithmConfig, kl_coef: float):
    from chatrlhf.step3_rlhf.trainer import PPOTrainer

    trainer = PPOTrainer.__new__(PPOTrainer)
    trainer.algorithm, trainer.ppo, trainer.kl = algorithm, PPOConfig(clip_reward_value=5.0), KLController(kl_coef)
    return trainer


def test_grpo_groups_span_micro_batches_and_take_the_kl_into_the_reward():
    """A prompt's two samples sit in different micro-batches; with --kl_mode reward the summed KL counts."""
    mask = torch.ones(1, 2)
    first = _experience(torch.tensor([1.0]), torch.zeros(1, 2), mask, kl=torch.tensor([[0.2, 0.2]]))
    rest = _experience(torch.tensor([3.0, 0.0, 0.0]), torch.zeros(3, 2), torch.ones(3, 2), kl=torch.zeros(3, 2))
    trainer = _trainer(AlgorithmConfig(name="grpo", num_samples_per_prompt=2, kl_mode="reward"), kl_coef=0.5)
    trainer._critic_free_advantages([first, rest])
    rewards = (1.0 - 0.5 * 0.4, 3.0)
    spread = abs(rewards[1] - rewards[0]) / math.sqrt(2) + GROUP_STD_EPS
    low = (rewards[0] - sum(rewards) / 2) / spread
    assert first.advantages[0].tolist() == pytest.approx([low, low])
    assert rest.advantages.flatten().tolist() == pytest.approx([-low, -low, 0, 0, 0, 0])


def test_reinforce_pp_folds_the_token_kl_into_discounted_returns():
    lp, ref = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, -1.0]])
    a = _experience(torch.tensor([2.0]), ref, torch.ones(1, 2), old_logprobs=lp)
    b = _experience(torch.tensor([-1.0]), torch.full((1, 2), -1.0), torch.tensor([[1.0, 0.0]]),
                    old_logprobs=torch.full((1, 2), -1.0))
    _trainer(AlgorithmConfig(name="reinforce_pp"), kl_coef=0.5)._critic_free_advantages([a, b])
    # Token rewards: a = (-0.5 x 0.5, 2), b = (-1); returns: a = (1.75, 2), b = (-1).
    tokens = [1.75, 2.0, -1.0]
    mean = sum(tokens) / 3
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 3 + 1e-8)
    assert a.advantages[0].tolist() == pytest.approx([(1.75 - mean) / std, (2.0 - mean) / std])
    assert b.advantages[0].tolist() == pytest.approx([(-1.0 - mean) / std, 0.0])


def test_a_checkpoint_of_another_algorithm_is_refused():
    from chatrlhf.training.checkpoint import CheckpointError

    trainer = _trainer(AlgorithmConfig(name="rloo", num_samples_per_prompt=2), kl_coef=0.1)
    with pytest.raises(CheckpointError, match="written by --algorithm grpo; resume with --algorithm grpo"):
        trainer.load_state({"algorithm": "grpo", "steps": 2, "history": [], "kl": {}})
    with pytest.raises(CheckpointError, match="--algorithm ppo"):
        trainer.load_state({"steps": 2, "history": [], "kl": {}})


def test_repeated_prompts_are_adjacent():
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "prompt": ["a", "b"], "task": ["add", "sort"]}
    out = repeat_prompts(batch, 3)
    assert out["input_ids"][:, 0].tolist() == [1, 1, 1, 3, 3, 3]
    assert out["prompt"] == ["a", "a", "a", "b", "b", "b"] and out["task"][3:] == ["sort"] * 3
    assert repeat_prompts(batch, 1) is batch


# ----- settings
def test_algorithm_defaults_and_checks():
    assert not AlgorithmConfig().kl_in_loss and AlgorithmConfig().uses_critic
    grpo = AlgorithmConfig(name="grpo", num_samples_per_prompt=4)
    assert grpo.kl_in_loss and grpo.default_kl_estimator == "k3" and not grpo.uses_critic
    assert not AlgorithmConfig(name="grpo", num_samples_per_prompt=4, kl_mode="reward").kl_in_loss
    assert AlgorithmConfig(name="reinforce_pp").advantages_need_old_logprobs
    with pytest.raises(ConfigError, match="--num_samples_per_prompt 2 or more"):
        AlgorithmConfig(name="rloo")
    with pytest.raises(ConfigError, match="--scale_rewards applies to --algorithm grpo only"):
        AlgorithmConfig(name="rloo", num_samples_per_prompt=2, scale_rewards="none")
    with pytest.raises(ConfigError, match="--reward_fn_format_credit applies to --reward_fn synthetic_tasks"):
        RewardConfig(fn_specs=("/x.py:f",), fn_format_credit=0.5)
    with pytest.raises(ConfigError, match="no reward source"):
        RewardConfig()


def test_flag_errors_come_before_any_model_loads(tmp_path, capsys, monkeypatch):
    (tmp_path / "rewards.py").write_text("def other(prompt, response):\n    return 0.0\n")
    base = ["--output_dir", str(tmp_path / "o"), "--actor_model_name_or_path", "tiny-opt"]
    cases = [
        (["--algorithm", "grpo"], "--num_samples_per_prompt 2 or more (got 1)"),
        (["--algorithm", "rloo", "--num_samples_per_prompt", "3", "--per_device_generation_batch_size", "2",
          "--per_device_training_batch_size", "4"],
         "2 prompts x --num_samples_per_prompt 3 x --generation_batches 1 = 6 completions per rank is not a "
         "multiple of --per_device_training_batch_size 4"),
        (["--reward_fn", "nowhere.py:score"], f"no such file {tmp_path / 'nowhere.py'}"),
        (["--reward_fn", str(tmp_path / "rewards.py") + ":score"], "has no attribute 'score' (its functions: other)"),
        (["--reward_fn", "no_such_package_x.sub:score"], "no module named 'no_such_package_x'"),
        (["--reward_fn", "score"], "not a built-in reward function (synthetic_tasks)"),
        (["--algorithm", "grpo", "--num_samples_per_prompt", "2", "--reward_fn", "synthetic_tasks",
          "--normalize_reward"], "--normalize_reward uses the reward model's score statistics"),
    ]
    monkeypatch.chdir(tmp_path)
    for extra, message in cases:
        assert ppo_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def _run_for(argv: list[str]):
    from chatrlhf.step3_rlhf.flags import run_settings

    parser = build_parser()
    args = parser.parse_args(argv)
    return run_settings(args, explicit_flags(parser, argv, args))


def test_critic_flags_under_a_critic_free_algorithm_give_one_warning_line(tmp_path, capsys):
    grpo = ["--algorithm", "grpo", "--num_samples_per_prompt", "2", "--critic_model_name_or_path", "tiny-opt",
            "--critic_learning_rate", "5e-6", "--lam", "0.95", "--cliprange_value", "0.2", "--critic_zero_stage", "0"]
    run = _run_for(["--output_dir", str(tmp_path / "a"), *grpo])
    lines = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    # Given at their default values they still count; the critic's path is kept: it names the reward model.
    assert lines == ["warning: --algorithm grpo trains no critic; ignoring --cliprange_value, "
                     "--critic_learning_rate, --critic_zero_stage, --lam"]
    assert run.critic is None and run.rewards.model_path == "tiny-opt"
    _run_for(["--output_dir", str(tmp_path / "b"), *grpo, "--reward_fn", "synthetic_tasks"])
    assert "--critic_model_name_or_path, --critic_zero_stage" in capsys.readouterr().out
    ppo = _run_for(["--output_dir", str(tmp_path / "p"), "--reward_fn", "synthetic_tasks", "--lam", "0.9"])
    assert "warning" not in capsys.readouterr().out
    assert ppo.critic is not None and ppo.rewards.model_path is None


# ----- reward functions
def test_synthetic_tasks_reward_and_its_format_credit():
    plain, credited = RewardFunction.load("synthetic_tasks"), RewardFunction.load("synthetic_tasks", 0.25)
    responses = [" 3 plus 4 is 7.", " 3 plus 4 is 8.", " seven", "3 plus 4 is 7.<|endoftext|>"]
    assert plain.scores([ADD_PROMPT] * 4, responses).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert credited.scores([ADD_PROMPT] * 4, responses).tolist() == [1.0, 0.25, 0.0, 1.0]
    partial = RewardFunction.load("synthetic_tasks", 0.1, 0.4)
    sums = [" 3 plus 4 is 7.", " 3 plus 4 is 17.", " 3 plus 4 is 8.", " seven"]
    assert partial.scores([ADD_PROMPT] * 4, sums).tolist() == pytest.approx([1.0, 0.1 + 0.4 / 2, 0.1, 0.0])
    with pytest.raises(ConfigError, match="add up to less than the 1.0"):
        RewardConfig(fn_specs=("synthetic_tasks",), fn_format_credit=0.5, fn_partial_credit=0.5)


def test_a_broken_reward_function_names_itself_and_the_sample(tmp_path):
    (tmp_path / "bad.py").write_text(textwrap.dedent("""\
        def score(prompt, response):
            return {"x": 1}[response]


        def nothing(prompt, response):
            return None
        """))
    spec = absolute_spec(str(tmp_path / "bad.py") + ":score")
    prompts = [ADD_PROMPT, "\n\nHuman: " + "Reverse the word banana. " * 10 + "\n\nAssistant:"]
    with pytest.raises(RewardFunctionError) as caught:
        RewardFunction.load(spec).scores(prompts, ["x", "oops"])
    message = str(caught.value)
    assert f"--reward_fn {spec} on sample 1 of the batch" in message
    assert repr(prompts[1][:80]) in message and prompts[1][:81] not in message
    assert "raised KeyError: 'oops'" in message and f"{tmp_path / 'bad.py'}:2" in message
    with pytest.raises(RewardFunctionError, match="on sample 0 .* returned None, not a finite number"):
        RewardFunction.load(spec.replace(":score", ":nothing")).scores(prompts, ["x", "x"])


# ----- whole runs on the tiny step-1 model
def _history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def test_grpo_with_the_checker_trains_the_actor_without_critic_or_reward_model(
        sft_model, tmp_path, data_cache, built_engines):
    from safetensors.torch import load_file

    from chatrlhf.training.checkpoint import COMPLETE

    out = tmp_path / "grpo"
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", "synthetic_tasks", "--num_samples_per_prompt", "4",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "4",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "2",
                     "--eval_prompts", "2", "--save_interval", "2", "--num_warmup_steps", "0",
                     "--actor_learning_rate", "1e-3", "--entropy_coef", "0.05",
                     "--data_output_path", data_cache]) == 0
    engines = built_engines["engines"]
    assert engines.critic is None and engines.reward is None
    assert not (out / "critic").exists()
    assert json.loads((out / "checkpoints" / "step-2" / COMPLETE).read_text())["engines"] == ["actor"]
    history = _history(out)
    assert len(history) == 2
    for step in history:
        for key in ("reward_fn_mean", "accuracy", "kl_loss", "entropy", "actor_loss", "actor_total_loss",
                    "flat_groups", "kl_to_ref"):
            assert key in step, key
        assert "critic_loss" not in step and "reward_model_mean" not in step
        assert step["reward_fn_mean"] == step["accuracy"] == step["reward_mean"]
    assert history[1]["kl_to_ref"] != 0.0
    before, after = load_file(Path(sft_model) / "model.safetensors"), load_file(out / "actor" / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before.keys() & after.keys())


def test_a_reward_file_given_relative_to_the_working_directory(sft_model, tmp_path, data_cache, monkeypatch):
    """The file is found from the directory the flags were parsed in, whatever the directory later; the
    function gets the data's prompt text and the decoded answer without special tokens."""
    rewards_dir, elsewhere = tmp_path / "rewards", tmp_path / "elsewhere"
    rewards_dir.mkdir()
    elsewhere.mkdir()
    (rewards_dir / "my_rewards.py").write_text(textwrap.dedent("""\
        import json
        from pathlib import Path

        def score(prompt, response):
            value = len(response) / 10
            with open(Path(__file__).with_name("calls.jsonl"), "a") as log:
                log.write(json.dumps([prompt, response, value]) + "\\n")
            return value
        """))
    monkeypatch.chdir(rewards_dir)
    run = _run_for(["--algorithm", "rloo", "--num_samples_per_prompt", "2", "--reward_fn", "my_rewards.py:score",
                    "--actor_model_name_or_path", sft_model, "--output_dir", str(tmp_path / "out"),
                    "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "4",
                    "--max_prompt_seq_len", "48", "--max_answer_seq_len", "6", "--max_steps", "1",
                    "--eval_prompts", "0", "--data_output_path", data_cache])
    assert run.rewards.fn_specs == (f"{rewards_dir / 'my_rewards.py'}:score",)
    monkeypatch.chdir(elsewhere)
    run.run()
    calls = [json.loads(line) for line in (rewards_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 4
    prompts = [prompt for prompt, _, _ in calls]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3]
    assert all(p.startswith("\n\nHuman: ") and p.endswith("\n\nAssistant:") for p in prompts)
    assert not any(token in response for _, response, _ in calls for token in ("<|endoftext|>", "</s>", "<pad>"))
    (step,) = _history(tmp_path / "out")
    assert step["reward_fn_mean"] == pytest.approx(sum(value for _, _, value in calls) / 4)


def test_log_probs_are_those_of_the_sampling_temperature():
    from chatrlhf.step3_rlhf.trainer import tempered
    from chatrlhf.utils.model.lm_forward import token_logprobs

    logits, tokens = torch.tensor([[[2.0, 0.0, -1.0]]]), torch.tensor([[0]])

    def head(lg, tk):
        return (token_logprobs(lg, tk),)

    assert tempered(head, 1.0) is head and tempered(head, 0.0) is head
    (hot,) = tempered(head, 2.0)(logits, tokens)
    assert hot.item() == pytest.approx(torch.log_softmax(logits[0, 0] / 2.0, -1)[0].item())
    assert hot.item() < head(logits, tokens)[0].item()


# ----- the registry: an algorithm is one object
class Toy(Algorithm):
    """Each answer's advantage is its reward minus 0.5, on every token of the answer; no critic."""

    def advantages(self, batches: list[Experience], settings: AdvantageSettings) -> list[torch.Tensor]:
        return [broadcast(exp.rewards_in - 0.5, exp.answer_mask.to(exp.ref_logprobs.dtype)) for exp in batches]


TOY = Toy(name="toy", display_name="Toy", advantages_text="each answer's reward minus 0.5",
          summary="a test's algorithm.")


@pytest.fixture
def toy_algorithm():
    """The toy, registered for one test: the registry is restored even when the test fails."""
    algorithms.register(TOY)
    yield TOY
    del algorithms.REGISTRY[TOY.name]


def test_the_registry_names_every_algorithm_once():
    assert algorithms.names() == ("ppo", "grpo", "rloo", "reinforce_pp", "rejection_sampling", "online_dpo")
    assert [a.name for a in algorithms.REGISTRY.values() if a.uses_critic] == [algorithms.DEFAULT]
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        algorithms.register(algorithms.REGISTRY["grpo"])
    with pytest.raises(TypeError, match="GAE advantages come from the critic's values"):
        algorithms.REGISTRY["ppo"].advantages([], AdvantageSettings(0.1, 5.0, "k1", 1.0, 1, True))


def test_a_toy_algorithm_defined_here_trains_through_step_3(toy_algorithm, sft_model, tmp_path, data_cache):
    from chatrlhf.training.model_card import CARD_FILE

    help_text = build_parser().format_help()
    assert "toy (no critic loaded): a test's algorithm." in " ".join(help_text.split())
    out = tmp_path / "toy"
    assert ppo_main(["--algorithm", "toy", "--reward_fn", "synthetic_tasks",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "2",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "6", "--max_steps", "1",
                     "--eval_prompts", "0", "--num_warmup_steps", "0", "--actor_learning_rate", "1e-3",
                     "--data_output_path", data_cache]) == 0
    assert (out / "actor" / "model.safetensors").is_file() and not (out / "critic").exists()
    card = (out / "actor" / CARD_FILE).read_text()
    assert "RLHF with Toy" in card and "each answer's reward minus 0.5" in card
    (step,) = _history(out)
    assert "flat_groups" not in step and "critic_loss" not in step
