"""Step 3's run: settings from the flags, checks, the models, the training loop, evaluation and saving."""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, replace

import torch

from chatrlhf.step3_rlhf.card import role_cards
from chatrlhf.step3_rlhf.config import (
    AlgorithmConfig,
    GenerationConfig,
    IterationSettings,
    PPOConfig,
    RewardConfig,
    UnsupervisedData,
)
from chatrlhf.step3_rlhf.engines import build_engines, hybrid_engine_config
from chatrlhf.step3_rlhf.health import HealthLimits, rollout_problems
from chatrlhf.step3_rlhf.reward_functions import RewardFunction, RewardFunctionError, absolute_spec
from chatrlhf.step3_rlhf.roles import FrozenRole, TrainedRole
from chatrlhf.step3_rlhf.trainer import IterationStats, PPOTrainer
from chatrlhf.training import cli_args
from chatrlhf.training.checkpoint import CheckpointManager, restore_rng, rng_state
from chatrlhf.training.config import EngineSettings, LoopSettings, LoraSettings, OptimSettings
from chatrlhf.training.config_file import write_run_args
from chatrlhf.training.disk import checkpoint_bytes, model_bytes, require_free_space
from chatrlhf.training.loop import TrainResult, make_loader, resumable_epochs, training_session, write_metrics
from chatrlhf.training.metrics_log import MetricsLogger, format_metrics, print_rank0
from chatrlhf.training.model_card import ModelCard
from chatrlhf.training.run_control import StopRequested, TrainingHealthError, save_or_keep, signals_held
from chatrlhf.training.run_setup import require_output_dir, set_seed
from chatrlhf.training.saving import StagedModels, agree_saved, save_hf_model
from chatrlhf.training.validation import ConfigError, check_data_flags, check_length, check_model_path
from chatrlhf.utils import device
from chatrlhf.utils.data.collators import PromptCollator
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.fingerprint import tokenizer_fingerprint
from chatrlhf.utils.data.tokenized import build_step_data
from chatrlhf.utils.model.resolve import resolve_model

# Sampled answers a held-out prompt gets in the start and end evaluations.
EVAL_SAMPLES = 4
# Flags that only shape the critic: accepted, with one warning, when the algorithm trains none.
CRITIC_ONLY_FLAGS = ("cliprange_value", "lam")


@dataclass
class PPORun:
    data: DataConfig
    actor: TrainedRole
    critic: TrainedRole | None
    reference: FrozenRole
    reward: FrozenRole | None
    generation: GenerationConfig
    ppo: PPOConfig
    loop: LoopSettings
    iteration: IterationSettings
    rewards: RewardConfig
    algorithm: AlgorithmConfig = AlgorithmConfig()
    reward_fn: RewardFunction | None = None
    unsupervised: UnsupervisedData = UnsupervisedData()
    eval_prompts: int = 64
    enable_tensorboard: bool = False
    tensorboard_path: str = "step3_tensorboard"
    add_eot_token: bool = False
    eot_token: str = "<|endoftext|>"

    @classmethod
    def from_args(cls, args: argparse.Namespace, given: frozenset[str] = frozenset()) -> PPORun:
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
            loss_aggregation=args.loss_aggregation)
        rewards = RewardConfig(
            model_path=args.reward_model_name_or_path or (None if args.reward_fn else args.critic_model_name_or_path),
            fn_spec=absolute_spec(args.reward_fn) if args.reward_fn else None,
            model_weight=args.reward_model_weight, fn_weight=args.reward_fn_weight,
            fn_format_credit=args.reward_fn_format_credit, fn_partial_credit=args.reward_fn_partial_credit)
        critic = None
        if algorithm.uses_critic:
            critic = trained("critic")
        else:
            warn_unused_critic_flags(algorithm.name, given, critic_names_reward_model=(
                args.reward_model_name_or_path is None and args.reward_fn is None))
        # Without a critic, the reward model runs as the actor does (ZeRO-3 or not), as it always has.
        reward_flags = "critic" if critic is not None else "actor"
        reward = (frozen("reward", reward_flags, rewards.model_path, args.offload_reward_model)
                  if rewards.model_path is not None else None)
        run = cls(
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
        run.validate(args)
        if rewards.fn_spec is not None:
            run.reward_fn = RewardFunction.load(rewards.fn_spec, rewards.fn_format_credit, rewards.fn_partial_credit)
        return run

    def validate(self, args: argparse.Namespace) -> None:
        """Batch arithmetic and flag combinations DeepSpeed-Chat rejects, checked before any model loads."""
        samples = self.algorithm.num_samples_per_prompt
        episodes = args.per_device_generation_batch_size * samples * args.generation_batches
        per_step = args.per_device_training_batch_size * args.gradient_accumulation_steps
        rollout = (f"--per_device_generation_batch_size {args.per_device_generation_batch_size} prompts x "
                   f"--num_samples_per_prompt {samples} x --generation_batches {args.generation_batches} = "
                   f"{episodes} completions per rank")
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
        if self.ppo.normalize_reward and self.rewards.model_path is None:
            raise ConfigError("--normalize_reward uses the reward model's score statistics, but --reward_fn alone "
                              "gives the reward; drop it or add --reward_model_name_or_path")
        if args.inference_tp_size > 1 and args.actor_zero_stage != 3:
            raise ConfigError("--inference_tp_size > 1 needs --actor_zero_stage 3 (as in DeepSpeed-Chat)")
        if args.enable_mixed_precision_lora and (args.actor_lora_dim == 0 or args.actor_zero_stage != 3):
            raise ConfigError("--enable_mixed_precision_lora needs --actor_lora_dim > 0 and --actor_zero_stage 3")
        if args.only_optimize_lora and args.actor_lora_dim == 0 and args.critic_lora_dim == 0:
            raise ConfigError("--only_optimize_lora needs --actor_lora_dim or --critic_lora_dim > 0")
        check_model_path("--actor_model_name_or_path", self.actor.path)
        if self.critic is not None:
            check_model_path("--critic_model_name_or_path", self.critic.path)
        if self.rewards.model_path is not None:
            flag = "reward_model_name_or_path" if args.reward_model_name_or_path else "critic_model_name_or_path"
            check_model_path(f"--{flag}", self.rewards.model_path)
        check_data_flags(tuple(args.data_path), (), args.data_split)
        check_length(f"--max_prompt_seq_len {args.max_prompt_seq_len} + --max_answer_seq_len {args.max_answer_seq_len}",
                     args.max_prompt_seq_len + args.max_answer_seq_len, args.actor_model_name_or_path)

    def _model_options(self):
        """What every model loads with; each role sets its own dropout and dtype over it."""
        from chatrlhf.utils.model.loading import ModelOptions

        return ModelOptions(dtype=self.actor.dtype, add_eot_token=self.add_eot_token,
                            eot_token=self.eot_token)

    def run(self, record: dict | None = None) -> dict:
        """Train and save; ``record`` (``config_file.run_record``) is saved in the output folder as the flags."""
        from chatrlhf.utils.model.loading import load_tokenizer
        from chatrlhf.utils.model.reward_stats import load_reward_stats

        started = time.perf_counter()
        device.init_distributed()
        set_seed(self.loop.seed)
        actor_path = resolve_model(self.actor.path, self.data)
        critic_path = resolve_model(self.critic.path, self.data) if self.critic is not None else None
        reward_path = self.rewards.model_path
        if reward_path is not None:
            same = self.critic is not None and reward_path == self.critic.path
            reward_path = critic_path if same else resolve_model(reward_path, self.data)
        tokenizer = load_tokenizer(actor_path, self._model_options())
        scorers = {"critic": critic_path, "reward model": reward_path if reward_path != critic_path else None}
        for role, path in scorers.items():
            if path is not None and tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(
                    load_tokenizer(path, self._model_options())):
                raise ConfigError(
                    f"the actor ({actor_path}) and the {role} ({path}) use different tokenizers; the reward "
                    "model must score the actor's tokens: train step 2 on a model with the actor's tokenizer")
        gen = self.generation
        check_length(f"--max_prompt_seq_len {gen.max_prompt_seq_len} + --max_answer_seq_len {gen.max_answer_seq_len}",
                     gen.max_prompt_seq_len + gen.max_answer_seq_len, actor_path)
        data = build_step_data(self.data, 3, tokenizer)
        print_rank0(f"step 3 data: {data.info['num_train']} train / {data.info['num_eval']} eval prompts "
                    f"({'cached' if data.info.get('cache_hit') else 'built'}); {data.info['dropped_by_length']}")
        loader = make_loader(data.train, self.iteration.per_device_generation_batch_size,
                             PromptCollator(tokenizer.pad_token_id), shuffle=True, seed=self.loop.seed)
        iterations = len(loader) // self.ppo.generation_batches * self.loop.num_train_epochs
        if self.loop.max_steps:
            iterations = min(iterations, self.loop.max_steps)
        completions = (self.iteration.per_device_generation_batch_size * self.algorithm.num_samples_per_prompt
                       * self.ppo.generation_batches)
        micro_per_iter = completions // self.iteration.per_device_training_batch_size
        total_steps = max(iterations * self.ppo.ppo_epochs * micro_per_iter
                          // self.iteration.gradient_accumulation_steps, 1)
        engines = build_engines(
            replace(self.actor, path=actor_path),
            replace(self.critic, path=critic_path) if self.critic is not None else None,
            replace(self.reference, path=actor_path),
            replace(self.reward, path=reward_path) if self.reward is not None else None,
            tokenizer, self._model_options(), total_steps=total_steps, enable_ema=self.iteration.enable_ema)
        stats = load_reward_stats(reward_path) if reward_path is not None else None
        if self.ppo.normalize_reward and stats is None:
            print_rank0(f"--normalize_reward: {reward_path} has no reward_stats.json; rewards stay unnormalised")
        logger = MetricsLogger(self.enable_tensorboard, self.tensorboard_path, "step3_ppo")
        trainer = PPOTrainer(
            engines, tokenizer, self.generation, self.ppo, self.iteration, self.loop, logger,
            rewards=self.rewards, reward_fn=self.reward_fn, algorithm=self.algorithm,
            reward_mean=stats.mean if stats else 0.0, reward_std=stats.std if stats else 1.0,
            unsupervised=self._unsupervised(tokenizer), actor_zero_stage=self.actor.engine.zero_stage,
            fp32_loss=self.actor.engine.compute_fp32_loss,
        )
        it = self.iteration
        batches = {"data": os.path.basename(data.info["cache_dir"]), "seed": self.loop.seed,
                   "generation batch size": it.per_device_generation_batch_size,
                   "training batch size": it.per_device_training_batch_size,
                   "generation batches": self.ppo.generation_batches,
                   "gradient accumulation": it.gradient_accumulation_steps, "ranks": device.world_size()}
        manager = CheckpointManager(self.loop.output_dir, self.loop.save_total_limit, batches,
                                    self.loop.resume_ignore_settings)
        engines_by_tag = engines.trained()
        if device.is_main_process():
            trained = [engine.module for engine in engines_by_tag.values()]
            need = sum(model_bytes(m) + (checkpoint_bytes(m) if self.loop.save_interval else 0) for m in trained)
            require_free_space(self.loop.output_dir, need, "this run's models"
                               + (" and checkpoints" if self.loop.save_interval else ""))
        point = manager.resume_point(self.loop)
        resumed = None
        if point:
            resumed = manager.load(point, engines_by_tag)
            trainer.load_state(resumed)
            print_rank0(f"resuming {self.algorithm.name.upper()} at iteration {trainer.steps} from {point}")
        evaluations = {"start": resumed["held_out_start"] if resumed else self.evaluate(trainer, data.eval)}

        def checkpoint(step: int, state: dict) -> None:
            path = manager.save(step, engines_by_tag, {**state, "held_out_start": evaluations["start"]})
            print_rank0(f"iteration {step}: checkpoint written to {path}")

        try:
            self.train(trainer, loader, iterations, checkpoint, resumed)
        except StopRequested as stop:
            print_rank0(f"{stop}; resume with --resume")
            logger.close()
            raise SystemExit(stop.exit_code) from None
        with signals_held("the final evaluation and save"):
            print_rank0(f"trained {trainer.steps} iterations; final evaluation and save")
            evaluations["end"] = self.evaluate(trainer, data.eval)
            if record is not None:
                write_run_args(self.loop.output_dir, record)
            cards = role_cards(self, trainer.steps, trainer.history, evaluations, data.info)
            save_or_keep(lambda: self.save(engines, tokenizer, cards),
                         lambda: manager.save(trainer.steps, engines_by_tag,
                                              {**trainer.state(0, 0), "held_out_start": evaluations["start"]}))
        logger.close()
        summary = {"wall_time_s": time.perf_counter() - started, "iterations": trainer.steps,
                   "actor_updates": int(getattr(engines.actor, "global_steps", 0)), "eval_samples": EVAL_SAMPLES,
                   "held_out": evaluations, "history": trainer.history, "kl_coef": trainer.kl.value,
                   "forward_backend": trainer.backend.name}
        if device.is_main_process():
            write_metrics(self.loop.output_dir, TrainResult(trainer.steps, trainer.history, []), summary)
        print_rank0(f"saved {' and '.join(engines.trained())} under {self.loop.output_dir} "
                    f"({trainer.steps} iterations, {summary['wall_time_s']:.1f} s)")
        return summary

    def _unsupervised(self, tokenizer):
        name, config_name = self.unsupervised.name, self.unsupervised.config_name
        if not name or self.ppo.unsup_coef <= 0:
            return None
        from chatrlhf.step3_rlhf.unsupervised import CycledBatches, load_texts, text_blocks

        block = self.generation.max_prompt_seq_len + self.generation.max_answer_seq_len
        blocks = text_blocks(load_texts(name, config_name, self.loop.seed), tokenizer, block)
        print_rank0(f"unsupervised data: {blocks.shape[0]} blocks of {block} tokens from {name}")
        return CycledBatches(blocks, self.iteration.per_device_training_batch_size, self.loop.seed)

    def train(self, trainer: PPOTrainer, loader, iterations: int, checkpoint, resumed: dict | None) -> None:
        """Rollouts and updates until ``iterations``; ``checkpoint(step, state)`` at ``--save_interval`` and on a
        stop, on the loop every step shares (``training.loop``).

        Checkpoints fall between iterations, where the experience buffer is empty, so a resumed run
        regenerates nothing and draws the same random numbers as an uninterrupted one.
        """
        settings = self.iteration
        with training_session(iterations, trainer.steps, "ppo", self.loop.save_interval, checkpoint) as (bar, step_end):
            if trainer.steps >= iterations:
                return
            buffer, stats = [], IterationStats()
            for epoch, batches in resumable_epochs(loader, self.loop.num_train_epochs, resumed):
                for index, batch in batches:
                    if not buffer:
                        start = (epoch, index, rng_state())
                    buffer.append(self._experience(trainer, batch, stats, checkpoint, start))
                    if len(buffer) < self.ppo.generation_batches:
                        continue
                    metrics = trainer.iteration(buffer, stats)
                    trainer.steps += 1
                    bar.update(1)
                    trainer.log(metrics)
                    if settings.print_answers and trainer.steps % settings.print_answers_interval == 0:
                        trainer.show_answers(buffer[0])
                    answers = sum(len(e.scores) for e in buffer)
                    buffer, stats = [], IterationStats()
                    self._check_health(trainer, metrics, answers, checkpoint, epoch, index + 1)
                    step_end(trainer.steps, lambda: trainer.state(epoch, index + 1))  # noqa: B023 - called now
                    if trainer.steps >= iterations or (
                        settings.enable_test_mode and trainer.steps >= settings.test_stop_step
                    ):
                        return

    @staticmethod
    def _experience(trainer: PPOTrainer, batch: dict, stats: IterationStats, checkpoint,
                    start: tuple[int, int, dict]):
        """One batch's rollouts; if the reward function raises on any rank, every rank writes the checkpoint of the
        last finished iteration (with the random states it began this one with) before the run stops."""
        error = None
        try:
            experience = trainer.make_experience(batch, stats)
        except RewardFunctionError as exc:
            error = exc
        if device.all_ranks(error is None):
            return experience
        kept = ""
        if trainer.steps > 0:
            epoch, next_batch, rng = start
            restore_rng(rng)
            checkpoint(trainer.steps, trainer.state(epoch, next_batch))
            kept = f"; iteration {trainer.steps}'s checkpoint was written: fix the function and resume with --resume"
        raise RewardFunctionError(f"{error or 'the reward function failed on another rank'}{kept}")

    def _check_health(self, trainer: PPOTrainer, metrics: dict[str, float], answers: int, checkpoint, epoch: int,
                      next_batch: int) -> None:
        warnings, stops = rollout_problems(metrics, answers, self.iteration.health)
        for line in warnings:
            print_rank0(f"warning: iteration {trainer.steps}: {line}")
        if stops:
            checkpoint(trainer.steps, trainer.state(epoch, next_batch))
            raise TrainingHealthError(f"step 3 stopped at iteration {trainer.steps}: {'; '.join(stops)}. Its "
                                      "checkpoint was written; resume with --resume after changing the settings.")

    @torch.no_grad()
    def evaluate(self, trainer: PPOTrainer, eval_set) -> dict[str, float]:
        """Held-out prompts: mean reward and, on synthetic/tasks, checker accuracy of greedy answers and of
        ``EVAL_SAMPLES`` sampled answers a prompt at the training temperature.

        PPO optimises the sampling policy, so the sampled figures show its effect most directly; the greedy
        ones show what a deterministic user of the model sees. Sampling uses a fixed seed, so the start and
        end evaluations draw the same random numbers and the training run's random stream is untouched.
        """
        count = min(self.eval_prompts, len(eval_set))
        if count == 0:
            return {}
        rows = eval_set.select(range(count))
        collate = PromptCollator(trainer.tokenizer.pad_token_id)
        size = self.iteration.per_device_generation_batch_size
        batches = [collate([rows[i] for i in range(start, min(start + size, count))])
                   for start in range(0, count, size)]
        result = self._answer_metrics(trainer, batches, replace(self.generation, temperature=0.0), "")
        rng_devices = [device.local_device()] if device.has_cuda() else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(self.loop.seed)
            result.update(self._answer_metrics(trainer, batches * EVAL_SAMPLES, self.generation, "sampled_"))
        print_rank0(f"[held-out] {format_metrics(result)}")
        return result

    @staticmethod
    def _answer_metrics(trainer: PPOTrainer, batches: list[dict], cfg: GenerationConfig,
                        prefix: str) -> dict[str, float]:
        from chatrlhf.utils.checker_eval import accuracy_by_task

        scores, prompts, answers, tasks = [], [], [], []
        for batch in batches:
            rollout = trainer.generate(batch, cfg)
            decoded = trainer.decode_answers(rollout)
            scores += trainer.score(rollout, batch["prompt"], decoded)[0].tolist()
            answers += decoded
            prompts += batch["prompt"]
            tasks += batch["task"]
        result = {f"{prefix}mean_reward": sum(scores) / len(scores)}
        if all(tasks):
            accuracy = accuracy_by_task(prompts, answers)
            keys = accuracy if not prefix else ["overall"]
            result.update({f"{prefix}accuracy_{k}": accuracy[k] for k in keys})
        return result

    def save(self, engines, tokenizer, cards: dict[str, ModelCard]) -> None:
        """The actor, its EMA and the critic, each in its own folder with its card, put in place together."""
        out = self.loop.output_dir
        staged = StagedModels()
        try:
            save_hf_model(engines.actor.module, tokenizer, os.path.join(out, "actor"),
                          zero_stage=self.actor.engine.zero_stage, card=cards["actor"], staged=staged)
            if engines.critic is not None:
                save_hf_model(engines.critic.module, tokenizer, os.path.join(out, "critic"),
                              zero_stage=self.critic.engine.zero_stage, card=cards["critic"], staged=staged)
            if engines.ema is not None:
                save_hf_model(engines.ema, tokenizer, os.path.join(out, "actor_ema"), card=cards["actor_ema"],
                              staged=staged)
            error = None
            if device.is_main_process():
                try:
                    staged.publish()
                except OSError as exc:
                    error = exc
            agree_saved(error, f"the models to {out}")
        finally:
            staged.discard()


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
