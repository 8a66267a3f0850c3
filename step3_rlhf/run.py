"""Step 3's run: settings from the flags, checks, the models and the trainer, run through the run frame, and
the save of the actor, critic and EMA together."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from chatrlhf.step3_rlhf.card import role_cards
from chatrlhf.step3_rlhf.config import (
    AlgorithmConfig,
    GenerationConfig,
    IterationSettings,
    PPOConfig,
    RewardConfig,
    UnsupervisedData,
)
from chatrlhf.step3_rlhf.engines import build_engines
from chatrlhf.step3_rlhf.reward_functions import RewardFunction
from chatrlhf.step3_rlhf.rl_training import EVAL_SAMPLES, RLTraining
from chatrlhf.step3_rlhf.roles import FrozenRole, TrainedRole
from chatrlhf.step3_rlhf.trainer import PPOTrainer
from chatrlhf.training.config import LoopSettings
from chatrlhf.training.loop import TrainResult, make_loader
from chatrlhf.training.metrics_log import MetricsLogger, print_rank0
from chatrlhf.training.model_card import ModelCard
from chatrlhf.training.run_frame import RunFrame, begin_run
from chatrlhf.training.saving import StagedModels, agree_saved, save_hf_model
from chatrlhf.training.validation import ConfigError, check_length
from chatrlhf.utils import device
from chatrlhf.utils.data.collators import PromptCollator
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.fingerprint import tokenizer_fingerprint
from chatrlhf.utils.data.tokenized import build_step_data
from chatrlhf.utils.model.resolve import resolve_model


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
    reward_fns: tuple[RewardFunction, ...] = ()
    unsupervised: UnsupervisedData = UnsupervisedData()
    eval_prompts: int = 64
    enable_tensorboard: bool = False
    tensorboard_path: str = "step3_tensorboard"
    add_eot_token: bool = False
    eot_token: str = "<|endoftext|>"

    def _model_options(self):
        """What every model loads with; each role sets its own dropout and dtype over it."""
        from chatrlhf.utils.model.loading import ModelOptions

        return ModelOptions(dtype=self.actor.dtype, add_eot_token=self.add_eot_token,
                            eot_token=self.eot_token)

    def run(self, record: dict | None = None) -> dict:
        """Train and save; ``record`` (``config_file.run_record``) is saved in the output folder as the flags."""
        from chatrlhf.utils.model.loading import load_tokenizer
        from chatrlhf.utils.model.reward_stats import load_reward_stats

        started = begin_run(self.loop.seed)
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
            rewards=self.rewards, reward_fns=self.reward_fns, algorithm=self.algorithm,
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
        training = RLTraining(trainer, loader, iterations, data.eval, self.eval_prompts)
        frame = RunFrame(self.loop, batches, engines.trained(), logger, unit="iteration")

        def save(result: TrainResult) -> None:
            cards = role_cards(self, result.steps, result.history, training.evaluations, data.info)
            self.save(engines, tokenizer, cards)

        result = frame.run(training, save, record)
        summary = {"wall_time_s": time.perf_counter() - started, "iterations": result.steps,
                   "actor_updates": int(getattr(engines.actor, "global_steps", 0)), "eval_samples": EVAL_SAMPLES,
                   "held_out": training.evaluations, "history": result.history,
                   "forward_backend": trainer.backend.name}
        if self.algorithm.kl_weighted:
            summary["kl_coef"] = trainer.kl.value
        else:  # online DPO: β holds the policy near the reference, as step 2's DPO records it
            summary["dpo"] = {"loss_type": self.algorithm.dpo_loss_type, "beta": self.algorithm.dpo_beta}
        frame.finish(result, summary)
        print_rank0(f"saved {' and '.join(engines.trained())} under {self.loop.output_dir} "
                    f"({result.steps} iterations, {summary['wall_time_s']:.1f} s)")
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
