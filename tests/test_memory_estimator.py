"""``chatrlhf memory``: agreement with DeepSpeed's ZeRO estimators, sanity of the breakdown, config reading, CLI,
a family without formulas (GPT-2, Qwen2), and DeepSpeed-Chat's published runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from chatrlhf.applications.deepspeed_chat_table import PUBLISHED_RUNS
from chatrlhf.applications.memory_cli import main
from chatrlhf.applications.memory_estimator import (
    BASELINE_PROCESS_BYTES,
    RunSettings,
    build_report,
    cpu_process_bytes,
    deepspeed_model_states,
    estimate_memory,
    format_bytes,
    render_report,
)
from chatrlhf.cli import main as cli_main
from chatrlhf.utils import model_specs
from chatrlhf.utils.activation_memory import experience_bytes, traced_activations, training_activation_bytes
from chatrlhf.utils.model.presets import preset_config
from chatrlhf.utils.model_specs import KNOWN_MODELS, ModelSpec, ModelSpecError, load_model_spec
from chatrlhf.utils.zero_memory import Placement

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before the agreement test imports deepspeed
OPT_1_3B = KNOWN_MODELS["opt-1.3b"]
# Families with no hand-written activation formula, small enough to build for real (token ids inside the vocab).
THIRD_FAMILIES = {
    "gpt2-small": {"model_type": "gpt2", "n_embd": 512, "n_layer": 3, "n_head": 8, "vocab_size": 1000,
                   "n_positions": 1024, "bos_token_id": 0, "eos_token_id": 0},
    "qwen2-small": {"model_type": "qwen2", "hidden_size": 512, "num_hidden_layers": 3, "num_attention_heads": 8,
                    "num_key_value_heads": 2, "intermediate_size": 1376, "vocab_size": 1000,
                    "max_position_embeddings": 1024, "tie_word_embeddings": False},
}


def spec_of(name: str) -> ModelSpec:
    if name in THIRD_FAMILIES:
        return ModelSpec.from_hf_config(THIRD_FAMILIES[name], name=name)
    return load_model_spec(name)


def saved_tensor_bytes(model, **inputs) -> int:
    """What autograd keeps for backward of one forward, parameters excluded, each storage once."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        output = model(**inputs)
    return sum(saved.values()) + output.logits.untyped_storage().nbytes()


@pytest.mark.parametrize(
    ("name", "gpus_per_node", "num_nodes", "stage", "offload"),
    [
        ("opt-1.3b", 8, 1, 2, False),
        ("opt-1.3b", 8, 1, 2, True),
        ("opt-1.3b", 8, 1, 3, False),
        ("opt-1.3b", 8, 1, 3, True),
        ("opt-350m", 1, 1, 2, True),
        ("opt-13b", 2, 1, 2, True),
        ("llama-2-7b", 4, 2, 3, True),
        ("llama-2-70b", 8, 4, 3, False),
        ("smollm2-135m", 1, 1, 3, True),
        ("gpt2-small", 2, 1, 2, False),
        ("qwen2-small", 4, 1, 3, True),
    ],
)
def test_model_states_agree_with_deepspeed(
    name: str, gpus_per_node: int, num_nodes: int, stage: int, offload: bool
) -> None:
    """Our split of the model states adds up to DeepSpeed's own estimator, which the report prints beside it."""
    run = RunSettings(step=1, gpus_per_node=gpus_per_node, num_nodes=num_nodes, zero_stage=stage, offload=offload)
    estimate = estimate_memory(spec_of(name), run)
    deepspeed_states = deepspeed_model_states(estimate)
    assert deepspeed_states is not None
    assert estimate.model_states.gpu == pytest.approx(deepspeed_states.gpu, rel=0.01)
    assert estimate.model_states.cpu == pytest.approx(deepspeed_states.cpu, rel=0.01)
    report = render_report(build_report(spec_of(name), run))
    label = f"(DeepSpeed's zero{stage} est.)"
    assert f"{label:<26} {format_bytes(deepspeed_states.gpu):>12} {format_bytes(deepspeed_states.cpu):>12}" in report


def test_deepspeed_estimator_row_only_where_it_applies() -> None:
    """DeepSpeed's estimators size one fully trained 16-bit model at ZeRO-2/3; elsewhere the row is left out."""
    spec = spec_of("opt-350m")
    for run in (
        RunSettings(step=1, zero_stage=0),
        RunSettings(step=1, zero_stage=2, dtype="fp32"),
        RunSettings(step=1, zero_stage=2, lora_dim=8),
        RunSettings(step=3, zero_stage=2),
    ):
        estimate = estimate_memory(spec, run)
        assert deepspeed_model_states(estimate) is None
        assert "DeepSpeed's zero" not in render_report(build_report(spec, run))


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama", "opt-350m", "smollm2-135m", "gpt2-small", "qwen2-small"])
def test_parameter_counts_match_transformers(name: str) -> None:
    """Counts against the classes chatrlhf trains: the causal LM and, for reward models and critics,
    ``AutoModelForSequenceClassification`` with one label (built for real where small, else on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = spec_of(name)
    config = spec.hf_config()
    config.num_labels = 1
    device = "meta" if spec.params() > 50_000_000 else "cpu"
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(config)
        reward = AutoModelForSequenceClassification.from_config(config)
    for kind, model in (("lm", lm), ("reward", reward)):
        assert spec.params(kind) == sum(p.numel() for p in model.parameters())  # tied weights once
        assert spec.largest_layer_params(kind) == max(
            sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())


def test_embedding_counts_of_a_tied_and_an_untied_family() -> None:
    gpt2, qwen2 = spec_of("gpt2-small"), spec_of("qwen2-small")
    assert gpt2.embedding_params("lm") == gpt2.embedding_params("reward") == (1000 + 1024) * 512  # tokens, positions
    assert qwen2.embedding_params("lm") == 2 * qwen2.embedding_params("reward") == 2 * 1000 * 512  # untied head
    assert [linear.name for linear in qwen2.block_linears] == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert gpt2.block_linears == ()  # GPT-2's Conv1D layers are not nn.Linear, which chatrlhf's LoRA needs
    with pytest.raises(ValueError, match="gpt2-small has no nn.Linear in its decoder blocks"):
        estimate_memory(gpt2, RunSettings(lora_dim=8))


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_tensors_saved_for_backward(name: str, attention: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    table = load_model_spec(name)
    family_fields = {
        "opt": {"ffn_dim": table.ffn_dim, "dropout": 0.1},  # exercise the dropout masks too
        "llama": {"intermediate_size": table.ffn_dim, "tie_word_embeddings": False},
    }[table.family]
    config = {
        "model_type": table.family, "hidden_size": table.hidden_size, "num_hidden_layers": table.num_layers,
        "num_attention_heads": table.num_heads, "vocab_size": table.vocab_size,
        "max_position_embeddings": table.max_positions, **family_fields,
    }
    spec = ModelSpec.from_hf_config(config)
    hf_config = AutoConfig.for_model(**config)
    hf_config._attn_implementation = attention
    model = AutoModelForCausalLM.from_config(hf_config).train()
    batch, seq = 2, 64
    ids = torch.randint(0, spec.vocab_size, (batch, seq))
    measured = saved_tensor_bytes(model, input_ids=ids, labels=ids)
    estimate = training_activation_bytes(
        spec, "lm", batch=batch, seq=seq, dtype_bytes=4, attention=attention, gradient_checkpointing=False,
        dropout_mask_bytes=4,  # CPU dropout keeps an fp32 mask
    )
    log_softmax_gradient = batch * seq * spec.vocab_size * 4  # allocated at the start of backward, not saved
    assert measured == pytest.approx(estimate.total - log_softmax_gradient, rel=0.02)


@pytest.mark.parametrize("name", ["gpt2-small", "qwen2-small"])
@pytest.mark.parametrize(("attention", "dtype_bytes"), [("sdpa", 4), ("eager", 4), ("sdpa", 2)])
def test_traced_activations_match_tensors_saved_for_backward(name: str, attention: str, dtype_bytes: int) -> None:
    """No formula: the estimate scales a trace of the model at 1-2 layers, 32 and 64 tokens and a fraction of its
    width; here the whole model (3 layers, full width) is measured at 3 x 100 tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = spec_of(name)
    trace = traced_activations(spec, dtype_bytes, attention)
    assert trace.width_divisor > 1 and trace.seq_lengths == (32, 64)
    dtype = torch.float32 if dtype_bytes == 4 else torch.bfloat16
    model = AutoModelForCausalLM.from_config(spec.hf_config(), attn_implementation=attention).to(dtype).train()
    batch, seq = 3, 100
    measured = saved_tensor_bytes(model, input_ids=torch.randint(0, spec.vocab_size, (batch, seq)), use_cache=False)
    estimate = training_activation_bytes(spec, "lm", batch=batch, seq=seq, dtype_bytes=dtype_bytes,
                                         attention=attention, gradient_checkpointing=False)
    logits = batch * seq * spec.vocab_size * dtype_bytes  # the output; its loss is counted by formula
    assert measured == pytest.approx(estimate.layers + logits, rel=0.01)


def test_the_trace_keeps_full_width_when_the_narrowing_misses_a_width(monkeypatch) -> None:
    """A width the narrowing does not know (here the FFN's) leaves the narrowed block larger than 1/k² of the real
    one: the trace then runs at full width instead of scaling a wrong measurement."""
    spec = spec_of("qwen2-small")
    monkeypatch.setattr(model_specs, "FFN_FIELDS", ())
    traced_activations.cache_clear()
    try:
        assert traced_activations(spec, 4, "sdpa").width_divisor == 1
    finally:
        traced_activations.cache_clear()


def test_a_family_without_formulas_gets_a_full_estimate(tmp_path, capsys) -> None:
    """Step 3 with a Qwen2 actor and a GPT-2 critic read from config.json directories: every row is sized."""
    for name, config in THIRD_FAMILIES.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    argv = ["--step", "3", "--model", str(tmp_path / "qwen2-small"), "--critic_model", str(tmp_path / "gpt2-small"),
            "--num_gpus", "2", "--zero_stage", "3", "--per_device_train_batch_size", "2",
            "--per_device_generation_batch_size", "2", "--max_prompt_seq_len", "64", "--max_answer_seq_len", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "\n  actor      qwen2-small" in out and "\n  critic     gpt2-small" in out
    for name in ("qwen2-small (qwen2)", "gpt2-small (gpt2)"):
        assert f"{name} has no hand-written activation formula" in out
    assert "largest qwen2 actor that fits: no qwen2 sizes are known" in out
    run = RunSettings(step=3, critic=spec_of("gpt2-small"), gpus_per_node=2, zero_stage=3, train_batch_size=2,
                      generation_batch_size=2, max_prompt_seq_len=64, max_answer_seq_len=64)
    estimate = estimate_memory(spec_of("qwen2-small"), run)
    for row in ("weights", "gradients", "optimizer states", "activations", "generation KV cache", "buffers"):
        assert estimate.rows[row].gpu > 0, row
    actor, critic = estimate.training_activations
    assert actor.layers > 0 and critic.layers > 0


def test_deepspeed_chat_runs_fit_where_deepspeed_chat_reports_them(capsys) -> None:
    """With the settings of DeepSpeed-Chat's scripts, each run it reports a time for fits, and the one it gives
    none for (OPT-66B on 8 A100-40G, 'NA' in its blog) does not."""
    for published in PUBLISHED_RUNS:
        estimate = estimate_memory(KNOWN_MODELS[published.actor], published.settings())
        assert estimate.fits == published.claim.startswith("ran:"), published
    assert main(["--deepspeed_chat_table"]) == 0
    out = capsys.readouterr().out
    assert all(published.claim in out for published in PUBLISHED_RUNS)
    assert "\n  opt-1.3b  1 x A6000-48G" in out and "\n  opt-66b   8 nodes x 8 A100-80G " in out
    assert "[T1] DeepSpeed-Chat README (microsoft/DeepSpeedExamples" in out


def test_zero3_on_8_gpus_needs_less_per_gpu_than_zero0() -> None:
    zero0 = estimate_memory(OPT_1_3B, RunSettings(gpus_per_node=8, zero_stage=0))
    zero3 = estimate_memory(OPT_1_3B, RunSettings(gpus_per_node=8, zero_stage=3))
    assert zero3.gpu_peak < zero0.gpu_peak
    assert zero3.model_states.gpu < zero0.model_states.gpu / 4


def test_lora_reduces_optimizer_states() -> None:
    full = estimate_memory(OPT_1_3B, RunSettings(zero_stage=2))
    lora = estimate_memory(OPT_1_3B, RunSettings(zero_stage=2, lora_dim=8))
    assert lora.rows["optimizer states"].gpu < full.rows["optimizer states"].gpu / 50
    assert lora.rows["weights"].gpu > full.rows["weights"].gpu  # the adapters add weights


def test_gradient_checkpointing_reduces_activations() -> None:
    plain = estimate_memory(OPT_1_3B, RunSettings())
    checkpointed = estimate_memory(OPT_1_3B, RunSettings(gradient_checkpointing=True))
    assert checkpointed.rows["activations"].gpu < plain.rows["activations"].gpu


def test_step3_needs_more_than_step1_for_the_same_actor() -> None:
    run = RunSettings(gpus_per_node=8, zero_stage=3, max_seq_len=512)
    step1 = estimate_memory(OPT_1_3B, run)
    step3 = estimate_memory(OPT_1_3B, replace(run, step=3))
    assert [engine.role for engine in step3.engines] == ["actor", "reference", "critic", "reward"]
    assert step3.gpu_peak > step1.gpu_peak
    assert step3.rows["generation KV cache"].gpu > 0


def test_offload_moves_optimizer_states_and_frozen_models_to_the_host() -> None:
    run = RunSettings(step=3, gpus_per_node=8, zero_stage=3)
    offloaded = estimate_memory(OPT_1_3B, replace(run, offload=True, offload_reference_model=True))
    assert offloaded.rows["optimizer states"].gpu == 0
    assert offloaded.rows["optimizer states"].cpu > 0
    reference = offloaded.engines[1]
    assert reference.weights.cpu == 2 * reference.total_params  # fp16, partitioned over the node's 8 of 8 ranks
    assert offloaded.gpu_peak < estimate_memory(OPT_1_3B, run).gpu_peak
    # Below ZeRO-3 DeepSpeed cannot offload parameters, so the frozen models stay on the GPU.
    zero2 = estimate_memory(OPT_1_3B, replace(run, zero_stage=2, offload_reference_model=True))
    assert zero2.engines[1].weights == Placement(gpu=2 * zero2.engines[1].total_params)


def test_fp32_keeps_no_master_copy_at_zero0() -> None:
    fp32 = estimate_memory(OPT_1_3B, RunSettings(dtype="fp32"))
    fp16 = estimate_memory(OPT_1_3B, RunSettings(dtype="fp16"))
    params = OPT_1_3B.params()
    assert fp32.rows["optimizer states"].gpu == 8 * params
    assert fp16.rows["optimizer states"].gpu == 12 * params


def test_kv_cache_uses_kv_heads() -> None:
    spec = KNOWN_MODELS["llama-2-70b"]
    run = RunSettings(step=3, gpus_per_node=8, zero_stage=3, generation_batch_size=2, critic=spec)
    kv = estimate_memory(spec, run).rows["generation KV cache"].gpu
    assert kv == 2 * 80 * 2 * 512 * 8 * 128 * 2


def test_critic_free_estimate_counts_no_critic_and_no_reward_model_with_reward_fn() -> None:
    ppo = estimate_memory(OPT_1_3B, RunSettings(step=3, num_samples_per_prompt=4))
    grpo = estimate_memory(OPT_1_3B, RunSettings(step=3, algorithm="grpo", num_samples_per_prompt=4, reward_fn=True))
    assert [engine.role for engine in ppo.engines] == ["actor", "reference", "critic", "reward"]
    assert [engine.role for engine in grpo.engines] == ["actor", "reference"]
    assert len(grpo.training_activations) == 1  # the actor's; no critic pass
    actor, reference, critic, reward = ppo.engines
    for row, attribute in (("weights", "weights"), ("gradients", "gradients"), ("optimizer states", "optimizer")):
        assert grpo.rows[row] == getattr(actor, attribute) + getattr(reference, attribute)
        assert ppo.rows[row] == grpo.rows[row] + getattr(critic, attribute) + getattr(reward, attribute)
    assert grpo.rows["generation KV cache"] == ppo.rows["generation KV cache"]  # same actor, same rollout
    assert grpo.gpu_peak < ppo.gpu_peak
    # PPO with --reward_fn keeps its critic but loads no reward model.
    ppo_fn = estimate_memory(OPT_1_3B, RunSettings(step=3, reward_fn=True))
    assert [engine.role for engine in ppo_fn.engines] == ["actor", "reference", "critic"]


def test_a_reward_model_adds_exactly_its_frozen_weights() -> None:
    reward_spec = KNOWN_MODELS["opt-125m"]
    run = RunSettings(step=3, algorithm="rloo", num_samples_per_prompt=2, reward_fn=True)
    without = estimate_memory(OPT_1_3B, run)
    with_reward = estimate_memory(OPT_1_3B, replace(run, reward_model=reward_spec))
    assert [engine.role for engine in with_reward.engines] == ["actor", "reference", "reward"]
    frozen = 2 * reward_spec.params("reward")  # bf16 weights at ZeRO-0 on one GPU, nothing else
    assert with_reward.rows["weights"].gpu - without.rows["weights"].gpu == frozen
    assert with_reward.gpu_peak - without.gpu_peak == frozen
    for row in ("gradients", "optimizer states", "activations", "generation KV cache", "buffers"):
        assert with_reward.rows[row].gpu == without.rows[row].gpu
    # Without --reward_fn the critic's model is the reward model, as in chatrlhf ppo (no critic is trained).
    default = estimate_memory(OPT_1_3B, replace(run, reward_fn=False))
    assert [(engine.role, engine.spec) for engine in default.engines][2:] == [("reward", run.critic)]


def test_critic_lora_dim_sizes_the_critic_apart_from_the_actor() -> None:
    run = RunSettings(step=3, lora_dim=128, critic_lora_dim=0)
    actor, _, critic, _ = estimate_memory(OPT_1_3B, run).engines
    assert actor.trainable_params == OPT_1_3B.lora_params(128)
    assert critic.trainable_params == critic.total_params == run.critic.params("reward")


def test_kv_cache_and_experience_scale_with_samples_per_prompt() -> None:
    run = RunSettings(step=3, algorithm="grpo", num_samples_per_prompt=4, reward_fn=True, generation_batch_size=8,
                      train_batch_size=4)
    four = estimate_memory(OPT_1_3B, run)
    eight = estimate_memory(OPT_1_3B, replace(run, num_samples_per_prompt=8))
    assert eight.rows["generation KV cache"].gpu == 2 * four.rows["generation KV cache"].gpu
    assert four.rows["generation KV cache"].gpu == estimate_memory(
        OPT_1_3B, replace(run, algorithm="reinforce_pp", num_samples_per_prompt=1, generation_batch_size=32)
    ).rows["generation KV cache"].gpu  # 8 prompts x 4 answers = 32 prompts x 1
    assert eight.training_activations == four.training_activations  # micro-batches stay train_batch_size rows
    # Experience scoring (larger than a 4-row training pass here) scores all 8 x 8 = 64 sequences.
    assert eight.rows["activations"].gpu == experience_bytes(OPT_1_3B, 64, 512, 2, "sdpa")
    assert four.rows["activations"].gpu == experience_bytes(OPT_1_3B, 32, 512, 2, "sdpa")


def test_cli_critic_free_says_what_it_counted(capsys) -> None:
    argv = ["--step", "3", "--num_gpus", "8", "--zero_stage", "3", "--num_samples_per_prompt", "8"]
    assert main([*argv, "--algorithm", "grpo", "--reward_fn", "synthetic_tasks"]) == 0
    out = capsys.readouterr().out
    assert "step 3 (GRPO, critic-free)" in out
    assert "16 prompts x 8 samples = 128 sequences" in out
    assert "\n  critic " not in out and "\n  reward " not in out
    assert "counted: actor + reference; no critic (--algorithm grpo is critic-free); no reward model" in out
    assert "DeepSpeed-Chat rule of thumb: 80 GB / 3 = 26.7B params (actor only: no critic)" in out
    assert "critic training" not in out

    assert main([*argv, "--algorithm", "grpo", "--reward_fn", "--reward_model_name_or_path", "opt-125m"]) == 0
    out = capsys.readouterr().out
    assert "\n  reward     opt-125m" in out
    assert "counted: actor + reference + reward model; no critic" in out

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "counted: actor + reference + critic + reward model" in out
    assert "DeepSpeed-Chat rule of thumb: 80 GB / 6 = 13.3B params (actor + critic)" in out


def test_reads_config_json_from_a_directory(tmp_path) -> None:
    opt_125m = KNOWN_MODELS["opt-125m"]
    config = {
        "model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "ffn_dim": 3072, "vocab_size": 50265, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
        "do_layer_norm_before": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_model_spec(tmp_path)
    assert spec.vocab_size == 50272  # padded to a multiple of 8, as DeepSpeed-Chat resizes embeddings
    assert spec.params() == opt_125m.params()
    assert load_model_spec(tmp_path / "config.json").params() == opt_125m.params()

    (tmp_path / "config.json").write_text(preset_config("tiny-llama").to_json_string())
    assert load_model_spec(tmp_path).params() == load_model_spec("tiny-llama").params()


def test_config_errors_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(ModelSpecError, match="without config.json"):
        load_model_spec(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_family", "hidden_size": 768}))
    with pytest.raises(ModelSpecError, match="model_type 'no_such_family' is not a transformers model type"):
        load_model_spec(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelSpecError, match="transformers builds no causal LM from this t5 config"):
        load_model_spec(tmp_path)


def test_cli_prints_breakdown_verdict_and_largest_model(capsys) -> None:
    assert cli_main(["memory", "--model", "facebook/opt-1.3b", "--num_gpus", "8", "--zero_stage", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("weights", "gradients", "optimizer states", "activations", "generation KV cache", "buffers"):
        assert row in out
    assert "\nfits: needs" in out
    assert "largest opt model that fits with these settings: opt-" in out
    assert "DeepSpeed-Chat rule of thumb: 80 GB / 3 = 26.7B params" in out
    assert "why they differ:" in out

    assert main(["--model", "opt-66b", "--gpu_memory_gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "\ndoes not fit: needs" in out
    assert "largest opt model that fits with these settings: opt-" in out


def test_cli_step3_and_cpu_device(capsys) -> None:
    assert main(["--step", "3", "--model", "tiny-llama", "--critic_model", "tiny-opt", "--device", "cpu",
                 "--gpu_memory_gb", "8", "--dtype", "fp32", "--per_device_train_batch_size", "2",
                 "--per_device_generation_batch_size", "2", "--max_prompt_seq_len", "64",
                 "--max_answer_seq_len", "64"]) == 0
    out = capsys.readouterr().out
    assert "per process" in out and "fits: needs" in out
    assert "largest llama actor that fits" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "opt-7b"], "unknown model 'opt-7b'"),
        (["--critic_model", "no/such/dir"], "unknown model 'no/such/dir'"),
        (["--offload"], "--offload needs --zero_stage 1, 2 or 3"),
        (["--model", "tiny-opt", "--max_seq_len", "4096"], "exceeds tiny-opt's 1024 positions"),
        (["--step", "3", "--algorithm", "grpo"], "needs --num_samples_per_prompt 2 or more (got 1)"),
        (["--step", "3", "--algorithm", "rloo", "--num_samples_per_prompt", "1"],
         "needs --num_samples_per_prompt 2 or more (got 1)"),
        (["--step", "3", "--num_samples_per_prompt", "0"], "--num_samples_per_prompt 0 must be 1 or more"),
        (["--algorithm", "grpo", "--num_samples_per_prompt", "4"], "--algorithm grpo applies to --step 3 only"),
        (["--reward_fn", "synthetic_tasks"], "--reward_fn applies to --step 3 only"),
        (["--critic_lora_dim", "0"], "--critic_lora_dim applies to --step 3 only"),
        (["--step", "3", "--reward_model_name_or_path", "no/such/dir"], "unknown model 'no/such/dir'"),
        (["--step", "3", "--algorithm", "grpo", "--num_samples_per_prompt", "4", "--max_prompt_seq_len", "1024",
          "--reward_model_name_or_path", "tiny-opt"], "exceeds tiny-opt's 1024 positions"),
    ],
)
def test_cli_errors_exit_nonzero_with_a_clear_message(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_cpu_process_bytes_for_a_measured_run() -> None:
    config = preset_config("tiny-llama").to_dict()
    run = RunSettings(dtype="fp32", train_batch_size=2, max_seq_len=64)
    small = cpu_process_bytes(config, run)
    params = load_model_spec("tiny-llama").params()
    assert small > BASELINE_PROCESS_BYTES + 16 * params  # fp32 weights + grads + Adam m, v
    assert small < BASELINE_PROCESS_BYTES + 160 * 2**20
    assert cpu_process_bytes("tiny-llama", replace(run, train_batch_size=8)) > small


def _measured_peak_mib(module: str, argv: list[str], output_dir, env: dict[str, str]) -> float:
    """Run one step in its own process and read the peak resident memory it recorded in metrics.json."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((output_dir / "metrics.json").read_text())["peak_rss_mib"]


def test_a_child_reports_its_own_peak_not_its_parents(subprocess_env) -> None:
    """Linux carries the parent's high-water mark across exec into ru_maxrss; a run started from a large
    process (this pytest session) must still record only what it used itself."""
    ballast = b"x" * (600 * 2**20)  # written, so resident
    code = "from chatrlhf.utils.host_memory import peak_resident_mib; print(peak_resident_mib())"
    child = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                           check=True)
    assert float(child.stdout) < 300, child.stdout
    assert len(ballast) == 600 * 2**20


@pytest.mark.parametrize("step", [1, 3])
def test_cpu_estimate_is_within_25_percent_of_a_measured_run(step, tmp_path, sft_model, subprocess_env):
    """The estimate for a real tiny run on this CPU, against the peak RSS that run measured itself.

    The run builds its own data cache, so what it measures does not depend on which tests filled the shared one.
    """
    out = tmp_path / "out"
    if step == 1:
        argv = ["--model_name_or_path", sft_model, "--per_device_train_batch_size", "16", "--max_seq_len", "128",
                "--max_steps", "6", "--eval_iters", "2"]
        run = RunSettings(step=1, dtype="fp32", train_batch_size=16, max_seq_len=128)
        module = "chatrlhf.step1_sft.main"
    else:
        argv = ["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                "--per_device_generation_batch_size", "16", "--per_device_training_batch_size", "16",
                "--max_prompt_seq_len", "64", "--max_answer_seq_len", "48", "--max_steps", "2",
                "--eval_prompts", "16"]
        run = RunSettings(step=3, dtype="fp32", train_batch_size=16, generation_batch_size=16,
                          max_prompt_seq_len=64, max_answer_seq_len=48, critic=load_model_spec(sft_model))
        module = "chatrlhf.step3_rlhf.main"
    argv += ["--data_output_path", str(tmp_path / "data"), "--output_dir", str(out)]
    measured = _measured_peak_mib(module, argv, out, subprocess_env)
    estimated = cpu_process_bytes(sft_model, run) / 2**20
    assert abs(estimated - measured) <= 0.25 * measured, f"estimated {estimated:.0f} MiB, measured {measured:.0f} MiB"
