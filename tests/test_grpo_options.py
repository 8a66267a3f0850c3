"""The critic-free family's options from DAPO, Dr. GRPO and GSPO (dynamic sampling, the overlong penalty, the
constant loss normaliser, the sequence-level ratio) and rejection sampling; each against hand-computed numbers,
then through a whole run."""
from __future__ import annotations

import json

import pytest
import torch

from chatrlhf.step3_rlhf.config import AlgorithmConfig
from chatrlhf.step3_rlhf.dynamic_sampling import DynamicRollout
from chatrlhf.step3_rlhf.experience import Experience, concat, select
from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.step3_rlhf.ppo_math import aggregate, overlong_penalty, policy_loss
from chatrlhf.training.validation import ConfigError


def test_dr_grpo_divides_each_answers_token_sum_by_the_constant_length():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert aggregate(values, mask, "dr_grpo", norm_length=10).item() == pytest.approx((3 + 15) / (2 * 10))
    with pytest.raises(ValueError, match="constant length"):
        aggregate(values, mask, "dr_grpo")


def test_the_sequence_level_ratio_is_one_per_answer_and_clipped_per_answer():
    old = torch.zeros(2, 3)
    new = torch.tensor([[0.3, -0.1, 9.0], [0.05, 0.05, 0.05]])  # the 9.0 lies past the first answer's end
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2, sequence_level=True)
    first, second = torch.exp(torch.tensor(0.1)), torch.exp(torch.tensor(0.05))  # mean log-ratios 0.2/2, 0.15/3
    want = (-(first * 2) + second * 3) / 5  # token_mean over the 5 answer tokens; neither ratio is clipped
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert stats["clip_frac"] == 0.0
    token_level, token_stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    assert token_stats["clip_frac"] > 0.0 and token_level.item() != pytest.approx(loss.item())
    far = torch.tensor([[0.8, 0.8, 0.0], [0.0, 0.0, 0.0]])
    clipped, clipped_stats = policy_loss(far, old, adv, mask, cliprange=0.2, sequence_level=True)
    assert clipped_stats["clip_frac"] == pytest.approx(2 / 5)  # the first answer's two tokens, clipped together
    assert clipped.item() == pytest.approx((-1.2 * 2 + 1.0 * 3) / 5, rel=1e-6)


def test_the_overlong_penalty_grows_from_its_length_to_the_limit():
    lengths = torch.tensor([3, 6, 8, 10])
    assert overlong_penalty(lengths, 6, 10).tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])


def _experience(prompt_width: int, answer_width: int, scores: list[float], first_token: int) -> Experience:
    rows = len(scores)
    sequences = torch.arange(first_token, first_token + rows * (prompt_width + answer_width)).view(rows, -1)
    mask = torch.ones_like(sequences)
    mask[:, 0] = 0  # one left pad per row
    return Experience(sequences=sequences, attention_mask=mask, answer_mask=torch.ones(rows, answer_width),
                      prompt_width=prompt_width, ref_logprobs=torch.full((rows, answer_width), -1.0),
                      scores=torch.tensor(scores), rewards_in=torch.tensor(scores),
                      prompts=[f"p{first_token}-{i}" for i in range(rows)], tasks=[""] * rows)


def test_concat_pads_prompts_on_the_left_and_answers_on_the_right():
    a, b = _experience(3, 2, [1.0, 0.0], 100), _experience(5, 4, [0.5], 200)
    both = concat([a, b], pad_id=0)
    assert both.prompt_width == 5 and both.answer_mask.shape == (3, 4)
    assert both.sequences[0].tolist() == [0, 0, *a.sequences[0].tolist(), 0, 0]
    assert both.attention_mask[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert both.answer_mask[0].tolist() == [1, 1, 0, 0] and both.ref_logprobs[0].tolist() == [-1, -1, 0, 0]
    assert both.answers[0, :2].tolist() == a.answers[0].tolist()
    assert both.prompts == [*a.prompts, *b.prompts] and both.scores.tolist() == [1.0, 0.0, 0.5]
    assert select(both, [2]).sequences.tolist() == b.sequences.tolist()


def test_dynamic_sampling_keeps_groups_that_differ_and_fills_from_dropped_ones_when_out_of_batches():
    # Two prompts a batch, two answers each: in batch 1 the first group is flat, in batch 2 both are.
    pool = DynamicRollout(target=4, batch_rows=4, group_size=2, max_extra_batches=1, pad_id=0)
    pool.add(_experience(3, 2, [1.0, 1.0, 0.0, 1.0], 100))
    assert not pool.ready(minimum_batches=1)  # only one group differs: draw another batch
    pool.add(_experience(3, 2, [0.0, 0.0, 1.0, 1.0], 200))
    assert pool.ready(minimum_batches=1)  # the one extra batch is spent
    (buffer,) = pool.buffer()
    assert buffer.scores.tolist() == [0.0, 1.0, 1.0, 1.0]  # the differing group first, then a dropped one
    assert pool.counts() == {"dynamic_batches_drawn": 2.0, "dynamic_groups_dropped": 3.0,
                             "dynamic_groups_filled": 1.0}
    full = DynamicRollout(target=2, batch_rows=2, group_size=2, max_extra_batches=3, pad_id=0)
    full.add(_experience(3, 2, [1.0, 1.0], 100))
    full.add(_experience(3, 2, [0.0, 1.0], 200))
    assert full.ready(minimum_batches=1) and full.buffer()[0].prompts == ["p200-0", "p200-1"]


def test_dynamic_sampling_needs_an_algorithm_that_compares_answers():
    with pytest.raises(ConfigError, match="--dynamic_sampling .* needs --algorithm"):
        AlgorithmConfig(name="ppo", dynamic_sampling=True)
    assert AlgorithmConfig(name="grpo", num_samples_per_prompt=2, dynamic_sampling=True).dynamic_sampling


def test_grpo_with_every_option_trains_and_logs_what_it_drew_and_dropped(sft_model, tmp_path, data_cache):
    out = tmp_path / "dapo"
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", "synthetic_tasks", "--num_samples_per_prompt", "4",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out),
                     "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "4",
                     "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "2",
                     "--eval_prompts", "0", "--num_warmup_steps", "0", "--actor_learning_rate", "1e-3",
                     "--dynamic_sampling", "--dynamic_sampling_max_batches", "2", "--overlong_penalty", "5",
                     "--loss_aggregation", "dr_grpo", "--importance_sampling_level", "sequence",
                     "--data_output_path", data_cache]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 2
    for step in history:
        assert 1 <= step["dynamic_batches_drawn"] <= 3
        assert step["dynamic_groups_filled"] <= 2 * step["dynamic_batches_drawn"]
        assert -1.0 <= step["overlong_penalty"] <= 0.0


def test_rejection_sampling_weighs_the_best_answer_of_each_prompt_alone():
    from chatrlhf.step3_rlhf.advantages import best_of_group

    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.5, 0.0])  # two prompts of three answers; a tie in the second
    assert best_of_group(rewards, 3).tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_rejection_sampling_fine_tunes_on_the_chosen_answers(sft_model, tmp_path, data_cache):
    """One round: the first update's policy loss is minus the chosen answers' token log-probs over every answer
    token of the micro-batch (the ratio is 1), so the chosen answers become more likely."""
    from safetensors.torch import load_file

    from chatrlhf.training.model_card import CARD_FILE

    out = tmp_path / "raft"
    assert ppo_main(["--algorithm", "rejection_sampling", "--reward_fn", "synthetic_tasks",
                     "--num_samples_per_prompt", "4", "--actor_model_name_or_path", sft_model,
                     "--output_dir", str(out), "--per_device_generation_batch_size", "2",
                     "--per_device_training_batch_size", "8", "--max_prompt_seq_len", "48",
                     "--max_answer_seq_len", "8", "--max_steps", "2", "--eval_prompts", "0", "--kl_ctl", "0",
                     "--num_warmup_steps", "0", "--actor_learning_rate", "1e-3",
                     "--data_output_path", data_cache]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(step["actor_loss"] <= 0 for step in history)  # -A x ratio, A in {0, 1}
    assert "critic_loss" not in history[0] and "flat_groups" in history[0]
    assert "RLHF with Rejection sampling" in (out / "actor" / CARD_FILE).read_text()
    before, after = load_file(f"{sft_model}/model.safetensors"), load_file(out / "actor" / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before.keys() & after.keys())


def _fake_run(folder, rewards, drawn=None):
    """A step-3 output folder as rollouts_to_reward.py reads it: saved flags and a per-iteration history."""
    folder.mkdir()
    args = {"per_device_generation_batch_size": 2, "num_samples_per_prompt": 4}
    (folder / "chatrlhf_args.json").write_text(json.dumps({"args": args}))
    history = [{"step": i + 1, "accuracy": r, **({} if drawn is None else {"dynamic_batches_drawn": drawn[i]})}
               for i, r in enumerate(rewards)]
    (folder / "metrics.json").write_text(json.dumps({"history": history}))
    return folder


def test_rollouts_to_reward_counts_every_generation_batch_a_run_drew(tmp_path):
    """Dynamic sampling's extra batches count as answers spent: 8 answers a batch, 2 batches an iteration."""
    import subprocess
    import sys
    from pathlib import Path

    base = _fake_run(tmp_path / "grpo", [0.1, 0.2, 0.3, 0.4])
    dynamic = _fake_run(tmp_path / "dyn", [0.25, 0.35, 0.5], drawn=[2, 2, 3])
    script = Path(__file__).resolve().parents[1] / "scripts" / "rollouts_to_reward.py"
    out = subprocess.run([sys.executable, str(script), "--baseline", str(base), "--compared", str(dynamic),
                          "--window", "1", "--target_iteration", "3", "--key", "accuracy"],
                         capture_output=True, text=True, check=True).stdout
    assert "target 0.300 (iteration 3) reached after 24 answers, iteration 3" in out
    assert "reached after 32 answers, iteration 2 (of 56; final 0.500)" in out
    assert "at iteration 3 (as many updates): baseline 0.300, compared 0.500" in out
    assert "answers to the target, compared / baseline: 1.33" in out
    assert "iterations to the target, compared / baseline: 0.67" in out
