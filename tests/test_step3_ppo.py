"""Step 3: PPO arithmetic, rollouts and masks, the KL controller, a toy-reward run and the full command."""
from __future__ import annotations

import json
import os
from contextlib import nullcontext

import pytest
import torch
import yaml

from chatrlhf.step3_rlhf.config import GenerationConfig
from chatrlhf.step3_rlhf.flags import build_parser
from chatrlhf.step3_rlhf.forward_backend import CpuFastForward, PlainForward
from chatrlhf.step3_rlhf.kl_control import KLController
from chatrlhf.step3_rlhf.length_groups import grouped, plan_groups
from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.step3_rlhf.ppo_math import gae, kl_penalty, policy_loss, token_rewards, value_loss
from chatrlhf.step3_rlhf.rollout import answer_mask_from, filter_logits, sample_tokens


def test_gae_matches_a_hand_computed_recursion():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 2.0 - 0.1
    d1 = 0.0 + 0.9 * 0.1 - 0.2
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.1])
    assert ret[0, 3] == 0


def test_rewards_put_the_clipped_score_on_the_last_answer_token():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards, kl = token_rewards(logprobs, ref, torch.tensor([10.0, -1.0]), mask, kl_coef=0.1, clip_reward_value=5)
    assert rewards[0].tolist() == pytest.approx([-0.05, 5.0, 0.0])
    assert rewards[1].tolist() == pytest.approx([-1.0, 0.0, 0.0])
    assert kl[0, 2] == 0


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(float(torch.exp(torch.tensor(-0.5)) - 1 + 0.5))
    assert kl_penalty(ref, ref, "k3").item() == 0
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(lp, ref, "k4")


def test_policy_and_value_losses_clip():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]]))
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)
    v = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert v.item() == pytest.approx(0.5 * 1.8**2)


def test_answer_mask_stops_after_the_first_end_token():
    tokens = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert answer_mask_from(tokens, eos_id=1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_adaptive_kl_controller_moves_toward_the_target():
    ctl = KLController(0.1, target=1.0, horizon=100)
    ctl.update(current_kl=5.0, num_episodes=10)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=0.0, num_episodes=10)
    assert ctl.value < 0.1 * 1.02
    fixed = KLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1


@pytest.fixture(scope="module")
def tiny_lm(sft_model):
    from chatrlhf.utils.model.loading import ModelOptions, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(sft_model, ModelOptions())
    return load_causal_lm(sft_model, tokenizer, ModelOptions()).eval(), tokenizer


@pytest.mark.parametrize("backend", [CpuFastForward(), PlainForward()], ids=["cpu_fast", "plain"])
def test_rollout_masks_and_stops(tiny_lm, backend):
    model, tokenizer = tiny_lm
    sample = backend.sample
    prompts = ["\n\nHuman: What is 1 plus 2?\n\nAssistant:", "\n\nHuman: Hi?\n\nAssistant:"]
    from chatrlhf.utils.data.collators import pad_sequences
    from chatrlhf.utils.model.generation import encode_prompts

    ids, mask = pad_sequences(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id, left=True)
    torch.manual_seed(0)
    cfg = GenerationConfig(max_answer_seq_len=12, temperature=1.0)
    rollout = sample(model, ids, mask, cfg, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    assert rollout.sequences.shape[1] <= ids.shape[1] + 12
    for row in range(2):
        answer, amask = rollout.answers[row], rollout.answer_mask[row]
        ended = (answer == tokenizer.eos_token_id).nonzero()
        if len(ended):
            end = int(ended[0])
            assert amask[: end + 1].all() and not amask[end + 1 :].any()
            assert (answer[end + 1 :] == tokenizer.pad_token_id).all()
    greedy = sample(model, ids, mask, GenerationConfig(max_answer_seq_len=8, temperature=0.0),
                    eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    width = min(reference.shape[1], greedy.sequences.shape[1])
    keep = greedy.attention_mask[:, :width].bool()
    assert torch.equal(greedy.sequences[:, :width][keep], reference[:, :width][keep])
    forced = sample(model, ids, mask, GenerationConfig(max_answer_seq_len=6, min_answer_seq_len=6),
                    eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    assert forced.answer_mask.sum(1).tolist() == [6, 6]


DS_CHAT_STEP3 = (
    "--data_path Dahoas/rm-static --data_split 2,4,4 --actor_model_name_or_path a --critic_model_name_or_path c "
    "--num_padding_at_beginning 1 --per_device_generation_batch_size 4 --per_device_training_batch_size 4 "
    "--generation_batches 1 --ppo_epochs 1 --max_answer_seq_len 256 --max_prompt_seq_len 256 "
    "--actor_learning_rate 9.65e-6 --critic_learning_rate 5e-6 --actor_weight_decay 0.1 --critic_weight_decay 0.1 "
    "--num_train_epochs 1 --lr_scheduler_type cosine --gradient_accumulation_steps 1 --num_warmup_steps 100 "
    "--deepspeed --seed 1234 --enable_hybrid_engine --inference_tp_size 1 --tp_gather_partition_size 8 "
    "--actor_zero_stage 3 --critic_zero_stage 3 --actor_lora_dim 128 --critic_lora_dim 64 "
    "--actor_lora_module_name decoder.layers. --critic_lora_module_name decoder.layers. --only_optimize_lora "
    "--actor_gradient_checkpointing --critic_gradient_checkpointing --actor_dropout 0.0 --critic_dropout 0.0 "
    "--offload --offload_reference_model --offload_reward_model --enable_ema --enable_mixed_precision_lora "
    "--compute_fp32_loss --enable_tensorboard --tensorboard_path tb --dtype bf16 --unsup_coef 27.8 "
    "--unsupervised_dataset_name x --unsupervised_dataset_config_name y --release_inference_cache "
    "--unpin_actor_parameters --add_eot_token --eot_token <|endoftext|> --align_overflow --print_answers "
    "--print_answers_interval 2 --enable_test_mode --test_stop_step 3 --output_dir out --local_rank 0 "
    "--data_output_path /tmp/d --preprocessing_num_workers 4"
)


def test_accepts_a_deepspeed_chat_command_line():
    args = build_parser().parse_args(DS_CHAT_STEP3.split())
    assert args.actor_zero_stage == 3 and args.enable_ema and args.test_stop_step == 3
    assert (args.kl_ctl, args.clip_reward_value, args.cliprange, args.cliprange_value, args.gamma, args.lam) == (
        0.1, 5.0, 0.2, 0.2, 1.0, 0.95)


def test_batch_arithmetic_is_checked_before_any_model_loads(tmp_path, capsys):
    base = ["--output_dir", str(tmp_path / "o"), "--actor_model_name_or_path", "tiny-opt",
            "--critic_model_name_or_path", "tiny-opt"]
    cases = [
        (["--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "3"],
         "not a multiple of --per_device_training_batch_size 3"),
        (["--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "2",
          "--gradient_accumulation_steps", "3"], "--gradient_accumulation_steps 3"),
        (["--inference_tp_size", "2"], "--inference_tp_size > 1 needs --actor_zero_stage 3"),
        (["--enable_mixed_precision_lora"], "--enable_mixed_precision_lora needs"),
        (["--max_prompt_seq_len", "900", "--max_answer_seq_len", "200"], "exceeds the 1024 positions"),
        (["--data_split", "1,2"], "--data_split"),
        (["--data_path", str(tmp_path / "nope.jsonl")], "no such file"),
    ]
    for extra, message in cases:
        assert ppo_main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def test_full_command_trains_saves_and_reports(sft_model, tmp_path, data_cache):
    out = tmp_path / "ppo"
    args = ["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
            "--output_dir", str(out), "--per_device_generation_batch_size", "4",
            "--per_device_training_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--max_prompt_seq_len", "48", "--max_answer_seq_len", "8", "--max_steps", "2", "--eval_prompts", "4",
            "--data_output_path", data_cache, "--enable_ema", "--print_answers", "--enable_tensorboard",
            "--tensorboard_path", str(out / "tb"), "--ppo_epochs", "2", "--kl_estimator", "k3",
            "--target_kl", "0.5", "--normalize_reward"]
    assert ppo_main(args) == 0
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(out / "actor")
    AutoModelForCausalLM.from_pretrained(out / "actor_ema")
    critic = AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert critic.config.num_labels == 1
    cards = {role: (out / role / "README.md").read_text() for role in ("actor", "actor_ema", "critic")}
    tags = {role: yaml.safe_load(text.split("---\n")[1])["tags"] for role, text in cards.items()}
    assert tags == {"actor": ["chatrlhf", "rlhf", "ppo"], "actor_ema": ["chatrlhf", "rlhf", "ppo", "ema"],
                    "critic": ["chatrlhf", "rlhf", "ppo", "critic"]}
    for text in ("RLHF with PPO", f'base_model: "{sft_model}"', "- iterations: 2", "| checker accuracy (greedy) |",
                 "| KL to reference (last iteration) |", "| reward (last iteration) |", "(../metrics.json)",
                 "(../chatrlhf_args.json)"):
        assert text in cards["actor"], text
    assert "| critic loss (last iteration) |" in cards["critic"]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["iterations"] == 2
    assert set(metrics["held_out"]) == {"start", "end"}
    for key in ("mean_reward", "accuracy_overall", "accuracy_add", "sampled_mean_reward", "sampled_accuracy_overall"):
        assert key in metrics["held_out"]["end"], key
    step = metrics["history"][-1]
    for key in ("reward_mean", "reward_std", "kl_to_ref", "entropy", "answer_length", "actor_loss", "critic_loss",
                "clip_frac", "approx_kl", "explained_variance", "generation_s", "training_s",
                "generated_tokens_per_s"):
        assert key in step and step[key] == step[key], key
    assert os.listdir(out / "tb" / "step3_ppo")


def test_reward_rises_on_a_toy_reward(sft_model, tmp_path, data_cache, monkeypatch):
    """PPO mechanics: with a reward for short answers, the mean reward goes up within a few iterations."""
    from chatrlhf.step3_rlhf import trainer as trainer_module

    def short_answers_win(self, rollout):
        return -rollout.answer_lengths.float() / 4.0

    monkeypatch.setattr(trainer_module.PPOTrainer, "reward_scores", short_answers_win)
    out = tmp_path / "toy"
    assert ppo_main(["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                     "--output_dir", str(out), "--per_device_generation_batch_size", "16",
                     "--per_device_training_batch_size", "16", "--max_prompt_seq_len", "48",
                     "--max_answer_seq_len", "16", "--max_steps", "14", "--eval_prompts", "0",
                     "--actor_learning_rate", "3e-3", "--critic_learning_rate", "1e-3", "--num_warmup_steps", "0",
                     "--lr_scheduler_type", "constant", "--kl_ctl", "0.0", "--data_output_path", data_cache]) == 0
    rewards = [h["reward_mean"] for h in json.load(open(out / "metrics.json"))["history"]]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.3, rewards


def test_lora_actor_uses_itself_without_adapters_as_reference(sft_model, tmp_path, data_cache, built_engines):
    out = tmp_path / "lora"
    assert ppo_main(["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                     "--output_dir", str(out), "--per_device_generation_batch_size", "4",
                     "--per_device_training_batch_size", "4", "--max_prompt_seq_len", "48",
                     "--max_answer_seq_len", "6", "--max_steps", "1", "--eval_prompts", "0",
                     "--actor_lora_dim", "4", "--only_optimize_lora", "--data_output_path", data_cache]) == 0
    assert built_engines["engines"].reference is None
    from safetensors.torch import load_file

    assert not [k for k in load_file(out / "actor" / "model.safetensors") if "lora" in k]


def test_inverse_cdf_sampling_matches_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 2.0]]).repeat(20_000, 1)
    torch.manual_seed(0)
    drawn = sample_tokens(probs).view(20_000, 2)
    first = torch.bincount(drawn[:, 0], minlength=4).float() / 20_000
    assert first.tolist() == pytest.approx([0.5, 0.0, 0.3, 0.2], abs=0.015)
    assert not (drawn[:, 0] == 1).any()
    assert (drawn[:, 1] == 3).all()


def _rollout_of_varied_lengths(model, tokenizer):
    from chatrlhf.utils.data.collators import pad_sequences
    from chatrlhf.utils.model.generation import encode_prompts

    prompts = ["\n\nHuman: Reverse the word 'banana' please, letter by letter.\n\nAssistant:",
               "\n\nHuman: Hi?\n\nAssistant:", "\n\nHuman: What is 12 plus 30?\n\nAssistant:",
               "\n\nHuman: Sort: c a b\n\nAssistant:"]
    ids, mask = pad_sequences(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id, left=True)
    torch.manual_seed(3)
    return CpuFastForward().sample(model, ids, mask, GenerationConfig(max_answer_seq_len=10, temperature=1.5),
                                   eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)


def test_length_groups_give_the_padded_batch_results_and_gradients(tiny_lm):
    from chatrlhf.utils.model.lm_forward import answer_logits, token_logprobs

    model, tokenizer = tiny_lm
    rollout = _rollout_of_varied_lengths(model, tokenizer)
    start = rollout.prompt_width
    groups = plan_groups(rollout.attention_mask, start, overhead=0)
    assert sorted(torch.cat([g.rows for g in groups]).tolist()) == list(range(4))
    assert len(groups) > 1 and sum(len(g.rows) * (g.right - g.left) for g in groups) < rollout.sequences.numel()
    assert len(plan_groups(rollout.attention_mask, start, overhead=10_000)) == 1

    def logprobs(ids, mask, begin):
        return (token_logprobs(answer_logits(model, ids, mask, begin), ids[:, begin:]),)

    answer = rollout.answer_mask.bool()
    results = []
    for plan in (None, groups):
        model.zero_grad()
        if plan is None:
            (out,) = logprobs(rollout.sequences, rollout.attention_mask, start)
        else:
            (out,) = grouped(logprobs, rollout.sequences, rollout.attention_mask, start, plan)
        out[answer].sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    (padded, padded_grads), (split, split_grads) = results
    assert split.shape == padded.shape
    assert torch.allclose(split[answer], padded[answer], atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(split_grads, padded_grads))


def test_packed_linears_keep_outputs_and_gradients_and_restore_the_layers(tiny_lm):
    from chatrlhf.utils.model.cpu_fast.packed_linear import packed_linears, packing_supported

    model, tokenizer = tiny_lm
    if not packing_supported(model):
        pytest.skip("this PyTorch build has no oneDNN")
    ids = torch.tensor([tokenizer("Human: hello there, how are you")["input_ids"]])
    runs = []
    for packed in (False, True):
        model.zero_grad()
        with packed_linears(model) if packed else nullcontext():
            logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        runs.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    model.zero_grad()
    (plain, plain_grads), (fast, fast_grads) = runs
    assert torch.allclose(fast, plain, atol=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(fast_grads, plain_grads))
    assert not any("forward" in vars(m) for m in model.modules())
    half = torch.nn.Linear(4, 4).to(torch.float64)
    assert not packing_supported(half)


def test_preallocated_cache_returns_the_filled_part_and_refuses_to_overflow():
    from chatrlhf.utils.model.cpu_fast.kv_cache import preallocated_cache

    cache = preallocated_cache(3)
    first, second = torch.ones(1, 2, 2, 4), torch.full((1, 2, 1, 4), 2.0)
    cache.update(first, first, 0)
    keys, values = cache.update(second, second, 0)
    assert torch.equal(keys, torch.cat([first, second], dim=2)) and cache.get_seq_length(0) == 3
    with pytest.raises(RuntimeError, match="holds 3 positions"):
        cache.update(second, second, 0)


def test_ema_of_a_lora_actor_follows_its_merged_weights():
    """The EMA is a plain model: it blends in the actor's base weights with the LoRA deltas folded in."""
    import copy

    from transformers import OPTConfig, OPTForCausalLM

    from chatrlhf.step3_rlhf.engines import update_ema
    from chatrlhf.training.config import LoraSettings
    from chatrlhf.training.lora import apply_lora, merged_state_dict

    torch.manual_seed(0)
    plain = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                                     num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32))
    ema = copy.deepcopy(plain).requires_grad_(False)
    start = {name: param.clone() for name, param in ema.named_parameters()}
    actor = apply_lora(plain, LoraSettings(dim=4, module_name="decoder.layers."))
    with torch.no_grad():
        for param in actor.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    merged = merged_state_dict(actor, {k: v.detach() for k, v in actor.state_dict().items()})
    update_ema(ema, actor, 0.75, zero_stage=0)
    for name, param in ema.named_parameters():
        torch.testing.assert_close(param, 0.75 * start[name] + 0.25 * merged[name])
    adapted = actor.get_base_model().model.decoder.layers[0].self_attn.q_proj
    assert not torch.allclose(merged["model.decoder.layers.0.self_attn.q_proj.weight"], adapted.base_layer.weight)


def test_unsupervised_batches_resume_where_they_stopped():
    """A checkpoint's ptx position replays to the batch the uninterrupted run draws next, across epochs."""
    import torch

    from chatrlhf.step3_rlhf.unsupervised import CycledBatches

    blocks = torch.arange(70).view(7, 10)
    whole = CycledBatches(blocks, batch_size=2, seed=3)
    drawn = [next(whole)["input_ids"] for _ in range(5)]  # 3 batches an epoch: crosses into the second epoch
    resumed = CycledBatches(blocks, batch_size=2, seed=3)
    resumed.load_state_dict({"consumed": 4})
    assert resumed.state_dict() == {"consumed": 4}
    assert next(resumed)["input_ids"].equal(drawn[4])
    assert not drawn[0].equal(drawn[3])  # the second epoch is shuffled anew


def test_hybrid_engine_generation_goes_through_the_engine(tiny_lm):
    """With DeepSpeed's hybrid engine on (CUDA only), the plain backend's rollouts come from the engine's
    ``generate``; a stand-in engine backed by the model's own generate gives, greedily, the rollout our sampler
    gives."""
    from types import SimpleNamespace

    from chatrlhf.step3_rlhf.trainer import PPOTrainer
    from chatrlhf.utils.data.collators import pad_sequences
    from chatrlhf.utils.model.generation import encode_prompts

    model, tokenizer = tiny_lm
    calls = []

    class StandInHybridEngine:
        module = model

        def generate(self, **kwargs):
            calls.append(kwargs)
            return model.generate(**kwargs)

    prompts = ["\n\nHuman: What is 1 plus 2?\n\nAssistant:", "\n\nHuman: Reverse the word cat.\n\nAssistant:"]
    ids, mask = pad_sequences(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id, left=True)
    greedy = GenerationConfig(max_answer_seq_len=8, temperature=0.0)

    def trainer(hybrid: bool) -> SimpleNamespace:
        engine = StandInHybridEngine()
        backend = PlainForward(hybrid_engine=engine) if hybrid else CpuFastForward()
        return SimpleNamespace(engines=SimpleNamespace(actor=engine), target=torch.device("cpu"),
                               tokenizer=tokenizer, generation=greedy, backend=backend)

    batch = {"input_ids": ids, "attention_mask": mask}
    ours = PPOTrainer.generate(trainer(False), batch)
    assert calls == []
    through_engine = PPOTrainer.generate(trainer(True), batch)
    assert len(calls) == 1 and calls[0]["do_sample"] is False and calls[0]["max_new_tokens"] == 8
    width = through_engine.sequences.shape[1]
    assert torch.equal(through_engine.answer_mask, ours.answer_mask[:, : width - ids.shape[1]])
    assert torch.equal(through_engine.sequences, ours.sequences[:, :width])
    assert through_engine.prompt_width == ours.prompt_width
