"""Step 2 alternative, DPO: each loss against a hand-worked example, prompt masking, the precomputed and the LoRA
reference, flag checks, a short real run, and the end-to-end runner's DPO plan."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from chatrlhf.step2_dpo.main import build_parser
from chatrlhf.step2_dpo.main import main as dpo_main
from chatrlhf.step2_dpo.reference import pair_sums
from chatrlhf.training.preference_losses import LossConfig, preference_loss
from chatrlhf.training.validation import ConfigError
from chatrlhf.utils.data.collators import PairCollator
from chatrlhf.utils.model.lm_forward import answer_logprobs
from chatrlhf.utils.model.loading import ModelOptions, load_causal_lm, load_tokenizer

# Worked by hand: softplus(-1) = log(1 + e^-1) = 0.3132616875, softplus(1) = log(1 + e) = 1.3132616875.
LOG1P_EXP_MINUS_1 = 0.31326168751822286
LOG1P_EXP_1 = 1.3132616875182228
DS_CHAT_DPO = (
    "--data_path Dahoas/rm-static --data_split 2,4,4 --data_output_path /tmp/x --model_name_or_path facebook/opt-350m "
    "--per_device_train_batch_size 8 --per_device_eval_batch_size 8 --max_seq_len 512 --learning_rate 9.65e-6 "
    "--weight_decay 0.1 --num_train_epochs 1 --beta 0.2 --label_smoothing 0.1 --gradient_accumulation_steps 4 "
    "--lr_scheduler_type cosine --num_warmup_steps 0 --output_dir out --seed 1234 --local_rank 0 "
    "--gradient_checkpointing --dropout 0.0 --offload --dtype bf16 --offload_reference_model --zero_stage 3 "
    "--lora_dim 128 --lora_module_name layers. --only_optimize_lora --lora_learning_rate 5e-4 --compute_fp32_loss "
    "--enable_tensorboard --tensorboard_path tb --add_eot_token --print_loss --deepspeed"
)


def test_accepts_a_deepspeed_chat_dpo_command_line():
    args = build_parser().parse_args(DS_CHAT_DPO.split())
    assert args.beta == 0.2 and args.label_smoothing == 0.1 and args.offload_reference_model and args.print_loss
    assert args.zero_stage == 3 and args.lora_dim == 128 and args.compute_fp32_loss and args.dropout == 0.0
    defaults = build_parser().parse_args([])
    assert defaults.beta == 0.1 and defaults.label_smoothing == 0.0 and defaults.loss_type == "sigmoid"
    assert defaults.learning_rate == 1e-3 and defaults.tensorboard_path == "step2_tensorboard"


# ----- losses, each against numbers worked out by hand


def _pairs(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_loss_and_conservative_label_smoothing():
    # Policy log-probs -10 (chosen) and -12 (rejected), reference -11 and -11: h = 2 - 0 = 2; beta 0.5 gives z = 1.
    chosen, rejected, ref = _pairs(-10.0), _pairs(-12.0), _pairs(-11.0)
    out = preference_loss(LossConfig("sigmoid", beta=0.5), chosen, rejected, ref, ref)
    assert out.losses.item() == pytest.approx(LOG1P_EXP_MINUS_1)  # -log sigmoid(1)
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == pytest.approx(-0.5)
    # Flip probability 0.2: 0.8 * softplus(-1) + 0.2 * softplus(1) = 0.2506093500 + 0.2626523375.
    smoothed = preference_loss(LossConfig("sigmoid", beta=0.5, label_smoothing=0.2), chosen, rejected, ref, ref)
    assert smoothed.losses.item() == pytest.approx(0.5132616875182229)


def test_ipo_loss():
    # beta 0.5: target gap 1 / (2 * 0.5) = 1; h = 2 gives (2 - 1)^2 = 1, h = -1 gives (-1 - 1)^2 = 4.
    zero = _pairs(0.0, 0.0)
    out = preference_loss(LossConfig("ipo", beta=0.5), _pairs(-10.0, -6.0), _pairs(-12.0, -5.0), zero, zero)
    assert out.losses.tolist() == pytest.approx([1.0, 4.0])


def test_hinge_loss():
    # beta 0.5: max(0, 1 - 0.5 h) for h = 2, 1, -1 is 0, 0.5, 1.5.
    zero = _pairs(0.0, 0.0, 0.0)
    out = preference_loss(LossConfig("hinge", beta=0.5), _pairs(-2.0, -3.0, -4.0), _pairs(-4.0, -4.0, -3.0), zero, zero)
    assert out.losses.tolist() == pytest.approx([0.0, 0.5, 1.5])


def test_robust_loss():
    # eps 0.2, z = beta h = 1: (0.8 * softplus(-1) - 0.2 * softplus(1)) / 0.6 = (0.25060935 - 0.26265234) / 0.6.
    zero = _pairs(0.0)
    out = preference_loss(LossConfig("robust", beta=0.5, label_smoothing=0.2), _pairs(-1.0), _pairs(-3.0), zero, zero)
    assert out.losses.item() == pytest.approx(-0.02007164581511049)
    plain = preference_loss(LossConfig("robust", beta=0.5), _pairs(-1.0), _pairs(-3.0), zero, zero)
    assert plain.losses.item() == pytest.approx(LOG1P_EXP_MINUS_1)  # no noise: plain DPO


def test_simpo_loss_averages_over_answer_tokens():
    # Chosen: -2 over 4 tokens = -0.5 a token; rejected: -3 over 2 tokens = -1.5. beta 2, gamma 1:
    # 2 * (-0.5 + 1.5) - 1 = 1, so -log sigmoid(1).
    config = LossConfig("simpo", beta=2.0, simpo_gamma=1.0)
    logps = config.sequence_logps(_pairs(-2.0, -3.0), torch.tensor([4, 2]))
    assert logps.tolist() == pytest.approx([-0.5, -1.5])
    out = preference_loss(config, logps[:1], logps[1:])
    assert out.losses.item() == pytest.approx(LOG1P_EXP_MINUS_1)
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-3.0)
    assert LossConfig("simpo").simpo_gamma == 0.5


def test_orpo_loss():
    # Mean token log-probs log 0.5 (chosen) and log 0.2 (rejected): odds 1 and 0.25, log odds ratio log 4,
    # sigmoid(log 4) = 0.8. Loss = NLL 0.6931471806 + beta 0.1 * -log 0.8 (0.2231435513) = 0.7154615357.
    out = preference_loss(LossConfig("orpo", beta=0.1), _pairs(-0.6931471805599453), _pairs(-1.6094379124341003))
    assert out.losses.item() == pytest.approx(0.7154615356913663)
    assert out.chosen_rewards.item() == pytest.approx(-0.06931471805599453)


@pytest.mark.parametrize("kwargs, flag", [
    ({"loss_type": "kto"}, "--loss_type"),
    ({"beta": 0.0}, "--beta"),
    ({"label_smoothing": 0.5}, "--label_smoothing"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "--label_smoothing"),
    ({"simpo_gamma": 1.0}, "--simpo_gamma"),
    ({"loss_type": "simpo", "simpo_gamma": -1.0}, "--simpo_gamma"),
])
def test_loss_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        LossConfig(**kwargs)


# ----- sequence log-probs: prompt masking


class Bigram(nn.Module):
    """A model whose next-token logits depend on the current token alone."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table(input_ids))


def test_prompt_tokens_are_masked_out_of_the_sequence_log_prob():
    # Uniform over 3 tokens: every answer token scores log(1/3) = -1.0986122887; padding and prompt never count.
    uniform = Bigram(torch.zeros(3, 3))
    ids = torch.tensor([[0, 1, 2, 1, 2], [2, 2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    sums, counts = answer_logprobs(uniform, ids, mask, torch.tensor([3, 1]))
    assert counts.tolist() == [2, 2]
    assert sums.tolist() == pytest.approx([-2.1972245773362196] * 2)
    torch.manual_seed(0)
    bigram = Bigram(torch.randn(5, 5))
    prompt_len = torch.tensor([4])
    row = torch.tensor([[1, 2, 3, 4, 0, 2, 1]])
    other_prompt = torch.tensor([[3, 0, 0, 4, 0, 2, 1]])  # the prompt changes, its last token (the context) stays
    other_answer = torch.tensor([[1, 2, 3, 4, 0, 3, 1]])
    ones = torch.ones_like(row)
    base = answer_logprobs(bigram, row, ones, prompt_len)[0]
    assert torch.equal(answer_logprobs(bigram, other_prompt, ones, prompt_len)[0], base)
    assert not torch.equal(answer_logprobs(bigram, other_answer, ones, prompt_len)[0], base)


@pytest.fixture(scope="module")
def tokenizer(sft_model):
    return load_tokenizer(sft_model, ModelOptions())


@pytest.fixture(scope="module")
def pairs(sft_model, tokenizer, data_cache):
    """The step-2 pairs of a 98,1,1 split of synthetic/tasks (about 90 train pairs)."""
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.data.tokenized import build_step_data

    return build_step_data(DataConfig(data_split="98,1,1", data_output_path=data_cache, max_seq_len=96), 2, tokenizer)


def test_answer_log_probs_of_a_real_model_are_the_answer_tokens_of_a_full_forward(sft_model, tokenizer, pairs):
    model = load_causal_lm(sft_model, tokenizer, ModelOptions()).eval()
    batch = PairCollator(tokenizer.pad_token_id)([pairs.train[i] for i in range(3)])
    with torch.no_grad():
        sums, counts = pair_sums(model, batch, fp32=True)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    for row in range(6):
        start, end = int(batch["prompt_len"][row % 3]), int(batch["attention_mask"][row].sum())
        tokens = batch["input_ids"][row, start:end]
        expected = logp[row, start - 1 : end - 1].gather(-1, tokens.unsqueeze(-1)).sum()
        assert counts[row] == end - start and sums[row].item() == pytest.approx(expected.item(), rel=1e-5)


# ----- the reference


def test_precomputed_reference_log_probs_match_the_live_reference_and_key_on_its_weights(
        sft_model, tokenizer, pairs, tmp_path):
    from chatrlhf.step2_dpo.reference import precomputed_reference, ref_cache_dir
    from chatrlhf.training.config import EngineSettings
    from chatrlhf.training.reference_model import load_reference
    from chatrlhf.utils.data.fingerprint import weights_fingerprint
    from chatrlhf.utils.data.tokenized import StepData

    reference, identity = load_reference(sft_model, tokenizer, ModelOptions(), EngineSettings(), offload=False)
    data = StepData(pairs.train.select(range(10)), pairs.eval.select(range(3)),
                    {"cache_dir": str(tmp_path / "step2_subset")})
    collate = PairCollator(tokenizer.pad_token_id)
    first = precomputed_reference(data, reference, identity, collate, 4, fp32=True)
    again = precomputed_reference(data, reference, identity, collate, 4, fp32=True)
    assert not first.info["ref_cache_hit"] and again.info["ref_cache_hit"]
    assert again.train["ref_chosen_logp"] == first.train["ref_chosen_logp"]
    for split in (first.train, first.eval):
        batch = collate([split[i] for i in range(len(split))])
        with torch.no_grad():
            sums, _ = pair_sums(reference, batch, fp32=True)
        half = len(split)
        torch.testing.assert_close(batch["ref_chosen_logp"].float(), sums[:half], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(batch["ref_rejected_logp"].float(), sums[half:], rtol=1e-6, atol=1e-5)
    changed = load_causal_lm(sft_model, tokenizer, ModelOptions())
    with torch.no_grad():
        next(changed.parameters())[0, 0] += 1e-3
    assert weights_fingerprint(changed) != identity
    assert ref_cache_dir(data, weights_fingerprint(changed), True) != ref_cache_dir(data, identity, True)
    assert ref_cache_dir(data, identity, False) != ref_cache_dir(data, identity, True)


def _run(argv: list[str]):
    from chatrlhf.step2_dpo.run import DPORun

    return DPORun.from_args(build_parser().parse_args(argv))


def test_lora_only_optimize_reference_is_the_policy_with_adapters_off(sft_model, tokenizer, pairs, tmp_path):
    run = _run(["--model_name_or_path", sft_model, "--output_dir", str(tmp_path / "out"), "--lora_dim", "4",
                "--only_optimize_lora"])
    assert run.reference_kind == "adapters_off"
    policy = run.build_model(sft_model, tokenizer)
    assert run.live_reference is not None and run.live_reference.model is None
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = PairCollator(tokenizer.pad_token_id)([pairs.train[i] for i in range(3)])
    task = run.task(None)
    policy.train()
    ref_chosen, ref_rejected = task._reference_logps(policy, batch)
    assert policy.training
    base = load_causal_lm(sft_model, tokenizer, ModelOptions()).eval()
    with torch.no_grad():
        expected, _ = pair_sums(base, batch, fp32=True)
        policy_chosen, _ = task._split(policy.eval(), batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(policy_chosen, ref_chosen, atol=1e-2)
    plain = _run(["--model_name_or_path", sft_model, "--output_dir", str(tmp_path / "plain"), "--lora_dim", "4"])
    assert plain.reference_kind == "model"  # the base weights train too: a frozen copy is the reference


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_load_no_reference(loss_type, sft_model, tokenizer, pairs, tmp_path, monkeypatch):
    from chatrlhf.utils.model import loading

    loads = []
    original = loading.load_causal_lm
    monkeypatch.setattr(loading, "load_causal_lm", lambda *a, **k: loads.append(a[0]) or original(*a, **k))
    run = _run(["--model_name_or_path", sft_model, "--output_dir", str(tmp_path / "out"), "--loss_type", loss_type])
    assert run.reference_kind == "none"
    run.build_model(sft_model, tokenizer)
    assert loads == [sft_model] and run.live_reference is None and run.task(None).reference is None
    assert run.prepare_data(pairs, sft_model, tokenizer) is pairs


@pytest.mark.parametrize("flags, flag", [
    (["--loss_type", "simpo", "--precompute_ref_log_probs"], "--precompute_ref_log_probs"),
    (["--loss_type", "orpo", "--offload_reference_model"], "--offload_reference_model"),
    (["--simpo_gamma", "1.0"], "--simpo_gamma"),
    (["--loss_type", "hinge", "--label_smoothing", "0.1"], "--label_smoothing"),
    (["--lora_dim", "4", "--only_optimize_lora", "--offload_reference_model"], "--offload_reference_model"),
    (["--reference_model_name_or_path", "./no/such/reference"], "--reference_model_name_or_path"),
])
def test_bad_flag_combinations_fail_up_front_naming_the_flag(flags, flag, tmp_path, capsys):
    out = tmp_path / "out"
    assert dpo_main(["--output_dir", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("chatrlhf dpo: error: ") and flag in error
    assert not out.exists()


# ----- a short real run


@pytest.fixture(scope="module")
def dpo_dir(sft_model, pairs, data_cache, tmp_path_factory) -> Path:
    from chatrlhf.cli import main as cli

    out = tmp_path_factory.mktemp("dpo")
    # About 90 pairs seen twice, at a high rate and beta 0.5: the training pairs' reward accuracy leaves 0.5 within
    # the first epoch on every seed tried.
    assert cli(["dpo", "--model_name_or_path", sft_model, "--output_dir", str(out), "--data_split", "98,1,1",
                "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--max_seq_len", "96",
                "--learning_rate", "3e-3", "--beta", "0.5", "--lr_scheduler_type", "constant",
                "--data_output_path", data_cache, "--log_interval", "6", "--eval_interval", "12",
                "--enable_tensorboard", "--tensorboard_path", str(out / "tb")]) == 0
    return out


def test_dpo_run_saves_a_causal_lm_and_preference_metrics(dpo_dir, sft_model, tokenizer, pairs):
    metrics = json.loads((dpo_dir / "metrics.json").read_text())
    assert metrics["dpo"]["loss_type"] == "sigmoid" and metrics["dpo"]["reference"] == "model"
    assert [e["label"] for e in metrics["evals"]] == ["start", "step 12", "epoch 1", "step 24", "epoch 2"]
    for key in ("loss", "chosen_logp", "rejected_logp", "chosen_reward", "rejected_reward", "reward_accuracy",
                "reward_margin", "acc_task_count"):
        assert key in metrics["evals"][-1], key
    for key in ("chosen_logp", "rejected_logp", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin"):
        assert key in metrics["history"][-1], key
    assert metrics["evals"][0]["reward_accuracy"] == 0.0  # policy = reference: every reward is 0
    assert 0.0 <= metrics["evals"][0]["logp_accuracy"] <= 1.0  # the SFT model's own ranking of the pairs
    assert os.listdir(dpo_dir / "tb" / "step2_model")
    card = (dpo_dir / "README.md").read_text()
    for text in ('- "dpo"', "`sigmoid` preference loss", "| reward accuracy | 0 | ", "| reward margin | "):
        assert text in card, text
    # The saved folder is a plain causal LM; on the training pairs it now prefers the chosen answers.
    policy = AutoModelForCausalLM.from_pretrained(dpo_dir).eval()
    reference = load_causal_lm(sft_model, tokenizer, ModelOptions()).eval()
    batch = PairCollator(tokenizer.pad_token_id)(list(pairs.train))
    with torch.no_grad():
        rewards = pair_sums(policy, batch, fp32=True)[0] - pair_sums(reference, batch, fp32=True)[0]
    half = len(pairs.train)
    accuracy = float((rewards[:half] > rewards[half:]).float().mean())
    assert accuracy > 0.5, accuracy


# ----- chatrlhf e2e --step2-method dpo


def _plan(flags: list[str]):
    from chatrlhf.applications import e2e_rlhf

    return e2e_rlhf.make_plan(e2e_rlhf.build_parser().parse_args(flags))


def test_e2e_dpo_plan_runs_step1_then_dpo_from_the_sft_model(tmp_path):
    from chatrlhf.applications import e2e_rlhf

    plan = _plan(["--step2-method", "dpo", "--actor-model", "tiny-opt", "--output-dir", str(tmp_path)])
    assert plan.steps == (1, 2)
    actor, dpo = tmp_path / "actor-models" / "tiny-opt", tmp_path / "dpo-models" / "tiny-opt"
    script = e2e_rlhf.DPO_DIR / "training_scripts" / "tiny" / "single_gpu" / "run_tiny.sh"
    assert plan.step_dir(2) == dpo and plan.code_dir(2) == e2e_rlhf.DPO_DIR
    assert plan.command(2) == ["bash", str(script), str(dpo), "", str(actor)]
    assert "MODEL" not in plan.env(2) and plan.env(1)["MODEL"] == "tiny-opt"
    gpu = _plan(["--step2-method", "dpo", "--actor-model", "1.3b", "--output-dir", str(tmp_path)])
    assert gpu.script(2).relative_to(e2e_rlhf.DPO_DIR).as_posix() == "training_scripts/opt/single_gpu/run_350m.sh"
    llama = _plan(["--step2-method", "dpo", "--step", "2", "--actor-model", "llama2-7b", "--output-dir", str(tmp_path)])
    assert llama.script(2).relative_to(e2e_rlhf.DPO_DIR).as_posix() == "training_scripts/llama2/run_llama2_7b.sh"


@pytest.mark.parametrize("flags, named", [
    (["--step3-algorithm", "grpo"], "--step3-algorithm"),
    (["--reward-fn", "synthetic_tasks"], "--reward-fn"),
    (["--step", "1", "2", "3"], "--step 3"),
])
def test_e2e_refuses_dpo_with_step3_flags(flags, named, tmp_path, capsys):
    from chatrlhf.applications import e2e_rlhf

    assert e2e_rlhf.main(["--step2-method", "dpo", "--output-dir", str(tmp_path / "out"), *flags]) == 1
    error = capsys.readouterr().err
    assert "--step2-method dpo cannot be combined with" in error and named in error
    assert not (tmp_path / "out").exists()


def test_e2e_dpo_needs_the_step1_model(tmp_path, capsys):
    from chatrlhf.applications import e2e_rlhf

    out = tmp_path / "out"
    assert e2e_rlhf.main(["--step2-method", "dpo", "--step", "2", "--actor-model", "tiny-opt", "--output-dir",
                          str(out), "--no-report"]) == 1
    error = capsys.readouterr().err
    assert f"DPO starts from the step-1 actor in {out / 'actor-models' / 'tiny-opt'}" in error
    assert "Run step 1 first: chatrlhf e2e --step 1 --actor-model tiny-opt --step2-method dpo" in error


def test_logp_accuracy_counts_ties_half():
    from chatrlhf.step2_dpo.dpo_task import logp_accuracy

    assert logp_accuracy([-1.0, -2.0, -3.0, -4.0], [-2.0, -1.0, -3.0, -5.0]) == (1 + 0 + 0.5 + 1) / 4


def test_an_empty_eval_set_says_so_instead_of_reporting_metrics(capsys):
    from chatrlhf.step2_dpo.dpo_task import DPOTask
    from chatrlhf.training.preference_losses import LossConfig

    assert DPOTask(LossConfig()).evaluate(None, []) == {}
    assert "held-out set is empty" in capsys.readouterr().out
