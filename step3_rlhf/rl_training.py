"""Step 3's trainer as the run frame drives it (``training.run_frame.StepTrainer``): rollouts and updates
iteration by iteration, the held-out evaluations at the start and the end, and the state a checkpoint keeps.

Checkpoints fall between iterations, where the experience buffer is empty, so a resumed run regenerates
nothing and draws the same random numbers as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from chatrlhf.step3_rlhf.config import GenerationConfig
from chatrlhf.step3_rlhf.dynamic_sampling import DynamicRollout
from chatrlhf.step3_rlhf.experience import Experience
from chatrlhf.step3_rlhf.health import rollout_problems
from chatrlhf.step3_rlhf.reward_functions import RewardFunctionError
from chatrlhf.step3_rlhf.trainer import IterationStats, PPOTrainer
from chatrlhf.training.checkpoint import restore_rng, rng_state
from chatrlhf.training.loop import SaveHook, TrainResult, resumable_epochs, training_session
from chatrlhf.training.metrics_log import format_metrics, print_rank0
from chatrlhf.training.run_control import TrainingHealthError
from chatrlhf.utils import device
from chatrlhf.utils.data.collators import PromptCollator

# Sampled answers a held-out prompt gets in the start and end evaluations.
EVAL_SAMPLES = 4


@dataclass
class WholeRollout:
    """An iteration's generation batches as drawn (without ``--dynamic_sampling``)."""

    parts: list[Experience] = field(default_factory=list)

    @property
    def drawn(self) -> int:
        return len(self.parts)

    def add(self, exp: Experience) -> None:
        self.parts.append(exp)

    def ready(self, minimum_batches: int) -> bool:
        return self.drawn >= minimum_batches

    def buffer(self) -> list[Experience]:
        return self.parts

    def counts(self) -> dict[str, float]:
        return {}


@dataclass
class RLTraining:
    """``trainer`` over the prompts of ``loader`` for ``iterations`` iterations, evaluated on ``eval_set``; epochs,
    seed and save interval are the trainer's ``LoopSettings``."""

    trainer: PPOTrainer
    loader: object
    iterations: int
    eval_set: object
    eval_prompts: int
    # Held-out metrics by moment ("start", "end"); the start is kept in every checkpoint.
    evaluations: dict[str, dict] = field(default_factory=dict)
    resumed: dict | None = None

    # ----- the frame's protocol
    def state_dict(self, epoch: int, next_batch: int) -> dict:
        return {**self.trainer.state(epoch, next_batch), "held_out_start": self.evaluations.get("start", {})}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state(state)
        self.resumed = state
        self.evaluations["start"] = state["held_out_start"]
        print_rank0(f"resuming {self.trainer.algorithm.name.upper()} at iteration {self.trainer.steps}")

    def evaluate(self) -> None:
        print_rank0(f"trained {self.trainer.steps} iterations; final evaluation and save")
        self.evaluations["end"] = self.held_out()

    def train(self, on_save: SaveHook) -> TrainResult:
        """Rollouts and updates until ``iterations``; ``on_save(step, state)`` at ``--save_interval``, on a stop,
        on a health stop and when the reward function fails."""
        if "start" not in self.evaluations:
            self.evaluations["start"] = self.held_out()
        trainer, settings = self.trainer, self.trainer.iteration_settings
        loop = trainer.loop
        with training_session(self.iterations, trainer.steps, "ppo", loop.save_interval, on_save) as (bar, step_end):
            if trainer.steps >= self.iterations:
                return self.result()
            pool, stats = self._new_pool(), IterationStats()
            for epoch, batches in resumable_epochs(self.loader, loop.num_train_epochs, self.resumed):
                for index, batch in batches:
                    if not pool.drawn:
                        start = (epoch, index, rng_state())
                    pool.add(self._experience(batch, stats, on_save, start))
                    if not pool.ready(trainer.ppo.generation_batches):
                        continue
                    buffer = pool.buffer()
                    stats.add(**pool.counts())
                    metrics = trainer.iteration(buffer, stats)
                    trainer.steps += 1
                    bar.update(1)
                    trainer.log(metrics)
                    if settings.print_answers and trainer.steps % settings.print_answers_interval == 0:
                        trainer.show_answers(buffer[0])
                    answers = sum(len(e.scores) for e in buffer)
                    pool, stats = self._new_pool(), IterationStats()
                    self._check_health(metrics, answers, on_save, epoch, index + 1)
                    step_end(trainer.steps, lambda: self.state_dict(epoch, index + 1))  # noqa: B023 - called now
                    if trainer.steps >= self.iterations or (
                        settings.enable_test_mode and trainer.steps >= settings.test_stop_step
                    ):
                        return self.result()
        return self.result()

    def _new_pool(self) -> DynamicRollout | WholeRollout:
        """Where an iteration's generation batches gather: all of them, or with ``--dynamic_sampling`` the groups
        whose answers differ."""
        trainer = self.trainer
        if not trainer.algorithm.dynamic_sampling:
            return WholeRollout()
        batch_rows = (trainer.iteration_settings.per_device_generation_batch_size
                      * trainer.algorithm.num_samples_per_prompt)
        return DynamicRollout(target=batch_rows * trainer.ppo.generation_batches, batch_rows=batch_rows,
                              group_size=trainer.algorithm.num_samples_per_prompt,
                              max_extra_batches=trainer.algorithm.dynamic_sampling_max_batches,
                              pad_id=trainer.tokenizer.pad_token_id)

    def result(self) -> TrainResult:
        return TrainResult(self.trainer.steps, self.trainer.history, [])

    # ----- inside an iteration
    def _experience(self, batch: dict, stats: IterationStats, on_save: SaveHook, start: tuple[int, int, dict]):
        """One batch's rollouts; if the reward function raises on any rank, every rank writes the checkpoint of the
        last finished iteration (with the random states it began this one with) before the run stops."""
        trainer, error = self.trainer, None
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
            on_save(trainer.steps, self.state_dict(epoch, next_batch))
            kept = f"; iteration {trainer.steps}'s checkpoint was written: fix the function and resume with --resume"
        raise RewardFunctionError(f"{error or 'the reward function failed on another rank'}{kept}")

    def _check_health(self, metrics: dict[str, float], answers: int, on_save: SaveHook, epoch: int,
                      next_batch: int) -> None:
        steps = self.trainer.steps
        warnings, stops = rollout_problems(metrics, answers, self.trainer.iteration_settings.health)
        for line in warnings:
            print_rank0(f"warning: iteration {steps}: {line}")
        if stops:
            on_save(steps, self.state_dict(epoch, next_batch))
            raise TrainingHealthError(f"step 3 stopped at iteration {steps}: {'; '.join(stops)}. Its "
                                      "checkpoint was written; resume with --resume after changing the settings.")

    # ----- held-out evaluation
    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """Held-out prompts: mean reward and, on synthetic/tasks, checker accuracy of greedy answers and of
        ``EVAL_SAMPLES`` sampled answers a prompt at the training temperature.

        PPO optimises the sampling policy, so the sampled figures show its effect most directly; the greedy
        ones show what a deterministic user of the model sees. Sampling uses a fixed seed, so the start and
        end evaluations draw the same random numbers and the training run's random stream is untouched.
        """
        trainer = self.trainer
        count = min(self.eval_prompts, len(self.eval_set))
        if count == 0:
            return {}
        rows = self.eval_set.select(range(count))
        collate = PromptCollator(trainer.tokenizer.pad_token_id)
        size = trainer.iteration_settings.per_device_generation_batch_size
        batches = [collate([rows[i] for i in range(start, min(start + size, count))])
                   for start in range(0, count, size)]
        result = self._answer_metrics(batches, replace(trainer.generation, temperature=0.0), "")
        rng_devices = [device.local_device()] if device.has_cuda() else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(trainer.loop.seed)
            result.update(self._answer_metrics(batches * EVAL_SAMPLES, trainer.generation, "sampled_"))
        print_rank0(f"[held-out] {format_metrics(result)}")
        return result

    def _answer_metrics(self, batches: list[dict], cfg: GenerationConfig, prefix: str) -> dict[str, float]:
        from chatrlhf.utils.checker_eval import accuracy_by_task

        trainer = self.trainer
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
