"""Step 3's flags: the parser (DeepSpeed-Chat's step-3 flags with their meaning, and ours) and the one place
that maps them onto the run's settings (``run_settings``), checking combinations before any model loads."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from chatrlhf.step3_rlhf.config import (
    AlgorithmConfig,
    GenerationConfig,
    IterationSettings,
    PPOConfig,
    RewardConfig,
    UnsupervisedData,
)
from chatrlhf.step3_rlhf.engines import hybrid_engine_config
from chatrlhf.step3_rlhf.health import HealthLimits
from chatrlhf.step3_rlhf.reward_functions import RewardFunction, absolute_spec
from chatrlhf.step3_rlhf.roles import FrozenRole, TrainedRole
from chatrlhf.step3_rlhf.run import PPORun
from chatrlhf.training import cli_args
from chatrlhf.training.config import EngineSettings, LoopSettings, LoraSettings, OptimSettings
from chatrlhf.training.config_file import is_repeatable, parser_options
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.training.run_setup import require_output_dir
from chatrlhf.training.validation import ConfigError, check_data_flags, check_length, check_model_path
from chatrlhf.utils import device

if TYPE_CHECKING:
    from chatrlhf.step3_rlhf.algorithms import Algorithm
    from chatrlhf.training.config_file import ConfigFileParser

# Flags that only shape the critic: accepted, with one warning, when the algorithm trains none.
CRITIC_ONLY_FLAGS = ("cliprange_value", "lam")


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.step3_rlhf.config import KL_ESTIMATORS
    from chatrlhf.training import cli_args
    from chatrlhf.training.cli_parser import new_parser
    from chatrlhf.training.compat_flags import inert_help

    parser = new_parser("chatrlhf ppo", __doc__.splitlines()[0], config_file=True)
    cli_args.add_data_args(parser, sft_only=False)
    add = parser.add_argument
    add("--unsupervised_dataset_name", type=str, default=None,
        help="Pretraining-loss data: a .txt file, a data-layer source, or a dataset with a 'text' column "
             "(unset: no pretraining loss).")
    add("--unsupervised_dataset_config_name", type=str, default=None,
        help="The configuration of a hub --unsupervised_dataset_name.")
    add("--unsup_coef", type=float, default=27.8,
        help="Weight of the next-token loss on --unsupervised_dataset_name blocks in the actor's loss.")
    add("--actor_model_name_or_path", type=str, default="tiny-opt",
        help="The step-1 model the actor and the frozen reference start from: a directory, hub name or preset.")
    add("--critic_model_name_or_path", type=str, default="tiny-opt",
        help="The step-2 model the critic starts from (--algorithm ppo); also the reward model unless "
             "--reward_model_name_or_path or --reward_fn is given.")
    add("--num_padding_at_beginning", type=int, default=1, help=inert_help("num_padding_at_beginning"))
    add("--per_device_generation_batch_size", type=int, default=16,
        help="Prompts per device in a rollout, each answered --num_samples_per_prompt times.")
    add("--per_device_training_batch_size", type=int, default=16,
        help="Completions per device in a training micro-batch.")
    add("--generation_batches", type=int, default=1, help="Rollouts gathered for each training iteration.")
    add("--ppo_epochs", type=int, default=1, help="Passes of the training over each iteration's completions.")
    add("--max_prompt_seq_len", type=int, default=256, help="Longest prompt in tokens; longer ones are dropped.")
    add("--max_answer_seq_len", type=int, default=256, help="Most tokens sampled per answer.")
    add("--min_answer_seq_len", type=int, default=0,
        help="Answers get at least this many tokens (the end-of-text token is blocked before).")
    add("--actor_learning_rate", type=float, default=9.65e-6, help="Peak learning rate of the actor.")
    add("--critic_learning_rate", type=float, default=5e-6, help="Peak learning rate of the critic.")
    add("--actor_weight_decay", type=float, default=0.0, help="AdamW weight decay of the actor's weights.")
    add("--critic_weight_decay", type=float, default=0.0, help="AdamW weight decay of the critic's weights.")
    run = parser.add_argument_group("run (the flags every step shares)")
    cli_args.add_schedule_args(run, num_warmup_steps=100)
    cli_args.add_output_args(run, saved="actor/ (and critic/, actor_ema/), metrics.json, checkpoints and the resolved "
                                        "flags", seeds="data order, sampling and the synthetic data")
    cli_args.add_precision_args(run, offloaded="the actor's and the critic's optimizers, whose states move to the CPU "
                                               "at ZeRO stage 1-3", tensorboard_path="step3_tensorboard")
    cli_args.add_eot_args(run)
    cli_args.add_progress_args(run, unit="iterations", log_interval=1)
    add("--preprocessing_num_workers", type=int, default=None,
        help="Processes that tokenise the data cache (unset: this one).")
    add("--enable_hybrid_engine", action="store_true",
        help="Generate with DeepSpeed's hybrid engine; CUDA only: elsewhere it has no effect (with a notice) and "
             "generation runs on the training model with a KV cache.")
    add("--unpin_actor_parameters", action="store_true",
        help="Hybrid engine: do not pin the actor's inference parameters in memory (less memory, slower "
             "generation); no effect without --enable_hybrid_engine on CUDA.")
    add("--release_inference_cache", action="store_true",
        help="Hybrid engine: free the inference cache after each generation; no effect without "
             "--enable_hybrid_engine on CUDA.")
    add("--inference_tp_size", type=int, default=1,
        help="Hybrid engine: tensor-parallel degree of generation (above 1 needs --actor_zero_stage 3); no effect "
             "without --enable_hybrid_engine on CUDA.")
    add("--tp_gather_partition_size", type=int, default=8,
        help="Hybrid engine: layers gathered at a time for tensor-parallel generation; no effect without "
             "--enable_hybrid_engine on CUDA.")
    add("--offload_reference_model", action="store_true",
        help="Keep the reference's parameters on the CPU (ZeRO-3 parameter offload: with --actor_zero_stage 3).")
    add("--offload_reward_model", action="store_true",
        help="Keep the reward model's parameters on the CPU (ZeRO-3 parameter offload: with --critic_zero_stage 3, "
             "or --actor_zero_stage 3 when no critic runs).")
    add("--actor_zero_stage", type=int, default=0, choices=[0, 1, 2, 3],
        help="ZeRO stage of the actor; the reference is sharded (stage 3) when this is 3.")
    add("--critic_zero_stage", type=int, default=0, choices=[0, 1, 2, 3],
        help="ZeRO stage of the critic; the reward model is sharded (stage 3) when this is 3.")
    add("--actor_gradient_checkpointing", action="store_true",
        help="Recompute the actor's activations in the backward pass: less memory, slower steps.")
    add("--critic_gradient_checkpointing", action="store_true",
        help="Recompute the critic's activations in the backward pass: less memory, slower steps.")
    add("--actor_dropout", type=float, default=None,
        help="Set every dropout of the actor and the reference to this (unset: the model's own).")
    add("--critic_dropout", type=float, default=None,
        help="Set every dropout of the critic and the reward model to this (unset: the model's own); without a "
             "critic the reward model takes --actor_dropout.")
    add("--actor_lora_dim", type=int, default=0,
        help="LoRA rank of the actor's adapters on the layers --actor_lora_module_name matches (0: no LoRA).")
    add("--actor_lora_module_name", type=str, default="decoder.layers.",
        help="The actor's LoRA goes on every linear layer whose name contains this ('layers.' for LLaMA).")
    add("--critic_lora_dim", type=int, default=0,
        help="LoRA rank of the critic's adapters on the layers --critic_lora_module_name matches (0: no LoRA).")
    add("--critic_lora_module_name", type=str, default="decoder.layers.",
        help="The critic's LoRA goes on every linear layer whose name contains this ('layers.' for LLaMA).")
    add("--only_optimize_lora", action="store_true",
        help="Train only the LoRA adapters of the actor and the critic; otherwise their base weights train too.")
    add("--actor_lora_learning_rate", type=float, default=5e-4, help="Learning rate of the actor's LoRA adapters.")
    add("--critic_lora_learning_rate", type=float, default=5e-4, help="Learning rate of the critic's LoRA adapters.")
    add("--enable_ema", action="store_true",
        help="Also keep an exponential moving average of the actor's weights, saved as actor_ema/.")
    add("--enable_mixed_precision_lora", action="store_true",
        help="Keep the actor's frozen weights quantized under ZeRO-3 (ZeRO++ zero_quantized_nontrainable_weights); "
             "needs --actor_lora_dim > 0 and --actor_zero_stage 3.")
    add("--align_overflow", action="store_true", help=inert_help("align_overflow"))
    add("--print_answers", action="store_true",
        help="Print two prompts of the rollout with their answers and rewards every --print_answers_interval "
             "iterations.")
    add("--print_answers_interval", type=int, default=1, help="Iterations between --print_answers prints.")
    add("--enable_test_mode", action="store_true",
        help="Stop after --test_stop_step iterations (DeepSpeed-Chat's test mode).")
    add("--test_stop_step", type=int, default=0, help="With --enable_test_mode: the iteration to stop after.")
    add("--stop_kl_above", type=float, default=0.0,
        help="Write a checkpoint and stop when an iteration's mean KL to the reference (nats an answer) passes "
             "this (0: only warn, above 20).")
    add("--stop_empty_share_above", type=float, default=1.0,
        help="Write a checkpoint and stop when more than this share of an iteration's answers is empty (1: only "
             "warn, at half).")
    group = parser.add_argument_group("PPO hyper-parameters (DeepSpeed-Chat's values as defaults)")
    group.add_argument("--kl_ctl", type=float, default=0.1,
                       help="Weight of the KL to the reference (the starting value when --target_kl is set).")
    group.add_argument("--clip_reward_value", type=float, default=5.0,
                       help="Rewards are clipped to [-this, this].")
    group.add_argument("--cliprange", type=float, default=0.2,
                       help="The actor's probability ratio is clipped to [1 - this, 1 + this] (the upper bound: "
                            "--cliprange_high when set).")
    group.add_argument("--cliprange_value", type=float, default=0.2,
                       help="The critic's value loss clips new values to within this of the old ones "
                            "(--algorithm ppo only).")
    group.add_argument("--gamma", type=float, default=1.0,
                       help="Discount of future token rewards (GAE, and REINFORCE++'s returns).")
    group.add_argument("--lam", type=float, default=0.95, help="GAE's lambda (--algorithm ppo only).")
    group.add_argument("--kl_estimator", choices=KL_ESTIMATORS, default=None,
                       help="Per-token KL to the reference, with r = policy / reference: k1 = log r, "
                            "k2 = (log r)^2 / 2, k3 = 1/r - 1 + log r. Unset: k1 with the KL in the reward, "
                            "k3 with it in the loss (--kl_mode).")
    group.add_argument("--target_kl", type=float, default=None,
                       help="Target KL of an adaptive controller that moves --kl_ctl toward it (unset: a fixed "
                            "--kl_ctl).")
    group.add_argument("--kl_horizon", type=int, default=10000,
                       help="The adaptive KL controller's horizon in samples: how slowly --kl_ctl moves.")
    group.add_argument("--normalize_reward", action="store_true",
                       help="Standardise the reward model's scores with the mean and std step 2 measured "
                            "(reward_stats.json).")
    group.add_argument("--whiten_advantages", action="store_true",
                       help="Standardise the advantages over the iteration's completions.")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of the rollouts.")
    group.add_argument("--top_p", type=float, default=1.0,
                       help="Sample from the most likely tokens holding this probability mass (1.0: all).")
    group.add_argument("--top_k", type=int, default=0, help="Sample from the K most likely tokens (0: all).")
    group.add_argument("--eval_prompts", type=int, default=64, help="Held-out prompts scored at start and end.")
    add_algorithm_args(parser)
    cli_args.add_deepspeed_args(parser)
    return parser


def add_algorithm_args(parser: argparse.ArgumentParser) -> None:
    """The policy-gradient algorithm and the reward sources (defaults: DeepSpeed-Chat's PPO and reward model)."""
    from chatrlhf.step3_rlhf import algorithms
    from chatrlhf.step3_rlhf.config import (
        DEFAULT_DPO_BETA,
        IMPORTANCE_SAMPLING_LEVELS,
        KL_MODES,
        LOSS_AGGREGATIONS,
        ONLINE_DPO_LOSS_TYPES,
        SCALE_REWARDS,
        SYNTHETIC_TASKS_FN,
    )

    group = parser.add_argument_group("algorithm and rewards")
    add = group.add_argument
    add("--algorithm", choices=algorithms.names(), default=algorithms.DEFAULT,
        help=" ".join(f"{algorithm.name}{'' if algorithm.uses_critic else ' (no critic loaded)'}: {algorithm.summary}"
                      for algorithm in algorithms.REGISTRY.values()))
    add("--num_samples_per_prompt", type=int, default=None,
        help="Answers sampled per prompt (grpo, rloo, rejection_sampling and online_dpo need 2 or more; unset: 2 for "
             "online_dpo, 1 for the others). A rollout holds --per_device_generation_batch_size prompts x this many "
             "answers.")
    add("--scale_rewards", choices=SCALE_REWARDS, default="group",
        help="grpo only: divide each group's centred rewards by the group's std (group), or not (none: Dr. GRPO).")
    add("--kl_mode", choices=KL_MODES, default=None,
        help="Where the KL to the reference goes, weighted by --kl_ctl: subtracted from the reward, or added "
             "to the loss. Unset: loss for grpo, reward for the others.")
    add("--cliprange_high", type=float, default=None,
        help="Upper clip of the probability ratio, 1 + this (asymmetric clipping); unset: --cliprange.")
    add("--entropy_coef", type=float, default=0.0,
        help="Entropy bonus: the loss subtracts this x the entropy (0: none).")
    add("--loss_aggregation", choices=LOSS_AGGREGATIONS, default="token_mean",
        help="How the actor's per-token losses become one: token_mean (every answer token alike), "
             "sequence_mean (each answer's mean over its tokens, then the mean over answers) or dr_grpo (each "
             "answer's sum over its tokens divided by --max_answer_seq_len, then the mean over answers: Dr. GRPO).")
    add("--importance_sampling_level", choices=IMPORTANCE_SAMPLING_LEVELS, default="token",
        help="The policy ratio per token (PPO, GRPO) or per answer (sequence: GSPO, the exp of the mean per-token "
             "log-ratio, clipped per answer).")
    add("--dynamic_sampling", action="store_true",
        help="DAPO's dynamic sampling (grpo, rloo): drop the groups whose answers all score the same (they give "
             "no gradient) and sample more prompts until the rollout is full; the log counts drawn and dropped.")
    add("--dynamic_sampling_max_batches", type=int, default=4,
        help="--dynamic_sampling: at most this many extra generation batches an iteration; when they run out, "
             "the dropped groups fill the rest.")
    add("--dpo_beta", type=float, default=None,
        help=f"online_dpo only: DPO's beta, how tightly the policy stays near the frozen reference (it takes the "
             f"place of the KL penalty; unset: {DEFAULT_DPO_BETA}).")
    add("--dpo_loss_type", choices=ONLINE_DPO_LOSS_TYPES, default=None,
        help="online_dpo only: the loss of each best-over-worst pair, sigmoid (DPO's -log sigmoid(beta x the "
             "log-ratio margin)) or ipo (the squared distance of the margin from 1 / (2 beta)); unset: sigmoid.")
    add("--overlong_penalty", type=int, default=0, metavar="LEN",
        help="DAPO's soft overlong penalty: an answer longer than LEN tokens loses (length - LEN) / "
             "(--max_answer_seq_len - LEN) of a point from its reward, a full point at the limit (0: off).")
    add("--reward_model_name_or_path", type=str, default=None,
        help="The frozen reward model. Unset: --critic_model_name_or_path, unless --reward_fn is given "
             "(then no reward model is loaded unless named here).")
    add("--reward_fn", type=str, action="append", default=None,
        help=f"A reward function (prompt: str, response: str) -> float, called per sample: "
             f"{SYNTHETIC_TASKS_FN} (synthetic/tasks' exact checker: 1.0 right, 0.0 wrong), path/to/file.py:function "
             "(relative to the current directory) or package.module:function. Repeat it for several functions: "
             "their weighted values add up, and each one's mean is logged.")
    add("--reward_weights", type=float, nargs="+", default=None, metavar="W",
        help="One weight per --reward_fn, in order, then the reward model's when there is one (instead of "
             "--reward_fn_weight and --reward_model_weight).")
    add("--reward_model_weight", type=float, default=1.0,
        help="Reward = this x the reward model's score + ...")
    add("--reward_fn_weight", type=float, default=1.0, help="... + this x each reward function's value.")
    add("--reward_fn_format_credit", type=float, default=0.0,
        help=f"--reward_fn {SYNTHETIC_TASKS_FN}: reward of a wrong answer in the right answer's sentence "
             "(the checker's format with another value), below the 1.0 of a right answer.")
    add("--reward_fn_partial_credit", type=float, default=0.0,
        help=f"--reward_fn {SYNTHETIC_TASKS_FN}: plus this x the share of the result's units right and in place "
             "(digits, letters, the sorted numbers) for a wrong answer in the right sentence.")


def explicit_flags(parser: ConfigFileParser, argv: list[str] | None, args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the flags given on the command line, even those given their default value, and of
    those a --config file sets to something other than their default.

    argparse only fills a default into a namespace that lacks the attribute, so parsing again into a
    namespace preset with a marker leaves the marker exactly where no flag was given.
    """
    unset = object()
    # A repeatable flag appends to what the namespace holds, so it starts from None (argparse's own start).
    appending = {action.dest for action in parser_options(parser) if is_repeatable(action)}
    probe = parser.parse_args(argv, argparse.Namespace(**{name: None if name in appending else unset
                                                          for name in vars(args)}))
    return frozenset(name for name, value in vars(probe).items()
                     if value is not unset and not (name in appending and value is None)) | parser.config_overrides


def inert_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The DeepSpeed-Chat flags that change nothing in this run: the hybrid-engine ones too unless the engine
    runs (--enable_hybrid_engine on a CUDA device)."""
    from chatrlhf.training.compat_flags import HYBRID_ENGINE_FLAGS, LAUNCHER_FLAGS
    from chatrlhf.utils.device import has_cuda

    names = ("num_padding_at_beginning", "align_overflow", *LAUNCHER_FLAGS)
    return names if args.enable_hybrid_engine and has_cuda() else names + HYBRID_ENGINE_FLAGS


def run_settings(args: argparse.Namespace, given: frozenset[str] = frozenset()) -> PPORun:
    """The run the flags describe; ``given`` names the flags set on the command line (for the warning
    about critic flags under a critic-free algorithm)."""
    output_dir = require_output_dir(args.output_dir, "step 3", args.overwrite_output_dir,
                                resume=bool(args.resume or args.resume_from))
    dtype = args.dtype or device.default_dtype_name()
    hybrid = hybrid_engine_config(args.enable_hybrid_engine, args.max_answer_seq_len, args.inference_tp_size,
                                  args.release_inference_cache, not args.unpin_actor_parameters,
                                  args.tp_gather_partition_size)

    def engine(stage: int, *, offload: bool, checkpointing: bool = False, job: str,
               hybrid_engine: dict | None = None, quantized: bool = False) -> EngineSettings:
        return EngineSettings(zero_stage=stage, offload=offload, dtype=dtype, gradient_checkpointing=checkpointing,
                              micro_batch_size=args.per_device_training_batch_size,
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              compute_fp32_loss=args.compute_fp32_loss,
                              deepspeed_config=cli_args.deepspeed_config_path(args),
                              job_name=job, hybrid_engine=hybrid_engine,
                              quantized_nontrainable_weights=quantized)

    def trained(name: str, *, hybrid_engine: dict | None = None, quantized: bool = False) -> TrainedRole:
        """The actor or the critic from its own ``--{name}_*`` flags."""
        flag = vars(args)
        return TrainedRole(
            name=name, path=flag[f"{name}_model_name_or_path"], dropout=flag[f"{name}_dropout"],
            engine=engine(flag[f"{name}_zero_stage"], offload=args.offload,
                          checkpointing=flag[f"{name}_gradient_checkpointing"], job=name,
                          hybrid_engine=hybrid_engine, quantized=quantized),
            optim=OptimSettings(learning_rate=flag[f"{name}_learning_rate"],
                                weight_decay=flag[f"{name}_weight_decay"],
                                lr_scheduler_type=args.lr_scheduler_type, num_warmup_steps=args.num_warmup_steps,
                                gradient_accumulation_steps=args.gradient_accumulation_steps),
            lora=LoraSettings(dim=flag[f"{name}_lora_dim"], module_name=flag[f"{name}_lora_module_name"],
                              only_optimize_lora=args.only_optimize_lora,
                              learning_rate=flag[f"{name}_lora_learning_rate"]))

    def frozen(name: str, flags: str, path: str, offload: bool) -> FrozenRole:
        """The reference (``flags`` actor) or the reward model (critic): ZeRO-3 when that role is."""
        stage = 3 if vars(args)[f"{flags}_zero_stage"] == 3 else 0
        return FrozenRole(name=name, flags=flags, path=path, dropout=vars(args)[f"{flags}_dropout"],
                          engine=engine(stage, offload=offload, job=name))

    algorithm = AlgorithmConfig(
        name=args.algorithm, num_samples_per_prompt=args.num_samples_per_prompt,
        scale_rewards=args.scale_rewards, kl_mode=args.kl_mode, entropy_coef=args.entropy_coef,
        loss_aggregation=args.loss_aggregation, importance_sampling_level=args.importance_sampling_level,
        dynamic_sampling=args.dynamic_sampling, dynamic_sampling_max_batches=args.dynamic_sampling_max_batches,
        dpo_beta=args.dpo_beta, dpo_loss_type=args.dpo_loss_type)
    check_unused_flags(algorithm.definition, given)
    model_path = args.reward_model_name_or_path or (None if args.reward_fn else args.critic_model_name_or_path)
    fn_specs = tuple(absolute_spec(spec) for spec in args.reward_fn or ())
    model_weight, fn_weights = reward_weights(args, given, len(fn_specs), model_path is not None)
    rewards = RewardConfig(
        model_path=model_path, fn_specs=fn_specs, model_weight=model_weight, fn_weights=fn_weights,
        fn_format_credit=args.reward_fn_format_credit, fn_partial_credit=args.reward_fn_partial_credit,
        overlong_penalty=args.overlong_penalty)
    critic = None
    if algorithm.uses_critic:
        critic = trained("critic")
    else:
        warn_unused_critic_flags(algorithm.name, given, critic_names_reward_model=(
            args.reward_model_name_or_path is None and not args.reward_fn))
    # Without a critic, the reward model runs as the actor does (ZeRO-3 or not), as it always has.
    reward_flags = "critic" if critic is not None else "actor"
    reward = (frozen("reward", reward_flags, rewards.model_path, args.offload_reward_model)
              if rewards.model_path is not None else None)
    run = PPORun(
        data=replace(cli_args.data_config(args, max_prompt_seq_len=args.max_prompt_seq_len)),
        actor=trained("actor", hybrid_engine=hybrid, quantized=args.enable_mixed_precision_lora),
        critic=critic,
        reference=frozen("reference", "actor", args.actor_model_name_or_path, args.offload_reference_model),
        reward=reward,
        generation=GenerationConfig(
            max_prompt_seq_len=args.max_prompt_seq_len, max_answer_seq_len=args.max_answer_seq_len,
            min_answer_seq_len=args.min_answer_seq_len, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k),
        ppo=PPOConfig(
            kl_ctl=args.kl_ctl, clip_reward_value=args.clip_reward_value, cliprange=args.cliprange,
            cliprange_value=args.cliprange_value, gamma=args.gamma, lam=args.lam,
            kl_estimator=args.kl_estimator or algorithm.default_kl_estimator, target_kl=args.target_kl,
            kl_horizon=args.kl_horizon, normalize_reward=args.normalize_reward,
            whiten_advantages=args.whiten_advantages, ppo_epochs=args.ppo_epochs,
            generation_batches=args.generation_batches, unsup_coef=args.unsup_coef,
            cliprange_high=args.cliprange_high),
        loop=LoopSettings(
            output_dir=output_dir, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
            save_interval=args.save_interval, log_interval=args.log_interval, seed=args.seed,
            save_total_limit=args.save_total_limit, resume=args.resume, resume_from=args.resume_from,
            overwrite_output_dir=args.overwrite_output_dir, resume_ignore_settings=args.resume_ignore_settings,
            max_bad_steps=args.max_bad_steps),
        iteration=IterationSettings(
            per_device_generation_batch_size=args.per_device_generation_batch_size,
            per_device_training_batch_size=args.per_device_training_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, enable_ema=args.enable_ema,
            print_answers=args.print_answers, print_answers_interval=args.print_answers_interval,
            enable_test_mode=args.enable_test_mode, test_stop_step=args.test_stop_step,
            health=HealthLimits(args.stop_kl_above, args.stop_empty_share_above)),
        enable_tensorboard=args.enable_tensorboard,
        tensorboard_path=args.tensorboard_path,
        rewards=rewards,
        algorithm=algorithm,
        unsupervised=UnsupervisedData(args.unsupervised_dataset_name, args.unsupervised_dataset_config_name),
        eval_prompts=args.eval_prompts,
        add_eot_token=args.add_eot_token,
        eot_token=args.eot_token,
    )
    validate(run, args)
    run.reward_fns = tuple(RewardFunction.load(spec, rewards.fn_format_credit, rewards.fn_partial_credit)
                           for spec in rewards.fn_specs)
    return run


def reward_weights(args: argparse.Namespace, given: frozenset[str], functions: int,
                   has_model: bool) -> tuple[float, tuple[float, ...]]:
    """The reward model's weight and each function's: from --reward_weights when given, else
    --reward_model_weight and --reward_fn_weight (the same for every function)."""
    if args.reward_weights is None:
        return args.reward_model_weight, (args.reward_fn_weight,) * functions
    clashing = sorted(f"--{name}" for name in ("reward_fn_weight", "reward_model_weight") if name in given)
    if clashing:
        raise ConfigError(f"--reward_weights and {' and '.join(clashing)} both set weights; give only "
                          "--reward_weights")
    sources = [f"{functions} --reward_fn"] + (["the reward model"] if has_model else [])
    if len(args.reward_weights) != functions + has_model:
        raise ConfigError(f"--reward_weights has {len(args.reward_weights)} weights for {' and '.join(sources)}; "
                          f"give {functions + has_model}: one per --reward_fn in order, then the reward model's"
                          if has_model else f"give {functions}: one per --reward_fn in order")
    weights = tuple(args.reward_weights)
    return (weights[functions] if has_model else args.reward_model_weight), weights[:functions]

def validate(run: PPORun, args: argparse.Namespace) -> None:
    """Batch arithmetic and flag combinations DeepSpeed-Chat rejects, checked before any model loads."""
    samples = run.algorithm.num_samples_per_prompt
    episodes = args.per_device_generation_batch_size * samples * args.generation_batches
    per_step = args.per_device_training_batch_size * args.gradient_accumulation_steps
    rollout = (f"--per_device_generation_batch_size {args.per_device_generation_batch_size} prompts x "
               f"--num_samples_per_prompt {samples} x --generation_batches {args.generation_batches} = "
               f"{episodes} completions per rank")
    if not run.algorithm.definition.uses_advantages and args.per_device_training_batch_size % samples:
        # Its loss pairs the answers to one prompt inside a micro-batch.
        raise ConfigError(
            f"--algorithm {run.algorithm.name} pairs each prompt's answers inside one training micro-batch: "
            f"--per_device_training_batch_size {args.per_device_training_batch_size} must be a multiple of "
            f"--num_samples_per_prompt {samples}; change one of them")
    if episodes % args.per_device_training_batch_size:
        raise ConfigError(
            f"{rollout} is not a multiple of --per_device_training_batch_size "
            f"{args.per_device_training_batch_size}; make it one")
    if (episodes // args.per_device_training_batch_size) % args.gradient_accumulation_steps:
        raise ConfigError(
            f"{rollout} make {episodes // args.per_device_training_batch_size} training micro-batches of "
            f"--per_device_training_batch_size {args.per_device_training_batch_size}, not a multiple of "
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} ({per_step} completions per "
            "optimizer step); change one of them")
    if run.rewards.overlong_penalty >= args.max_answer_seq_len:
        raise ConfigError(f"--overlong_penalty {run.rewards.overlong_penalty} must be below --max_answer_seq_len "
                          f"{args.max_answer_seq_len}: the penalty grows from that length to the limit")
    if run.ppo.normalize_reward and run.rewards.model_path is None:
        raise ConfigError("--normalize_reward uses the reward model's score statistics, but --reward_fn alone "
                          "gives the reward; drop it or add --reward_model_name_or_path")
    if args.inference_tp_size > 1 and args.actor_zero_stage != 3:
        raise ConfigError("--inference_tp_size > 1 needs --actor_zero_stage 3 (as in DeepSpeed-Chat)")
    if args.enable_mixed_precision_lora and (args.actor_lora_dim == 0 or args.actor_zero_stage != 3):
        raise ConfigError("--enable_mixed_precision_lora needs --actor_lora_dim > 0 and --actor_zero_stage 3")
    if args.only_optimize_lora and args.actor_lora_dim == 0 and args.critic_lora_dim == 0:
        raise ConfigError("--only_optimize_lora needs --actor_lora_dim or --critic_lora_dim > 0")
    check_model_path("--actor_model_name_or_path", run.actor.path)
    if run.critic is not None:
        check_model_path("--critic_model_name_or_path", run.critic.path)
    if run.rewards.model_path is not None:
        flag = "reward_model_name_or_path" if args.reward_model_name_or_path else "critic_model_name_or_path"
        check_model_path(f"--{flag}", run.rewards.model_path)
    check_data_flags(tuple(args.data_path), (), args.data_split)
    check_length(f"--max_prompt_seq_len {args.max_prompt_seq_len} + --max_answer_seq_len {args.max_answer_seq_len}",
                 args.max_prompt_seq_len + args.max_answer_seq_len, args.actor_model_name_or_path)


def check_unused_flags(algorithm: Algorithm, given: frozenset[str]) -> None:
    """The given flags that mean nothing to ``algorithm``: its refused ones are an error, its ignored ones (those
    the training scripts pass) one warning line."""
    def listed(names: list[str]) -> str:
        return ", ".join(f"--{name}" for name in names)

    refused = sorted(name for name in given if name in algorithm.refused_flags)
    if refused:
        raise ConfigError(f"{listed(refused)} {'means' if len(refused) == 1 else 'mean'} nothing to --algorithm "
                          f"{algorithm.name}, which trains with {algorithm.advantages_text}; drop "
                          f"{'it' if len(refused) == 1 else 'them'} or choose another --algorithm")
    ignored = sorted(name for name in given if name in algorithm.ignored_flags)
    if ignored:
        print_rank0(f"warning: --algorithm {algorithm.name} has no use for {listed(ignored)}; ignoring "
                    f"{'it' if len(ignored) == 1 else 'them'}")


def warn_unused_critic_flags(algorithm: str, given: frozenset[str], *, critic_names_reward_model: bool) -> None:
    """One warning line naming the critic flags a critic-free run ignores, so that adding ``--algorithm`` to a
    DeepSpeed-Chat script is enough to switch it (``--critic_model_name_or_path`` still names the reward model
    when neither ``--reward_model_name_or_path`` nor ``--reward_fn`` does)."""
    ignored = sorted(name for name in given if name.startswith("critic_") or name in CRITIC_ONLY_FLAGS)
    if critic_names_reward_model and "critic_model_name_or_path" in ignored:
        ignored.remove("critic_model_name_or_path")
    if ignored:
        print_rank0(f"warning: --algorithm {algorithm} trains no critic; ignoring "
                    f"{', '.join('--' + name for name in ignored)}")
