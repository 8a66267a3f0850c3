"""Step 2: reward scores at the last real token, the HF class round trip, the loss, a real run, rw_eval."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from chatrlhf.step2_reward.main import build_parser
from chatrlhf.step2_reward.main import main as reward_main
from chatrlhf.training.pair_metrics import ScoredPairs, pair_metrics, pairwise_loss
from chatrlhf.utils.data.collators import pad_sequences
from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer
from chatrlhf.utils.model.reward_model import load_reward_model, sequence_scores, token_values
from chatrlhf.utils.model.reward_stats import REWARD_STATS_FILE, load_reward_stats

DS_CHAT_STEP2 = (
    "--data_path Dahoas/rm-static Dahoas/full-hh-rlhf --data_split 2,4,4 --model_name_or_path facebook/opt-350m "
    "--num_padding_at_beginning 1 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 "
    "--max_seq_len 512 --learning_rate 5e-5 --weight_decay 0.1 --num_train_epochs 1 --disable_dropout "
    "--gradient_accumulation_steps 1 --lr_scheduler_type cosine --num_warmup_steps 0 --seed 1234 --zero_stage 3 "
    "--deepspeed --output_dir out --offload --dtype bf16 --lora_dim 128 --lora_module_name decoder.layers. "
    "--only_optimize_lora --lora_learning_rate 5e-4 --gradient_checkpointing --eval_interval 10 --eval_iters 5 "
    "--enable_tensorboard --tensorboard_path tb --add_eot_token --print_loss --no_bf16_to_fp32_loss "
    "--no_fused_kernels --compute_fp32_loss --local_rank 0 --data_output_path /tmp/x"
)
SEQUENCES = ([5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19])


def test_accepts_a_deepspeed_chat_step2_command_line():
    args = build_parser().parse_args(DS_CHAT_STEP2.split())
    assert args.zero_stage == 3 and args.lora_dim == 128 and args.disable_dropout and args.print_loss
    assert args.num_padding_at_beginning == 1 and not args.bf16_to_fp32_loss and args.eval_iters == 5
    defaults = build_parser().parse_args([])
    assert defaults.learning_rate == pytest.approx(5e-5) and defaults.eval_iters == 100
    assert defaults.center_rewards_coef == 0.0 and not defaults.use_margin


@pytest.fixture(scope="module")
def tokenizer(sft_model):
    return load_tokenizer(sft_model, ModelOptions())


@pytest.fixture(scope="module")
def llama_dir(sft_model, tokenizer, tmp_path_factory) -> str:
    """A small random LLaMA (rotary positions) with the step-1 tokenizer, to check another family."""
    out = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _scores(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return sequence_scores(token_values(model, ids, mask), mask)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_scores_do_not_depend_on_padding_side(family, sft_model, llama_dir, tokenizer):
    model = load_reward_model(sft_model if family == "opt" else llama_dir, tokenizer, ModelOptions()).eval()
    right = _scores(model, *pad_sequences(SEQUENCES, tokenizer.pad_token_id))
    left = _scores(model, *pad_sequences(SEQUENCES, tokenizer.pad_token_id, left=True))
    alone = torch.cat([_scores(model, *pad_sequences([seq], tokenizer.pad_token_id)) for seq in SEQUENCES])
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)
    ids, mask = pad_sequences(SEQUENCES, tokenizer.pad_token_id)
    with torch.no_grad():
        pooled = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(right, pooled, atol=1e-5, rtol=1e-4)


def test_saved_model_loads_as_the_hf_class_and_scores_the_same(sft_model, tokenizer, tmp_path):
    from chatrlhf.training.saving import save_hf_model

    model = load_reward_model(sft_model, tokenizer, ModelOptions()).eval()
    again = load_reward_model(sft_model, tokenizer, ModelOptions()).eval()
    torch.testing.assert_close(model.score.weight, again.score.weight)
    stats = {"mean": 0.5, "std": 2.0, "chosen_mean": 1.0, "chosen_std": 1.0, "rejected_mean": 0.0,
             "rejected_std": 1.0, "accuracy": 0.75, "count": 4}
    save_hf_model(model, tokenizer, str(tmp_path / "rm"), extra_json={REWARD_STATS_FILE: stats})
    ids, mask = pad_sequences(SEQUENCES, tokenizer.pad_token_id)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1
    with torch.no_grad():
        hf_scores = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    ours = _scores(load_reward_model(str(tmp_path / "rm"), tokenizer, ModelOptions()).eval(), ids, mask)
    torch.testing.assert_close(ours, hf_scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours, _scores(model, ids, mask), atol=1e-5, rtol=1e-4)
    loaded = load_reward_stats(str(tmp_path / "rm"))
    assert loaded.mean == 0.5 and loaded.std == 2.0
    torch.testing.assert_close(loaded.normalise(torch.tensor([2.5])), torch.tensor([1.0]))
    assert load_reward_stats(sft_model) is None


def test_pairwise_loss_on_a_hand_made_example():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    plain = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert float(pairwise_loss(chosen, rejected)) == pytest.approx(plain)
    margin = torch.tensor([0.5, 0.0])
    with_margin = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert float(pairwise_loss(chosen, rejected, margin)) == pytest.approx(with_margin)
    centred = float(pairwise_loss(chosen, rejected, margin, center_coef=0.1))
    assert centred == pytest.approx(with_margin + 0.1 * (1.0 + 1.0) / 2)
    scores = torch.tensor([0.3, -0.2], requires_grad=True)
    pairwise_loss(scores[:1], scores[1:]).backward()
    assert scores.grad[0] < 0 < scores.grad[1]


def test_metrics_break_down_by_task_and_mistake():
    scored = ScoredPairs([1.0, 0.0, 2.0, 0.5], [0.0, 1.0, 1.0, 0.0], ["add", "add", "sort", "sort"],
                         ["off_by_n", "off_by_n", "wrong_order", "truncated"])
    metrics = pair_metrics(scored)
    assert metrics["accuracy"] == 0.75 and metrics["margin"] == pytest.approx(0.375)
    assert metrics["acc_task_add"] == 0.5 and metrics["acc_task_sort"] == 1.0
    assert metrics["acc_mistake_off_by_n"] == 0.5 and metrics["acc_mistake_truncated"] == 1.0


def test_lora_trains_the_head_and_keeps_scores(sft_model, tokenizer):
    from chatrlhf.training.config import LoraSettings
    from chatrlhf.training.lora import apply_lora

    model = load_reward_model(sft_model, tokenizer, ModelOptions()).eval()
    ids, mask = pad_sequences(SEQUENCES, tokenizer.pad_token_id)
    before = _scores(model, ids, mask)
    lora = apply_lora(model, LoraSettings(4, "decoder.layers.", only_optimize_lora=True), trainable_modules=("score",))
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert any("score" in name for name in trainable) and all("lora_" in n or "score" in n for n in trainable)
    torch.testing.assert_close(_scores(lora, ids, mask), before)


@pytest.fixture(scope="module")
def reward_dir(sft_model, data_cache, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("reward")
    assert reward_main(["--model_name_or_path", sft_model, "--output_dir", str(out), "--max_steps", "5",
                        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
                        "--max_seq_len", "96", "--learning_rate", "1e-3", "--data_output_path", data_cache,
                        "--eval_iters", "2", "--eval_interval", "3", "--log_interval", "2",
                        "--center_rewards_coef", "0.01", "--lm_loss_coef", "0.5", "--enable_tensorboard",
                        "--tensorboard_path", str(out / "tb")]) == 0
    return str(out)


def test_training_run_saves_model_stats_and_metrics(reward_dir):
    stats = load_reward_stats(reward_dir)
    assert stats is not None and stats.count > 0 and stats.std > 0
    assert json.load(open(os.path.join(reward_dir, REWARD_STATS_FILE)))["mean"] == pytest.approx(stats.mean)
    assert AutoModelForSequenceClassification.from_pretrained(reward_dir).config.num_labels == 1
    metrics = json.load(open(os.path.join(reward_dir, "metrics.json")))
    assert [e["label"] for e in metrics["evals"]] == ["start", "step 3", "epoch 1"]
    for key in ("accuracy", "chosen_score", "rejected_score", "margin", "acc_task_add", "acc_mistake_off_by_n"):
        assert key in metrics["evals"][-1], key
    assert metrics["steps"] == 5 and "accuracy" in metrics["history"][-1] and "lm_loss" in metrics["history"][-1]
    assert os.listdir(os.path.join(reward_dir, "tb", "step2_model"))
    card = open(os.path.join(reward_dir, "README.md")).read()
    for text in ('- "reward-model"', "pairwise ranking loss", "| reward accuracy | ",
                 f"all {stats.count} held-out pairs"):
        assert text in card, text


def test_lm_loss_is_the_causal_lm_loss_of_the_chosen_rows(sft_model, tokenizer):
    from transformers import AutoModelForCausalLM

    from chatrlhf.step2_reward.reward_task import chosen_lm_loss, pair_forward
    from chatrlhf.step2_reward.tied_lm_head import check_tied_embeddings

    reward = load_reward_model(sft_model, tokenizer, ModelOptions()).eval()
    ids, mask = pad_sequences(SEQUENCES[:2] + SEQUENCES[1:], tokenizer.pad_token_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        _, _, hidden = pair_forward(reward, batch)
        ours = chosen_lm_loss(reward, hidden, batch)
        lm = AutoModelForCausalLM.from_pretrained(sft_model).eval()
        labels = ids[:2].masked_fill(mask[:2] == 0, -100)
        expected = lm(input_ids=ids[:2], attention_mask=mask[:2], labels=labels).loss
    assert ours.item() == pytest.approx(expected.item(), rel=1e-4)
    check_tied_embeddings(reward, "--lm_loss_coef")
    untied = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=False)
    with pytest.raises(ValueError, match="--lm_loss_coef predicts tokens with the input embedding"):
        check_tied_embeddings(AutoModelForSequenceClassification.from_config(untied), "--lm_loss_coef")


def test_rw_eval_scores_a_pairs_file_and_the_built_ins(reward_dir, tmp_path, capsys):
    from chatrlhf.step2_reward.rw_eval import main as rw_eval_main
    from chatrlhf.utils.model.reward_scoring import RewardScorer

    rows = [{"prompt": "\n\nHuman: What is 2 plus 2?\n\nAssistant:", "chosen": " 2 plus 2 is 4.",
             "rejected": " 2 plus 2 is 5."},
            {"prompt": "\n\nHuman: Reverse the word cat.\n\nAssistant:", "chosen": " cat reversed is tac.",
             "rejected": " cat cat cat cat"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert rw_eval_main(["--model_name_or_path", reward_dir, "--pairs_file", str(pairs)]) == 0
    out = capsys.readouterr().out
    assert out.count("==== pair") == 2 and "accuracy" in out and "on 2 pairs" in out
    assert rw_eval_main(["--model_name_or_path", reward_dir, "--num_padding_at_beginning", "0"]) == 0
    out = capsys.readouterr().out
    assert "task_add" in out and "mistake_" in out
    scorer = RewardScorer.load(reward_dir)
    prompts, answers = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    batched = scorer.score(prompts, answers)
    scorer.batch_size = 1
    assert batched == pytest.approx(scorer.score(prompts, answers), abs=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    assert scorer.encode(prompts, answers)[0][-1] == tokenizer.eos_token_id


def test_rw_eval_cuts_long_prompts_from_the_left_and_drops_identical_pairs(reward_dir, tmp_path, capsys):
    """Prompts longer than --max_seq_len lose their oldest tokens, so both answers are scored (not two copies of
    the prompt's start); a pair identical after the cut is reported as dropped, not scored as a wrong pair."""
    from chatrlhf.step2_reward.rw_eval import main as rw_eval_main
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.model.reward_scoring import RewardScorer

    history = "".join(f"\n\nHuman: Tell me about item {i}.\n\nAssistant: Item {i} is fine." for i in range(20))
    long_prompt = history + "\n\nHuman: What is 2 plus 2?\n\nAssistant:"
    repeated = " 2 plus 2 is 4." * 20
    rows = [{"prompt": long_prompt, "chosen": " 2 plus 2 is 4.", "rejected": " 2 plus 2 is 5."},
            {"prompt": long_prompt, "chosen": " cat reversed is tac.", "rejected": " cat cat cat cat"},
            {"prompt": "\n\nHuman: Say it again.\n\nAssistant:", "chosen": repeated + " yes",
             "rejected": repeated + " no"}]
    pairs = tmp_path / "long.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scorer = RewardScorer.load(reward_dir, DataConfig(max_seq_len=48))
    tokenizer = scorer.tokenizer
    assert len(tokenizer(long_prompt, add_special_tokens=False)["input_ids"]) > 48
    encoded = scorer.encode_pairs(*([r[key] for r in rows] for key in ("prompt", "chosen", "rejected")))
    assert encoded.kept == [0, 1] and encoded.dropped == 1
    for chosen, rejected, row in zip(encoded.chosen, encoded.rejected, rows):
        assert chosen != rejected and len(chosen) <= 48 and chosen[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(chosen, skip_special_tokens=True).endswith("Assistant:" + row["chosen"])
        assert tokenizer.decode(rejected, skip_special_tokens=True).endswith("Assistant:" + row["rejected"])
    assert all(c != r for c, r in zip(scorer.score_ids(encoded.chosen), scorer.score_ids(encoded.rejected)))

    assert rw_eval_main(["--model_name_or_path", reward_dir, "--pairs_file", str(pairs), "--max_seq_len", "48"]) == 0
    out = capsys.readouterr().out
    assert out.count("==== pair") == 2 and "on 2 pairs (1 dropped)" in out
    assert "pairs not scored: identical after truncation: 1" in out
    assert "pairs scored: start of prompt, cut by --max_seq_len (pair kept): 2" in out


def test_an_empty_eval_set_says_so_instead_of_reporting_metrics(capsys):
    from types import SimpleNamespace

    import datasets

    from chatrlhf.step2_reward.reward_task import RewardTask
    from chatrlhf.step2_reward.run import RewardRun
    from chatrlhf.utils.data.errors import DataError
    from chatrlhf.utils.data.tokenized import FEATURES, StepData

    assert RewardTask().evaluate(SimpleNamespace(module=None), []) == {}
    assert "held-out set is empty" in capsys.readouterr().out
    train = datasets.Dataset.from_dict({"chosen_ids": [[1, 2]], "rejected_ids": [[1, 3]], "prompt_len": [1],
                                        "margin": [0.0], "task": [""], "mistake": [""]}, FEATURES[2])
    empty = train.select([])
    run = SimpleNamespace(use_margin=False)
    with pytest.raises(DataError, match="step 2 has no held-out pairs.*reward_stats.json"):
        RewardRun.prepare_data(run, StepData(train, empty), "", None)
    assert RewardRun.prepare_data(run, StepData(train, train), "", None).eval is train
