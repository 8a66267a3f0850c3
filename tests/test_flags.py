"""Every flag does what it says (issue #18): per-role model options, fp32 loss, margins, tokenising workers,
notices for DeepSpeed-Chat flags without effect, --deepspeed_config on frozen engines, a truly frozen
reference, and collectives on the local device."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from chatrlhf.step3_rlhf.flags import build_parser as ppo_parser
from chatrlhf.step3_rlhf.main import main as ppo_main

# A PPO (or GRPO) run as short as step 3 allows: two prompts, four answer tokens, no held-out evaluation.
TINY_RUN = ["--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "2",
            "--max_prompt_seq_len", "48", "--max_answer_seq_len", "4", "--eval_prompts", "0",
            "--num_warmup_steps", "0"]


def _pairs_file(path: Path, margins: list[float] | None, column: str = "margin") -> str:
    rows = [{"prompt": f"\n\nHuman: q {i}?\n\nAssistant:", "chosen": f" yes {i}", "rejected": f" no {i}"}
            for i in range(12)]
    if margins is not None:
        for row, margin in zip(rows, margins * len(rows)):
            row[column] = margin
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from chatrlhf.utils.model.tokenizer import train_tokenizer

    texts = [f"\n\nHuman: q {i}?\n\nAssistant: yes {i} no {i}" for i in range(50)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


# ----- 1 and 6: each role's own options; --deepspeed_config on the frozen engines
def test_each_role_has_its_own_dropout_and_frozen_engines_take_the_deepspeed_config(
        sft_model, tmp_path, data_cache, built_engines, monkeypatch):
    from chatrlhf.training import engine as engine_module

    frozen_configs = []
    original = engine_module.eval_ds_config

    def spy(settings, world_size):
        frozen_configs.append((settings.job_name, original(settings, world_size)))
        return frozen_configs[-1][1]

    monkeypatch.setattr(engine_module, "eval_ds_config", spy)
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage3_max_live_parameters": 12345,
                                                      "reduce_bucket_size": 1000},
                                "gradient_clipping": 0.5}))
    assert ppo_main(["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                     "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--data_output_path", data_cache,
                     "--actor_dropout", "0.0", "--critic_dropout", "0.3", "--deepspeed_config", str(user),
                     *TINY_RUN]) == 0
    engines = built_engines["engines"]
    for model, dropout in ((engines.actor.module, 0.0), (engines.reference, 0.0),
                           (engines.critic.module, 0.3), (engines.reward, 0.3)):
        config = model.config
        assert (config.dropout, config.attention_dropout, config.activation_dropout) == (dropout,) * 3
    assert [job for job, _ in frozen_configs] == ["reference", "reward"]
    for _, config in frozen_configs:
        assert config["zero_optimization"] == {"stage": 0, "stage3_param_persistence_threshold": 1e4,
                                               "stage3_max_live_parameters": 12345}
        assert "gradient_clipping" not in config


def test_frozen_config_keeps_the_keys_of_a_model_without_optimizer(tmp_path):
    from chatrlhf.training.config import EngineSettings
    from chatrlhf.training.ds_config import eval_ds_config, train_ds_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                                                      "offload_optimizer": {"device": "cpu"}},
                                "fp16": {"enabled": True, "initial_scale_power": 12},
                                "optimizer": {"type": "Adam"}, "train_micro_batch_size_per_gpu": 7}))
    settings = EngineSettings(dtype="fp32", micro_batch_size=2, deepspeed_config=str(user))
    frozen = eval_ds_config(settings, world_size=1)
    assert frozen["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 1e4,
                                           "offload_param": {"device": "cpu"}}
    assert frozen["fp16"] == {"enabled": True, "initial_scale_power": 12}
    assert "optimizer" not in frozen and frozen["train_micro_batch_size_per_gpu"] == 2
    assert train_ds_config(settings, world_size=1)["optimizer"] == {"type": "Adam"}
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert eval_ds_config(settings, world_size=1)["zero_optimization"]["stage"] == 0


def test_roles_check_their_flags():
    from chatrlhf.step3_rlhf.roles import FrozenRole, TrainedRole
    from chatrlhf.training.config import EngineSettings, LoraSettings, OptimSettings
    from chatrlhf.training.validation import ConfigError

    with pytest.raises(ConfigError, match=r"--critic_dropout 1.5 must be in \[0, 1\)"):
        TrainedRole(name="critic", path="tiny-opt", dropout=1.5, engine=EngineSettings(), optim=OptimSettings(),
                    lora=LoraSettings())
    with pytest.raises(ConfigError, match="the reward model runs at ZeRO stage 0 or 3"):
        FrozenRole(name="reward", flags="critic", path="tiny-opt", dropout=None, engine=EngineSettings(zero_stage=2))


# ----- 2: --compute_fp32_loss
def test_compute_fp32_loss_sets_where_log_probs_are_computed(tmp_path):
    from chatrlhf.step3_rlhf.flags import run_settings
    from chatrlhf.step3_rlhf.ppo_math import logprobs_and_entropy
    from chatrlhf.utils.model.lm_forward import token_logprobs, token_logprobs_and_entropy

    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 11).to(torch.bfloat16), torch.randint(0, 11, (2, 3))
    for head in (logprobs_and_entropy, token_logprobs_and_entropy):
        wide, narrow = head(logits, tokens, fp32=True), head(logits, tokens, fp32=False)
        assert [t.dtype for t in wide] == [torch.float32] * 2 and [t.dtype for t in narrow] == [torch.bfloat16] * 2
        torch.testing.assert_close(narrow[0].float(), wide[0], atol=0.1, rtol=0.05)
    assert token_logprobs(logits, tokens, fp32=False).dtype == torch.bfloat16
    args = ppo_parser().parse_args(["--output_dir", str(tmp_path / "o"), "--dtype", "bf16", "--compute_fp32_loss"])
    run = run_settings(args)
    assert all(role.engine.compute_fp32_loss and role.dtype == torch.bfloat16
               for role in (run.actor, run.critic, run.reference, run.reward))


@pytest.mark.parametrize("flag", [True, False])
def test_compute_fp32_loss_reaches_the_step3_trainer(flag, sft_model, tmp_path, data_cache, monkeypatch):
    from chatrlhf.step3_rlhf import trainer as trainer_module

    seen: list[bool] = []
    original = trainer_module.token_logprobs

    def spy(logits, tokens, *, fp32=True):
        seen.append(fp32)
        return original(logits, tokens, fp32=fp32)

    monkeypatch.setattr(trainer_module, "token_logprobs", spy)
    rewards = tmp_path / "length.py"
    rewards.write_text("def score(prompt, response):\n    return float(len(response))\n")
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", f"{rewards}:score", "--num_samples_per_prompt", "2",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(tmp_path / "o"), "--max_steps", "1",
                     "--data_output_path", data_cache, *TINY_RUN, *(["--compute_fp32_loss"] if flag else [])]) == 0
    assert seen and set(seen) == {flag}


# ----- 3: --use_margin
def test_margins_come_from_the_file_and_shift_the_loss_by_the_hand_computed_amount(tmp_path, tokenizer):
    from transformers import OPTConfig, OPTForSequenceClassification

    from chatrlhf.step2_reward.reward_task import RewardTask, pair_scores
    from chatrlhf.utils.data.collators import PairCollator
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.data.options import ColumnMap, SourceOptions
    from chatrlhf.utils.data.tokenized import build_step_data

    def step2(path: str, columns: ColumnMap | None = None):
        cfg = DataConfig(data_path=(path,), data_split="0,1,0", data_output_path=str(tmp_path / "cache"),
                         max_seq_len=32, source=SourceOptions(columns=columns or ColumnMap()))
        return build_step_data(cfg, 2, tokenizer)

    with_margin = step2(_pairs_file(tmp_path / "m.jsonl", [0.75]))
    assert with_margin.info["sources_without_margin"] == [] and set(with_margin.train["margin"]) == {0.75}
    mapped = step2(_pairs_file(tmp_path / "g.jsonl", [1.5], column="gap"), ColumnMap(margin="gap"))
    assert set(mapped.train["margin"]) == {1.5}
    plain = str(tmp_path / "p.jsonl")
    assert step2(_pairs_file(Path(plain), None)).info["sources_without_margin"] == [plain]

    torch.manual_seed(0)
    model = OPTForSequenceClassification(OPTConfig(
        vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
        word_embed_proj_dim=16, num_labels=1, pad_token_id=tokenizer.pad_token_id)).eval()
    batch = PairCollator(tokenizer.pad_token_id)([with_margin.train[0]])
    engine = SimpleNamespace(module=model)
    with torch.no_grad():
        chosen, rejected = pair_scores(model, batch)
        loss_with, _ = RewardTask(use_margin=True).loss(engine, batch)
        loss_without, _ = RewardTask(use_margin=False).loss(engine, batch)
    diff = float(chosen - rejected)
    expected = math.log1p(math.exp(-(diff - 0.75))) - math.log1p(math.exp(-diff))
    assert float(loss_with - loss_without) == pytest.approx(expected, rel=1e-4)


def test_use_margin_without_margins_names_the_flag_and_the_source(tmp_path):
    from chatrlhf.step2_reward.main import build_parser
    from chatrlhf.step2_reward.run import RewardRun
    from chatrlhf.training.validation import ConfigError
    from chatrlhf.utils.data.tokenized import StepData

    args = build_parser().parse_args(["--output_dir", str(tmp_path / "o"), "--use_margin"])
    data = StepData(None, None, {"sources_without_margin": ["synthetic/tasks"]})
    with pytest.raises(ConfigError, match=r"--use_margin .* --data_path synthetic/tasks supplies none"):
        RewardRun.from_args(args).prepare_data(data, "", None)


def test_a_margin_that_is_not_a_number_is_located(tmp_path):
    from chatrlhf.utils.data.errors import DataError
    from chatrlhf.utils.data.local_sources import load_file
    from chatrlhf.utils.data.options import SourceOptions

    path = tmp_path / "bad.jsonl"
    _pairs_file(path, ["wide"])
    with pytest.raises(DataError, match="line 1: field 'margin' holds 'wide', expected a number"):
        load_file(str(path), SourceOptions())


# ----- 4: --preprocessing_num_workers
def test_tokenising_workers_reach_map_and_build_the_same_cache(tmp_path, tokenizer, monkeypatch):
    import datasets

    from chatrlhf.training import cli_args
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.data.tokenized import build_step_data, cache_key

    assert cli_args.data_config(ppo_parser().parse_args(["--preprocessing_num_workers", "2"])) \
        .preprocessing_num_workers == 2
    seen = []
    original = datasets.Dataset.map

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_proc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", spy)
    path = _pairs_file(tmp_path / "p.jsonl", None)
    built = {}
    for workers in (1, 2):
        cfg = DataConfig(data_path=(path,), data_split="1,1,1", max_seq_len=32, preprocessing_num_workers=workers,
                         data_output_path=str(tmp_path / f"cache{workers}"))
        built[workers] = build_step_data(cfg, 2, tokenizer), cache_key(cfg, 2, tokenizer)
    assert set(seen) == {1, 2}
    (one, key_one), (two, key_two) = built[1], built[2]
    assert key_one == key_two
    assert one.train.to_dict() == two.train.to_dict() and one.eval.to_dict() == two.eval.to_dict()


# ----- 5: DeepSpeed-Chat flags without effect
def test_flags_without_effect_print_one_line_each(capsys, monkeypatch):
    from chatrlhf.step2_reward.main import build_parser as reward_parser
    from chatrlhf.step3_rlhf.flags import inert_flags
    from chatrlhf.training.compat_flags import notify_inert_flags
    from chatrlhf.utils import device

    monkeypatch.setattr(device, "has_cuda", lambda: False)
    parser = ppo_parser()
    defaults = parser.parse_args([])
    assert notify_inert_flags(parser, defaults, inert_flags(defaults)) == []
    args = parser.parse_args(["--num_padding_at_beginning", "0", "--align_overflow", "--enable_hybrid_engine",
                              "--inference_tp_size", "2", "--release_inference_cache", "--unpin_actor_parameters",
                              "--tp_gather_partition_size", "4"])
    hybrid = ("it configures DeepSpeed's hybrid engine, which runs only with --enable_hybrid_engine on a CUDA "
              "device")
    expected = [
        "--num_padding_at_beginning 0: no effect here; scores are read at the last real token of the attention "
        "mask, so leading pads never matter; drop the flag",
        "--align_overflow: no effect here; only fp16 loss scaling overflows, and the actor and critic each skip "
        "their own overflowing steps; use --dtype bf16 to train without loss scaling",
        "--enable_hybrid_engine: no effect here; DeepSpeed's hybrid engine needs a CUDA device; generation runs on "
        "the training model with a KV cache instead",
        f"--inference_tp_size 2: no effect here; {hybrid}",
        f"--release_inference_cache: no effect here; {hybrid}",
        f"--unpin_actor_parameters: no effect here; {hybrid}",
        f"--tp_gather_partition_size 4: no effect here; {hybrid}",
    ]
    capsys.readouterr()
    assert notify_inert_flags(parser, args, inert_flags(args)) == expected
    assert capsys.readouterr().out.splitlines() == expected
    monkeypatch.setattr(device, "has_cuda", lambda: True)
    assert inert_flags(args) == ("num_padding_at_beginning", "align_overflow", "deepspeed", "deepscale", "local_rank")
    parser = reward_parser()
    args = parser.parse_args(["--no_fused_kernels"])
    assert notify_inert_flags(parser, args, ("num_padding_at_beginning", "no_fused_kernels")) == [
        "--no_fused_kernels: no effect here; the optimizer is DeepSpeed's FusedAdam on GPUs and torch's AdamW on "
        "CPU; use --offload for DeepSpeed's CPU Adam instead"]
    monkeypatch.setattr(device, "is_main_process", lambda: False)
    capsys.readouterr()
    notify_inert_flags(parser, args, ("no_fused_kernels",))
    assert capsys.readouterr().out == ""


# ----- 7: the reference stays the initial model
def test_lora_with_training_base_weights_scores_against_a_frozen_reference(sft_model, tmp_path, data_cache,
                                                                         built_engines):
    from safetensors.torch import load_file

    from chatrlhf.training.lora import plain_name

    out = tmp_path / "lora"
    rewards = tmp_path / "varied.py"
    rewards.write_text("def score(prompt, response):\n    return float(sum(map(ord, response)) % 7)\n")
    assert ppo_main(["--algorithm", "grpo", "--reward_fn", f"{rewards}:score", "--num_samples_per_prompt", "4",
                     "--actor_model_name_or_path", sft_model, "--output_dir", str(out), "--max_steps", "2",
                     "--actor_lora_dim", "4", "--actor_learning_rate", "1e-2", "--lr_scheduler_type", "constant",
                     "--data_output_path", data_cache, *TINY_RUN, "--per_device_training_batch_size", "8"]) == 0
    engines = built_engines["engines"]
    assert engines.reference is not None
    initial = load_file(Path(sft_model) / "model.safetensors")
    reference = engines.reference.state_dict()
    assert initial.keys() <= reference.keys()
    assert all(torch.equal(reference[name], tensor) for name, tensor in initial.items())
    actor = {plain_name(k): v for k, v in engines.actor.module.state_dict().items() if "lora_" not in k}
    assert any(not torch.equal(actor[name], tensor) for name, tensor in initial.items())
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["kl_to_ref"] != 0.0


# ----- 8: collectives on the local device
class _Sent(Exception):
    """Raised by the fake collectives once they have seen the tensor they were given."""


def test_every_collective_runs_on_the_local_device(monkeypatch):
    import torch.distributed as dist

    from chatrlhf.step2_reward.reward_task import score_batches
    from chatrlhf.training.loop import _mean_over_ranks
    from chatrlhf.training.run_control import StopSignals
    from chatrlhf.utils import device

    seen: list[torch.device] = []

    def record(tensor_or_list, *args, **kwargs):
        tensors = tensor_or_list if isinstance(tensor_or_list, list) else [tensor_or_list]
        seen.extend(getattr(t, "device", "not a tensor") for t in tensors + list(args))
        raise _Sent

    fake = torch.device("meta")
    monkeypatch.setattr(device, "world_size", lambda: 2)
    monkeypatch.setattr(device, "local_device", lambda: fake)
    for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "gather"):
        monkeypatch.setattr(dist, name, record)
    calls = {
        "loop mean": lambda: _mean_over_ranks(1.0),
        "stop signals": lambda: StopSignals().requested(),
        "step-2 scores": lambda: score_batches(None, []),
        "all_ranks": lambda: device.all_ranks(True),
        "all_reduce_sum": lambda: device.all_reduce_sum(torch.ones(2)),
        "all_gather_json": lambda: device.all_gather_json({"a": 1}),
    }
    for name, call in calls.items():
        seen.clear()
        with pytest.raises(_Sent):
            call()
        assert seen and all(d == fake for d in seen), (name, seen)


# ----- --enable_mixed_precision_lora
def test_mixed_precision_lora_quantizes_the_actors_frozen_weights(tmp_path):
    from chatrlhf.step3_rlhf.flags import run_settings
    from chatrlhf.training.ds_config import train_ds_config

    flags = ["--output_dir", str(tmp_path / "o"), "--actor_lora_dim", "8", "--actor_zero_stage", "3"]
    quantized = run_settings(ppo_parser().parse_args([*flags, "--enable_mixed_precision_lora"]))
    plain = run_settings(ppo_parser().parse_args(flags))
    zero = train_ds_config(quantized.actor.engine, world_size=2)["zero_optimization"]
    assert zero["zero_quantized_nontrainable_weights"] is True
    assert zero["zero_hpz_partition_size"] == 1  # two ranks on a one-device node: hpZ within the node
    assert "zero_quantized_nontrainable_weights" not in train_ds_config(plain.actor.engine, 2)["zero_optimization"]
    assert not quantized.critic.engine.quantized_nontrainable_weights


def test_the_launchers_own_local_rank_gets_no_notice(monkeypatch):
    """DeepSpeed's launcher adds --local_rank=N with LOCAL_RANK=N: no advice to drop a flag the user never wrote."""
    from chatrlhf.step1_sft.main import build_parser
    from chatrlhf.training.compat_flags import notify_inert_flags

    parser = build_parser()
    args = parser.parse_args(["--local_rank=1"])
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert notify_inert_flags(parser, args, ("local_rank",)) == []
    monkeypatch.delenv("LOCAL_RANK")
    assert notify_inert_flags(parser, args, ("local_rank",)) == [
        "--local_rank 1: no effect here; each process reads its rank from the launcher's LOCAL_RANK environment "
        "variable; drop the flag"]


def test_a_data_error_ends_its_sentence_before_the_hint():
    from chatrlhf.utils.data.errors import DataError

    assert str(DataError("--data_path x.json: no such file or folder", hint="Check the path.")) == (
        "--data_path x.json: no such file or folder. Check the path.")
    assert str(DataError("cut off.", hint="Retry.")) == "cut off. Retry."
