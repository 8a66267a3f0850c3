"""Every flag of steps 1-3 and of the e2e runner does something (issue #18): one row per flag.

A row parses its command twice, without and with the flag (and with the same companion flags both times), builds
what the run really uses from each (the step's run settings, the DeepSpeed config made from them, or the
commands the e2e runner would start) and asserts that what the row probes differs. A DeepSpeed-Chat
compatibility flag without effect here is checked by the exact notice line the command prints instead. A flag
without a row (or a row without a flag) fails ``test_every_flag_has_exactly_one_row``.

Flags whose effect shows only while training are probed at the typed field the run reads; the comments name
the readers: ``loop.*`` (training/loop.py, training/step_runner.py), ``engine.*`` (training/engine.py,
training/ds_config.py, training/metrics_log.py), ``iteration.*`` and ``generation``/``ppo``/``algorithm``
(step3_rlhf/run.py, trainer.py, rollout.py), ``data.*`` (utils/data: sources, cache key).
"""
from __future__ import annotations

import importlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_parsers import CONFIG_COMMANDS, build, options

from chatrlhf.training.compat_flags import INERT_FLAGS
from chatrlhf.training.ds_config import eval_ds_config, train_ds_config


# ----- rows and probes
@dataclass(frozen=True)
class Row:
    flag: str
    value: str | None  # what follows the flag; None for a switch
    probe: Callable[[Any], Any] | None  # what the run reads; None: the flag's notice line is the check
    given: tuple[str, ...] = ()  # flags both runs get, which this one needs

    def argv(self, tmp: Path) -> list[str]:
        tokens = [*self.given, self.flag, *(() if self.value is None else (self.value,))]
        return [token.format(tmp=tmp) for token in tokens]


def R(flag: str, value: str | None, probe: Callable[[Any], Any], *given: str) -> Row:
    return Row(flag, value, probe, given)


def inert(flag: str, value: str | None = None) -> Row:
    """A DeepSpeed-Chat flag without effect here: its one notice line (``compat_flags.notify_inert_flags``)."""
    return Row(flag, value, None)


def at(path: str) -> Callable[[Any], Any]:
    """An attribute of the built run, e.g. ``loop.print_loss``."""
    return lambda run: reduce(getattr, path.split("."), run)


def _dig(config: dict, path: str) -> Any:
    return reduce(lambda node, key: node.get(key) if isinstance(node, dict) else None, path.split("."), config)


def ds(path: str, role: str | None = None) -> Callable[[Any], Any]:
    """A key of the DeepSpeed config a trained engine gets (``engine.init_train_engine``): the step's model, or
    step 3's ``actor``/``critic``."""
    def probe(run):
        trained = getattr(run, role) if role else run
        return _dig(train_ds_config(trained.engine, 1, trained.optim.max_grad_norm), path)
    return probe


def frozen_ds(path: str, role: str) -> Callable[[Any], Any]:
    """A key of the DeepSpeed config of step 3's frozen ``reference`` or ``reward`` (``engine.init_eval_engine``)."""
    return lambda run: _dig(eval_ds_config(getattr(run, role).engine, 1), path)


def refusal(outcome: Any) -> str:
    """Whether the command refuses the run before any model loads, and why."""
    return f"{type(outcome).__name__}: {outcome}" if isinstance(outcome, Exception) else "accepted"


def command(step: int) -> Callable[[Any], Any]:
    """The command line the e2e runner would start for ``step`` (None: the step does not run)."""
    return lambda outcome: outcome.commands.get(step)


# ----- shared flag groups (training/cli_args.py)
def data_rows(*, sft_only: bool, margin: Callable[[Any], Any] | None = None) -> list[Row]:
    rows = [
        R("--data_path", "local/jsonfile", at("data.data_path")),
        R("--data_split", "1,1,1", at("data.data_split")),
        R("--data_output_path", "{tmp}/cache", at("data.data_output_path")),
        R("--prompt_template", "alpaca", at("data.source.prompt_template")),
        R("--prompt_column", "q", at("data.source.columns.prompt")),
        R("--response_column", "a", at("data.source.columns.response")),
        R("--chosen_column", "good", at("data.source.columns.chosen")),
        R("--rejected_column", "bad", at("data.source.columns.rejected")),
        R("--margin_column", "m", margin or at("data.source.columns.margin")),
        R("--skip_bad_records", None, at("data.skip_bad_records")),
        R("--strict_data", None, at("data.strict_data")),
        R("--allow_cross_step_duplicates", None, at("data.allow_cross_step_duplicates")),
    ]
    if sft_only:
        rows.append(R("--sft_only_data_path", "local/jsonfile", at("data.sft_only_data_path")))
    return rows


def model_rows(*, eot: bool) -> list[Row]:
    rows = [
        R("--model_name_or_path", "tiny-llama", at("model.name_or_path")),
        R("--dropout", "0.2", at("model.dropout")),
        R("--add_eot_token", None, at("model.add_eot_token")),
    ]
    if eot:
        rows.append(R("--eot_token", "<|eot|>", at("model.eot_token"), "--add_eot_token"))
    return rows


def reliability_rows() -> list[Row]:
    """The checkpoint, resume and health flags every step shares (``LoopSettings``)."""
    return [
        R("--save_total_limit", "2", at("loop.save_total_limit")),  # training/checkpoint.py
        R("--resume", None, at("loop.resume")),
        R("--resume_from", "{tmp}/ckpt", at("loop.resume_from")),
        R("--resume_ignore_settings", None, at("loop.resume_ignore_settings")),  # CheckpointManager.load
        # A folder another job wrote: refused without the flag (training/run_setup.require_output_dir).
        R("--overwrite_output_dir", None, refusal, "--output_dir", "{tmp}/taken"),
        R("--max_bad_steps", "3", at("loop.max_bad_steps")),  # training/run_control.LossGuard
    ]


def training_rows() -> list[Row]:
    return [
        R("--per_device_train_batch_size", "4", ds("train_micro_batch_size_per_gpu")),
        R("--per_device_eval_batch_size", "4", at("loop.per_device_eval_batch_size")),
        R("--max_seq_len", "128", at("data.max_seq_len")),
        R("--learning_rate", "0.02", at("optim.learning_rate")),
        R("--weight_decay", "0.1", at("optim.weight_decay")),
        R("--num_train_epochs", "2", at("loop.num_train_epochs")),
        R("--gradient_accumulation_steps", "2", ds("gradient_accumulation_steps")),
        R("--lr_scheduler_type", "linear", at("optim.lr_scheduler_type")),
        R("--num_warmup_steps", "5", at("optim.num_warmup_steps")),
        R("--output_dir", "{tmp}/other", at("loop.output_dir")),
        R("--seed", "7", at("loop.seed")),
        inert("--local_rank", "0"),
        R("--gradient_checkpointing", None, at("engine.gradient_checkpointing")),  # engine.init_train_engine
        R("--offload", None, ds("zero_optimization.offload_optimizer"), "--zero_stage", "2"),
        R("--dtype", "bf16", ds("bf16.enabled")),
        R("--zero_stage", "2", ds("zero_optimization.stage")),
        R("--lora_dim", "4", at("lora.dim")),
        R("--lora_module_name", "layers.", at("lora.module_name")),
        R("--only_optimize_lora", None, at("lora.only_optimize_lora"), "--lora_dim", "4"),
        R("--lora_learning_rate", "0.001", at("lora.learning_rate")),
        R("--save_lora_adapter", None, at("lora.save_adapter"), "--lora_dim", "4", "--only_optimize_lora"),
        R("--compute_fp32_loss", None, at("engine.compute_fp32_loss")),  # the step's task
        R("--enable_tensorboard", None, at("engine.enable_tensorboard")),  # training/metrics_log.MetricsLogger
        R("--tensorboard_path", "{tmp}/tb", at("engine.tensorboard_path")),
        R("--max_steps", "3", at("loop.max_steps")),
        R("--eval_interval", "3", at("loop.eval_interval")),
        R("--eval_iters", "7", at("loop.eval_iters")),
        R("--save_interval", "3", at("loop.save_interval")),
        R("--log_interval", "3", at("loop.log_interval")),
        *reliability_rows(),
        R("--group_by_length", None, at("loop.group_by_length")),  # training/samplers.py
        R("--packing", None, at("loop.packing")),  # training/step_runner.py -> training/packing.py
    ]


def deepspeed_rows(role: str | None = None) -> list[Row]:
    return [
        inert("--deepspeed"),
        R("--deepspeed_config", "{tmp}/ds.json", ds("gradient_clipping", role)),
        inert("--deepscale"),
        R("--deepscale_config", "{tmp}/ds.json", ds("gradient_clipping", role)),
    ]


# ----- the table: command -> rows
TABLE: dict[str, list[Row]] = {
    "sft": [
        *data_rows(sft_only=True), *model_rows(eot=True), *training_rows(),
        R("--train_on_prompt", None, at("train_on_prompt")),  # SFTCollator
        R("--data_share", "2", at("data.data_share")),  # utils/data/partitions.step_records
        R("--print_loss", None, at("loop.print_loss")),
        *deepspeed_rows(),
    ],
    "reward": [
        *data_rows(sft_only=False), *model_rows(eot=False), *training_rows(),
        inert("--num_padding_at_beginning", "0"),
        R("--center_rewards_coef", "0.1", at("center_rewards_coef")),  # RewardTask
        R("--lm_loss_coef", "0.1", at("lm_loss_coef")),
        R("--use_margin", None, at("use_margin")),
        R("--disable_dropout", None, at("model.dropout")),
        R("--no_bf16_to_fp32_loss", None, at("fp32_loss"), "--dtype", "bf16"),
        inert("--no_fused_kernels"),
        R("--print_loss", None, at("loop.print_loss")),
        *deepspeed_rows(),
    ],
    "dpo": [
        # DPO reads no margins: --margin_column is refused rather than ignored.
        *data_rows(sft_only=False, margin=refusal), *model_rows(eot=True), *training_rows(),
        R("--loss_type", "ipo", at("loss.loss_type")),  # DPOTask
        R("--beta", "0.2", at("loss.beta")),
        R("--label_smoothing", "0.1", at("loss.label_smoothing")),
        R("--simpo_gamma", "0.25", at("loss.simpo_gamma"), "--loss_type", "simpo"),
        R("--reference_model_name_or_path", "tiny-llama", at("reference.path")),
        R("--offload_reference_model", None, at("reference.offload")),  # reference.load_reference
        R("--precompute_ref_log_probs", None, at("reference_kind")),
        R("--print_loss", None, at("loop.print_loss")),
        *deepspeed_rows(),
    ],
    "kto": [
        # KTO reads no margins: --margin_column is refused rather than ignored.
        *data_rows(sft_only=False, margin=refusal), *model_rows(eot=True), *training_rows(),
        R("--loss_type", "apo_zero_unpaired", at("loss.loss_type")),  # KTOTask, UnpairedCollator
        R("--beta", "0.2", at("loss.beta")),
        R("--desirable_weight", "1.3", at("loss.desirable_weight")),
        R("--undesirable_weight", "0.7", at("loss.undesirable_weight")),
        R("--offload_reference_model", None, at("offload_reference")),  # training/reference_model.load_reference
        R("--print_loss", None, at("loop.print_loss")),
        *deepspeed_rows(),
    ],
    "ppo": [
        *data_rows(sft_only=False),
        R("--unsupervised_dataset_name", "{tmp}/unsup.txt", at("unsupervised.name")),  # step3_rlhf/unsupervised.py
        R("--unsupervised_dataset_config_name", "cfg", at("unsupervised.config_name")),
        R("--unsup_coef", "1.0", at("ppo.unsup_coef")),
        R("--actor_model_name_or_path", "tiny-llama", at("actor.path")),
        R("--critic_model_name_or_path", "tiny-llama", at("critic.path")),
        inert("--num_padding_at_beginning", "0"),
        R("--per_device_generation_batch_size", "32", at("iteration.per_device_generation_batch_size")),
        R("--per_device_training_batch_size", "8", ds("train_micro_batch_size_per_gpu", "actor")),
        R("--generation_batches", "2", at("ppo.generation_batches")),
        R("--ppo_epochs", "2", at("ppo.ppo_epochs")),
        R("--max_prompt_seq_len", "128", at("generation.max_prompt_seq_len")),
        R("--max_answer_seq_len", "128", at("generation.max_answer_seq_len")),
        R("--min_answer_seq_len", "2", at("generation.min_answer_seq_len")),
        R("--actor_learning_rate", "0.001", at("actor.optim.learning_rate")),
        R("--critic_learning_rate", "0.001", at("critic.optim.learning_rate")),
        R("--actor_weight_decay", "0.1", at("actor.optim.weight_decay")),
        R("--critic_weight_decay", "0.1", at("critic.optim.weight_decay")),
        R("--num_train_epochs", "2", at("loop.num_train_epochs")),
        R("--lr_scheduler_type", "linear", at("actor.optim.lr_scheduler_type")),
        R("--gradient_accumulation_steps", "2", ds("gradient_accumulation_steps", "actor"),
          "--per_device_training_batch_size", "8"),
        R("--num_warmup_steps", "5", at("actor.optim.num_warmup_steps")),
        R("--output_dir", "{tmp}/other", at("loop.output_dir")),
        R("--seed", "7", at("loop.seed")),
        R("--preprocessing_num_workers", "2", at("data.preprocessing_num_workers")),
        inert("--local_rank", "0"),
        inert("--enable_hybrid_engine"),
        inert("--unpin_actor_parameters"),
        inert("--release_inference_cache"),
        inert("--inference_tp_size", "2"),
        inert("--tp_gather_partition_size", "4"),
        R("--offload", None, ds("zero_optimization.offload_optimizer", "actor"), "--actor_zero_stage", "2"),
        R("--offload_reference_model", None, frozen_ds("zero_optimization.offload_param", "reference"),
          "--actor_zero_stage", "3"),
        R("--offload_reward_model", None, frozen_ds("zero_optimization.offload_param", "reward"),
          "--critic_zero_stage", "3"),
        R("--dtype", "bf16", ds("bf16.enabled", "actor")),
        R("--actor_zero_stage", "2", ds("zero_optimization.stage", "actor")),
        R("--critic_zero_stage", "2", ds("zero_optimization.stage", "critic")),
        R("--actor_gradient_checkpointing", None, at("actor.engine.gradient_checkpointing")),
        R("--critic_gradient_checkpointing", None, at("critic.engine.gradient_checkpointing")),
        R("--actor_dropout", "0.2", at("actor.dropout")),
        R("--critic_dropout", "0.2", at("critic.dropout")),
        R("--actor_lora_dim", "4", at("actor.lora.dim")),
        R("--actor_lora_module_name", "layers.", at("actor.lora.module_name")),
        R("--critic_lora_dim", "4", at("critic.lora.dim")),
        R("--critic_lora_module_name", "layers.", at("critic.lora.module_name")),
        R("--only_optimize_lora", None, at("actor.lora.only_optimize_lora"), "--actor_lora_dim", "4"),
        R("--actor_lora_learning_rate", "0.001", at("actor.lora.learning_rate")),
        R("--critic_lora_learning_rate", "0.001", at("critic.lora.learning_rate")),
        R("--enable_ema", None, at("iteration.enable_ema")),
        R("--enable_mixed_precision_lora", None,
          ds("zero_optimization.zero_quantized_nontrainable_weights", "actor"),
          "--actor_lora_dim", "4", "--actor_zero_stage", "3"),
        R("--compute_fp32_loss", None, at("actor.engine.compute_fp32_loss")),
        R("--enable_tensorboard", None, at("enable_tensorboard")),  # MetricsLogger in step3_rlhf/run.py
        R("--tensorboard_path", "{tmp}/tb", at("tensorboard_path")),
        R("--add_eot_token", None, at("add_eot_token")),  # PPORun._model_options
        R("--eot_token", "<|eot|>", at("eot_token"), "--add_eot_token"),
        inert("--align_overflow"),
        R("--print_answers", None, at("iteration.print_answers")),  # step3_rlhf/run.py
        R("--print_answers_interval", "2", at("iteration.print_answers_interval")),
        R("--enable_test_mode", None, at("iteration.enable_test_mode")),
        R("--test_stop_step", "3", at("iteration.test_stop_step")),
        R("--stop_kl_above", "5", at("iteration.health.stop_kl_above")),  # step3_rlhf/health.py
        R("--stop_empty_share_above", "0.5", at("iteration.health.stop_empty_share_above")),
        R("--kl_ctl", "0.2", at("ppo.kl_ctl")),
        R("--clip_reward_value", "2.0", at("ppo.clip_reward_value")),
        R("--cliprange", "0.1", at("ppo.cliprange")),
        R("--cliprange_value", "0.1", at("ppo.cliprange_value")),
        R("--gamma", "0.9", at("ppo.gamma")),
        R("--lam", "0.9", at("ppo.lam")),
        R("--kl_estimator", "k2", at("ppo.kl_estimator")),
        R("--target_kl", "0.1", at("ppo.target_kl")),
        R("--kl_horizon", "100", at("ppo.kl_horizon")),
        R("--normalize_reward", None, at("ppo.normalize_reward")),
        R("--whiten_advantages", None, at("ppo.whiten_advantages")),
        R("--temperature", "0.7", at("generation.temperature")),
        R("--top_p", "0.9", at("generation.top_p")),
        R("--top_k", "5", at("generation.top_k")),
        R("--max_steps", "3", at("loop.max_steps")),
        R("--eval_prompts", "8", at("eval_prompts")),
        R("--log_interval", "3", at("loop.log_interval")),
        R("--save_interval", "3", at("loop.save_interval")),
        *reliability_rows(),  # step3_rlhf/trainer.PPOTrainer.guard
        R("--algorithm", "grpo", at("algorithm.name"), "--num_samples_per_prompt", "2"),
        R("--num_samples_per_prompt", "2", at("algorithm.num_samples_per_prompt")),
        R("--scale_rewards", "none", at("algorithm.scale_rewards"),
          "--algorithm", "grpo", "--num_samples_per_prompt", "2"),
        R("--kl_mode", "loss", at("algorithm.kl_mode")),
        R("--cliprange_high", "0.3", at("ppo.cliprange_high")),
        R("--entropy_coef", "0.01", at("algorithm.entropy_coef")),
        R("--loss_aggregation", "sequence_mean", at("algorithm.loss_aggregation")),
        R("--importance_sampling_level", "sequence", at("algorithm.importance_sampling_level")),
        R("--dynamic_sampling", None, at("algorithm.dynamic_sampling"),
          "--algorithm", "grpo", "--num_samples_per_prompt", "2"),
        R("--dynamic_sampling_max_batches", "2", at("algorithm.dynamic_sampling_max_batches")),
        R("--dpo_beta", "0.2", at("algorithm.dpo_beta"), "--algorithm", "online_dpo"),  # actor_losses.online_dpo
        R("--dpo_loss_type", "ipo", at("algorithm.dpo_loss_type"), "--algorithm", "online_dpo"),
        R("--overlong_penalty", "100", at("rewards.overlong_penalty")),
        R("--reward_model_name_or_path", "tiny-llama", at("rewards.model_path")),
        R("--reward_fn", "synthetic_tasks", at("rewards.fn_specs")),
        R("--reward_weights", "0.5", at("rewards.fn_weights"), "--reward_fn", "synthetic_tasks"),
        R("--reward_model_weight", "0.5", at("rewards.model_weight")),
        R("--reward_fn_weight", "0.5", at("rewards.fn_weights"), "--reward_fn", "synthetic_tasks"),
        R("--reward_fn_format_credit", "0.2", at("rewards.fn_format_credit"), "--reward_fn", "synthetic_tasks"),
        R("--reward_fn_partial_credit", "0.2", at("rewards.fn_partial_credit"), "--reward_fn", "synthetic_tasks"),
        *deepspeed_rows("actor"),
    ],
    "e2e": [
        R("--step", "1", lambda outcome: sorted(outcome.commands)),
        R("--actor-model", "tiny-opt", command(1)),
        R("--reward-model", "tiny-opt", command(2)),
        R("--actor-zero-stage", "2", command(1)),
        R("--reward-zero-stage", "2", command(2)),
        R("--output-dir", "{tmp}/elsewhere", command(1)),
        R("--deployment-type", "single_node", command(1), "--actor-model", "1.3b", "--reward-model", "350m"),
        R("--step2-method", "dpo", command(2)),
        R("--step3-algorithm", "grpo", command(3)),
        R("--reward-fn", "synthetic_tasks", command(3)),
        R("--seed", "7", command(1)),
        R("--step1-args", "--max_steps 5", command(1)),
        R("--step2-args", "--max_steps 5", command(2)),
        R("--step3-args", "--max_steps 5", command(3)),
        R("--no-report", None, lambda outcome: outcome.report is None),
        R("--no-ablation", None, lambda outcome: outcome.ablation),  # e2e_rlhf.run_ablation
        R("--report-only", None, lambda outcome: sorted(outcome.commands)),
        R("--report-prompts", "10", at("report.synthetic")),  # ReportInputs, e2e_report.write_report
        R("--report-examples", "2", at("report.examples")),
    ],
}


# ----- building what a run uses, without running it
@dataclass(frozen=True)
class Command:
    module: str
    builder: str  # "module:name" of what builds the run settings from the flags ("" for the e2e runner)
    base: tuple[str, ...]


COMMANDS = {
    "sft": Command("chatrlhf.step1_sft.main", "chatrlhf.step1_sft.run:SFTRun.from_args", ("--output_dir", "{tmp}/out")),
    "reward": Command("chatrlhf.step2_reward.main", "chatrlhf.step2_reward.run:RewardRun.from_args",
                      ("--output_dir", "{tmp}/out")),
    "dpo": Command("chatrlhf.step2_dpo.main", "chatrlhf.step2_dpo.run:DPORun.from_args", ("--output_dir", "{tmp}/out")),
    "kto": Command("chatrlhf.step2_kto.main", "chatrlhf.step2_kto.run:KTORun.from_args", ("--output_dir", "{tmp}/out")),
    "ppo": Command("chatrlhf.step3_rlhf.main", "chatrlhf.step3_rlhf.main:run_settings", ("--output_dir", "{tmp}/out")),
    "e2e": Command("chatrlhf.applications.e2e_rlhf", "", ("--output-dir", "{tmp}/e2e")),
}


def builder_owner(name: str) -> tuple[Any, str]:
    """The object holding the command's settings builder and the builder's name on it (to call or stub it)."""
    module, _, path = COMMANDS[name].builder.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, attribute = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, attribute


def build_settings(name: str, *args: Any) -> Any:
    owner, attribute = builder_owner(name)
    return getattr(owner, attribute)(*args)


def step_run(name: str, argv: list[str]) -> Any:
    """The step's run settings (as its ``main`` builds them), or the user error refusing them."""
    from chatrlhf.training.validation import user_errors

    parser = build(COMMANDS[name].module)
    args = parser.parse_args(argv)
    try:
        if name == "ppo":
            from chatrlhf.step3_rlhf.flags import explicit_flags

            return build_settings(name, args, explicit_flags(parser, argv, args))
        return build_settings(name, args)
    except user_errors() as exc:
        return exc


def e2e_run(argv: list[str], tmp: Path, monkeypatch, capsys) -> Any:
    """What ``chatrlhf e2e`` would run: each step's command line and the report's inputs; nothing runs."""
    from chatrlhf.applications import e2e_report, e2e_rlhf

    outcome = SimpleNamespace(commands={}, report=None, ablation=None)
    monkeypatch.setattr(e2e_rlhf, "check_step3_inputs", lambda plan: None)
    monkeypatch.setattr(e2e_rlhf, "check_dpo_inputs", lambda plan: None)
    monkeypatch.setattr(e2e_rlhf, "run_step", lambda plan, step: outcome.commands.setdefault(step, plan.command(step))
                        and 0.0)
    monkeypatch.setattr(e2e_rlhf, "run_ablation", lambda plan, method: setattr(
        outcome, "ablation", plan.ablation_command(method, {"max_steps": "5"})) or 0.0)
    monkeypatch.setattr(e2e_report, "write_report", lambda inputs: setattr(outcome, "report", inputs) or tmp / "r.md")
    code = e2e_rlhf.main(argv)
    err = capsys.readouterr().err
    return outcome if code == 0 else RuntimeError(f"exit code {code}: {err}")


def notices(name: str, argv: list[str], monkeypatch, capsys) -> list[str]:
    """The notice lines the command's ``main`` prints for ``argv`` (its run stubbed out).

    An earlier in-process run may have left the launcher's ``LOCAL_RANK`` set, which would make ``--local_rank 0``
    look launcher-made; the rows here describe a user typing the flag."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(*builder_owner(name), lambda *args: SimpleNamespace(run=lambda record: None))
    capsys.readouterr()
    assert importlib.import_module(COMMANDS[name].module).main(argv) == 0
    return [line for line in capsys.readouterr().out.splitlines() if ": no effect here; " in line]


@pytest.fixture
def workspace(tmp_path) -> Path:
    (tmp_path / "ds.json").write_text('{"gradient_clipping": 0.5}')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "model.bin").write_text("another job's file")
    return tmp_path


CASES = [pytest.param(name, row, id=f"{name} {row.flag}") for name, rows in TABLE.items() for row in rows]


@pytest.mark.parametrize(("name", "row"), CASES)
def test_flag_has_an_effect(name, row, workspace, monkeypatch, capsys):
    base = [token.format(tmp=workspace) for token in COMMANDS[name].base]
    without, with_flag = base + [token.format(tmp=workspace) for token in row.given], base + row.argv(workspace)
    if row.probe is None:
        key = row.flag.removeprefix("--")
        assert key in INERT_FLAGS, f"{row.flag} has no effect and no notice: add it to INERT_FLAGS or make it work"
        shown = row.flag if row.value is None else f"{row.flag} {row.value}"
        assert notices(name, without, monkeypatch, capsys) == []
        assert notices(name, with_flag, monkeypatch, capsys) == [f"{shown}: no effect here; {INERT_FLAGS[key]}"]
        return
    if name == "e2e":
        before, after = (e2e_run(argv, workspace, monkeypatch, capsys) for argv in (without, with_flag))
    else:
        before, after = (step_run(name, argv) for argv in (without, with_flag))
    for outcome in (before, after):
        if isinstance(outcome, Exception) and row.probe is not refusal:
            raise outcome
    assert row.probe(after) != row.probe(before), f"{name} {shlex.join(row.argv(workspace))} changed nothing"


def test_every_flag_has_exactly_one_row():
    assert {command.module for command in COMMANDS.values()} == set(CONFIG_COMMANDS)
    problems = []
    for name, command in COMMANDS.items():
        flags = [action.option_strings[0] for action in options(build(command.module)) if action.dest != "config"]
        rows = [row.flag for row in TABLE[name]]
        problems += [f"{name} {flag}: no row" for flag in flags if flag not in rows]
        problems += [f"{name} {flag}: a row, but no such flag" for flag in rows if flag not in flags]
        problems += [f"{name} {flag}: {rows.count(flag)} rows" for flag in set(rows) if rows.count(flag) > 1]
    assert not problems, "\n".join(sorted(problems))
