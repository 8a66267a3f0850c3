"""The step-3 loop: rollouts, scoring, advantages, updates of the actor by its algorithm's loss (and of the critic
under PPO), metrics, saving."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import torch

from chatrlhf.step3_rlhf import algorithms
from chatrlhf.step3_rlhf.advantages import flat_group_fraction
from chatrlhf.step3_rlhf.config import AlgorithmConfig, GenerationConfig, IterationSettings, PPOConfig, RewardConfig
from chatrlhf.step3_rlhf.engines import PPOEngines, update_ema
from chatrlhf.step3_rlhf.experience import Experience, micro_batches, repeat_prompts
from chatrlhf.step3_rlhf.forward_backend import choose_backend
from chatrlhf.step3_rlhf.kl_control import KLController
from chatrlhf.step3_rlhf.packed_answers import Head
from chatrlhf.step3_rlhf.ppo_math import (
    explained_variance,
    gae,
    kl_penalty,
    logprobs_and_entropy,
    overlong_penalty,
    token_rewards,
    value_loss,
    whiten,
)
from chatrlhf.step3_rlhf.reward_functions import RewardFunction
from chatrlhf.step3_rlhf.rollout import Rollout
from chatrlhf.step3_rlhf.unsupervised import CycledBatches
from chatrlhf.training.checkpoint import CheckpointError
from chatrlhf.training.config import LoopSettings
from chatrlhf.training.metrics_log import MetricsLogger, format_metrics, print_rank0
from chatrlhf.training.run_control import LossGuard
from chatrlhf.utils import device
from chatrlhf.utils.model.lm_forward import causal_lm_loss, token_logprobs, token_logprobs_and_entropy
from chatrlhf.utils.model.zero3 import lockstep_needed


@dataclass
class IterationStats:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **items: float) -> None:
        for key, value in items.items():
            self.values.setdefault(key, []).append(float(value))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


def tempered(head: Head, temperature: float) -> Head:
    """``head`` on the logits of the sampling distribution (over ``temperature``); as it is for 0 (greedy) or 1."""
    if temperature in (0.0, 1.0):
        return head

    def scaled(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return head(logits / temperature, tokens)

    return scaled


class PPOTrainer:
    def __init__(
        self,
        engines: PPOEngines,
        tokenizer,
        generation: GenerationConfig,
        ppo: PPOConfig,
        iteration: IterationSettings,
        loop: LoopSettings,
        logger: MetricsLogger,
        *,
        rewards: RewardConfig,
        reward_fns: tuple[RewardFunction, ...] = (),
        algorithm: AlgorithmConfig | None = None,
        reward_mean: float = 0.0,
        reward_std: float = 1.0,
        unsupervised: CycledBatches | None = None,
        actor_zero_stage: int = 0,
        fp32_loss: bool = False,
    ) -> None:
        self.engines = engines
        self.tokenizer = tokenizer
        self.generation = generation
        self.ppo = ppo
        self.iteration_settings = iteration
        self.loop = loop
        self.logger = logger
        self.rewards = rewards
        self.reward_fns = reward_fns
        self.algorithm = algorithm or AlgorithmConfig()
        self.kl = KLController(ppo.kl_ctl, ppo.target_kl, ppo.kl_horizon)
        self.reward_mean, self.reward_std = reward_mean, max(reward_std, 1e-6)
        self.unsupervised = unsupervised
        # --compute_fp32_loss: log-softmax and values in fp32 under fp16/bf16 (a no-op for fp32 models).
        self.fp32_loss = fp32_loss
        self.actor_zero_stage = actor_zero_stage
        self.target = device.local_device()
        self.steps = 0
        self.history: list[dict] = []
        # One guard for the actor's and the critic's losses: a micro-batch with either non-finite is skipped whole.
        self.guard = LossGuard(loop.max_bad_steps)
        critic = engines.critic.module if engines.critic is not None else None
        self.lockstep = lockstep_needed(engines.actor.module, critic, engines.reference, engines.reward)
        # Chosen once: the models' own forward on GPUs and under lockstep, the CPU speed paths elsewhere.
        models = [m for m in (engines.actor.module, critic, engines.reference, engines.reward) if m is not None]
        self.backend = choose_backend(self.lockstep, models,
                                      hybrid_engine=engines.actor if engines.hybrid_generation else None)

    def _policy_outputs(self, model, rollout: Rollout | Experience, head: Head) -> tuple[torch.Tensor, ...]:
        """``head(logits, answer tokens)`` of a causal LM at every answer token, each output (B, answer width).

        The logits are divided by the sampling temperature: the log-probs, ratios and KL are then those of the
        distribution the answers were drawn from (a temperature of 0 or 1 leaves them as they are).
        """
        return self.backend.logprobs(model, rollout, tempered(head, self.generation.temperature))

    # ----- rollout and scoring
    def decode_answers(self, rollout: Rollout) -> list[str]:
        return self.tokenizer.batch_decode(rollout.answers, skip_special_tokens=True)

    @torch.no_grad()
    def score(self, rollout: Rollout, prompts: list[str], answers: list[str],
              stats: IterationStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward of each sample, raw and as PPO takes it (the model score normalised with
        ``--normalize_reward``): the model's weight x its score + each function's weight x its value."""
        raw = normalised = None
        if self.engines.reward is not None:
            model = self.reward_scores(rollout)
            finite = torch.isfinite(model)
            if not bool(finite.all()):
                print_rank0(f"warning: the reward model gave {int((~finite).sum())} non-finite scores; they count as 0")
                model = torch.where(finite, model, torch.zeros_like(model))
            weight = self.rewards.model_weight
            raw = weight * model
            normalised = weight * ((model - self.reward_mean) / self.reward_std if self.ppo.normalize_reward else model)
            if stats is not None:
                stats.add(nonfinite_rewards=float((~finite).sum()), reward_model_mean=float(model.mean()))
        for fn, weight in zip(self.reward_fns, self.rewards.fn_weights):
            values = fn.scores(prompts, answers).to(self.target)
            part = weight * values
            raw = part if raw is None else raw + part
            normalised = part if normalised is None else normalised + part
            if stats is not None:
                key = "reward_fn_mean" if len(self.reward_fns) == 1 else f"reward_fn_mean/{fn.short_name}"
                stats.add(**{key: float(values.mean())})
        return raw, normalised

    @torch.no_grad()
    def reward_scores(self, rollout: Rollout) -> torch.Tensor:
        """The frozen reward model's score of each prompt + answer (at its last real token)."""
        return self.backend.scores(self.engines.reward, rollout)

    def generate(self, batch: dict, cfg: GenerationConfig | None = None):
        """Answers to ``batch`` from the backend's sampler (DeepSpeed's hybrid engine when it runs)."""
        actor = self.engines.actor.module
        was_training = actor.training
        actor.eval()
        ids, mask = batch["input_ids"].to(self.target), batch["attention_mask"].to(self.target)
        ends = {"eos_id": self.tokenizer.eos_token_id, "pad_id": self.tokenizer.pad_token_id}
        rollout = self.backend.sample(actor, ids, mask, cfg or self.generation, **ends)
        actor.train(was_training)
        return rollout

    @torch.no_grad()
    def make_experience(self, batch: dict, stats: IterationStats) -> Experience:
        """Sample ``--num_samples_per_prompt`` answers to every prompt of ``batch`` (adjacent rows) and score them."""
        started = time.perf_counter()
        batch = repeat_prompts(batch, self.algorithm.num_samples_per_prompt)
        rollout = self.generate(batch)
        generated = time.perf_counter()
        with self.engines.reference_policy() as reference:
            (ref_logprobs,) = self._policy_outputs(
                reference, rollout, lambda logits, tokens: (token_logprobs(logits, tokens, fp32=self.fp32_loss),))
        answers = self.decode_answers(rollout)
        scores, rewards_in = self.score(rollout, batch["prompt"], answers, stats)
        if self.rewards.overlong_penalty:
            penalty = overlong_penalty(rollout.answer_lengths, self.rewards.overlong_penalty,
                                       self.generation.max_answer_seq_len).to(scores.dtype)
            scores, rewards_in = scores + penalty, rewards_in + penalty
            stats.add(overlong_penalty=float(penalty.mean()))
        if all(batch["task"]):
            from chatrlhf.utils.checker_eval import accuracy_by_task

            stats.add(accuracy=accuracy_by_task(batch["prompt"], answers)["overall"])
        scored = time.perf_counter()
        new_tokens = int(rollout.answer_mask.sum())
        stats.add(generation_s=generated - started, scoring_s=scored - generated,
                  generated_tokens_per_s=new_tokens / max(generated - started, 1e-9))
        return Experience.from_rollout(rollout, ref_logprobs, scores, rewards_in, batch["prompt"], batch["task"])

    # ----- advantages
    @property
    def _kl_reward_coef(self) -> float:
        return 0.0 if self.algorithm.kl_in_loss else self.kl.value

    def _finish(self, exp: Experience, logprobs: torch.Tensor, values: torch.Tensor | None) -> None:
        """Old log-probs (and values) of ``exp`` are known: its KL, and under PPO its rewards, advantages and
        returns (the critic-free algorithms' advantages are set for the whole batch in ``prepare``)."""
        mask = exp.answer_mask.to(logprobs.dtype)
        exp.old_logprobs, exp.old_values = logprobs, values
        if values is None:
            exp.kl = kl_penalty(logprobs, exp.ref_logprobs, self.ppo.kl_estimator) * mask
            return
        rewards, exp.kl = token_rewards(logprobs, exp.ref_logprobs, exp.rewards_in, mask,
                                        kl_coef=self._kl_reward_coef, clip_reward_value=self.ppo.clip_reward_value,
                                        estimator=self.ppo.kl_estimator)
        exp.advantages, exp.returns = gae(rewards, values, mask, self.ppo.gamma, self.ppo.lam)

    def _critic_free_advantages(self, batches: list[Experience]) -> None:
        """The algorithm's advantages over the whole batch; the KL is in the reward unless ``kl_in_loss``."""
        settings = algorithms.AdvantageSettings(
            kl_coef=self._kl_reward_coef, clip_reward_value=self.ppo.clip_reward_value,
            kl_estimator=self.ppo.kl_estimator, gamma=self.ppo.gamma,
            samples_per_prompt=self.algorithm.num_samples_per_prompt,
            scale_rewards=self.algorithm.scale_rewards == "group")
        for exp, advantages in zip(batches, self.algorithm.definition.advantages(batches, settings)):
            exp.advantages = advantages

    def _forward(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Actor answer log-probs and entropy, and critic values (None without a critic), at the answer positions.

        The entropy carries a gradient only when ``--entropy_coef`` puts it into the loss.
        """
        actor = self.engines.actor.module
        head = partial(logprobs_and_entropy if self.algorithm.entropy_coef else token_logprobs_and_entropy,
                       fp32=self.fp32_loss)
        logprobs, ent = self._policy_outputs(actor, exp, head)
        if self.engines.critic is None:
            return logprobs, ent, None
        return logprobs, ent, self._loss_dtype(self.backend.values(self.engines.critic.module, exp))

    def _loss_dtype(self, values: torch.Tensor) -> torch.Tensor:
        return values.float() if self.fp32_loss else values

    @torch.no_grad()
    def _score_old(self, exp: Experience) -> None:
        logprobs, _, values = self._forward(exp)
        self._finish(exp, logprobs, values)

    def prepare(self, buffer: list[Experience]) -> list[Experience]:
        """Cut the buffer into training micro-batches and compute what cannot be fused into training."""
        batches = micro_batches(buffer, self.iteration_settings.per_device_training_batch_size)
        whole_batch = self.ppo.whiten_advantages or self.algorithm.advantages_need_old_logprobs
        fusable = 0 if whole_batch else self.engines.actor.gradient_accumulation_steps()
        for index, exp in enumerate(batches):
            if index >= fusable:
                self._score_old(exp)
        if not self.algorithm.uses_critic and self.algorithm.definition.uses_advantages:
            self._critic_free_advantages(batches)
        if self.ppo.whiten_advantages:
            flat_adv = torch.cat([e.advantages.flatten() for e in batches])
            flat_mask = torch.cat([e.answer_mask.flatten() for e in batches]).to(flat_adv.dtype)
            whitened = whiten(flat_adv, flat_mask).split([e.advantages.numel() for e in batches])
            for exp, adv in zip(batches, whitened):
                exp.advantages = adv.view_as(exp.advantages)
        return batches

    # ----- update
    def _loss_settings(self) -> algorithms.LossSettings:
        algorithm = self.algorithm
        return algorithms.LossSettings(
            cliprange=self.ppo.cliprange, clip_high=self.ppo.clip_high, aggregation=algorithm.loss_aggregation,
            norm_length=self.generation.max_answer_seq_len,
            sequence_level=algorithm.importance_sampling_level == "sequence", kl_in_loss=algorithm.kl_in_loss,
            kl_coef=self.kl.value, kl_estimator=self.ppo.kl_estimator, entropy_coef=algorithm.entropy_coef,
            samples_per_prompt=algorithm.num_samples_per_prompt, preference=algorithm.preference_loss())

    def _actor_loss(self, exp: Experience, logprobs: torch.Tensor, ent: torch.Tensor,
                    stats: IterationStats) -> torch.Tensor:
        """The algorithm's loss on the micro-batch (``Algorithm.actor_loss``: the clipped surrogate unless it
        trains otherwise), its figures added to the iteration's."""
        loss, measured = self.algorithm.definition.actor_loss(exp, logprobs, ent, self._loss_settings())
        stats.add(**measured)
        return loss

    def train_on(self, batches: list[Experience], stats: IterationStats) -> None:
        actor, critic = self.engines.actor, self.engines.critic
        actor.train()
        if critic is not None:
            critic.train()
        for _ in range(self.ppo.ppo_epochs):
            for exp in batches:
                logprobs, ent, values = self._forward(exp)
                if not exp.ready:
                    self._finish(exp, logprobs.detach(), None if values is None else values.detach())
                loss = self._actor_loss(exp, logprobs, ent, stats)
                if self.unsupervised is not None and self.ppo.unsup_coef > 0:
                    unsup = {k: v.to(self.target) for k, v in next(self.unsupervised).items()}
                    lm_loss, _ = causal_lm_loss(actor.module, unsup["input_ids"], unsup["attention_mask"],
                                                unsup["labels"])
                    loss = loss + self.ppo.unsup_coef * lm_loss
                    stats.add(unsup_loss=float(lm_loss.detach()))
                v_loss = None
                if critic is not None:
                    mask = exp.answer_mask.to(values.dtype)
                    v_loss = value_loss(values, exp.old_values, exp.returns, mask, self.ppo.cliprange_value)
                checked = loss if v_loss is None else loss + v_loss.detach()
                if not self.guard.check(checked, self.steps):
                    print_rank0(f"iteration {self.steps + 1}: non-finite loss, micro-batch skipped "
                                f"({self.guard.total} so far)")
                    continue
                actor.backward(loss)
                actor.step()
                if critic is not None:
                    critic.backward(v_loss)
                    critic.step()
                    stats.add(critic_loss=float(v_loss.detach()),
                              explained_variance=explained_variance(values.detach(), exp.returns, mask))
                if self.engines.ema is not None and actor.is_gradient_accumulation_boundary():
                    update_ema(self.engines.ema, actor.module, self.ppo.ema_beta, self.actor_zero_stage)

    def iteration(self, buffer: list[Experience], stats: IterationStats) -> dict[str, float]:
        started = time.perf_counter()
        batches = self.prepare(buffer)
        self.train_on(batches, stats)
        stats.add(training_s=time.perf_counter() - started)
        scores = torch.cat([e.scores for e in buffer])
        kl_per_seq = torch.cat([e.kl.sum(1) for e in batches])
        lengths = torch.cat([e.answer_mask.sum(1).float() for e in buffer])
        metrics = stats.means()
        for key in ("generation_s", "scoring_s", "training_s"):
            metrics[key] = sum(stats.values.get(key, [0.0]))
        metrics.update(
            reward_mean=float(scores.mean()),
            reward_std=float(scores.std()) if len(scores) > 1 else 0.0,
            kl_to_ref=float(kl_per_seq.mean()),
            answer_length=float(lengths.mean()),
            empty_answers=float((lengths <= 1).sum()),
        )
        if self.algorithm.kl_weighted:
            metrics["kl_coef"] = self.kl.value
        if self.algorithm.definition.compares_answers:
            metrics["flat_groups"] = flat_group_fraction(scores, self.algorithm.num_samples_per_prompt)
        self.kl.update(metrics["kl_to_ref"], len(scores))
        return metrics

    def state(self, epoch: int, next_batch: int) -> dict:
        """Everything besides the engines that decides the rest of the run."""
        state = {"epoch": epoch, "next_batch": next_batch, "steps": self.steps, "history": self.history,
                 "kl": self.kl.state_dict(), "algorithm": self.algorithm.name, "skipped_batches": self.guard.total}
        if self.unsupervised is not None:
            state["unsupervised"] = self.unsupervised.state_dict()
        if self.engines.ema is not None:
            state["ema"] = {k: v.detach().cpu().clone() for k, v in self.engines.ema.state_dict().items()}
        return state

    def load_state(self, state: dict) -> None:
        saved = state.get("algorithm", algorithms.DEFAULT)
        if saved != self.algorithm.name:
            raise CheckpointError(f"the checkpoint was written by --algorithm {saved}; resume with --algorithm "
                                  f"{saved}, or start a new run in another --output_dir")
        self.steps = state["steps"]
        self.history = list(state["history"])
        self.kl.load_state_dict(state["kl"])
        self.guard.total = state.get("skipped_batches", 0)
        if self.unsupervised is not None:
            if "unsupervised" not in state:
                raise CheckpointError("the checkpoint holds no position in the unsupervised data; resume without "
                                      "--unsupervised_dataset_name, or start a new run in another --output_dir")
            self.unsupervised.load_state_dict(state["unsupervised"])
        if self.engines.ema is not None:
            if "ema" not in state:
                raise ValueError("--enable_ema is set but the checkpoint holds no EMA weights; resume without it")
            self.engines.ema.load_state_dict(state["ema"])

    def log(self, metrics: dict[str, float]) -> None:
        metrics["clock"] = time.perf_counter()
        self.logger.scalars("ppo", metrics, self.steps)
        self.history.append({"step": self.steps, **metrics})
        if self.steps % self.loop.log_interval == 0:
            print_rank0(f"[ppo] step {self.steps}: {format_metrics(metrics)}")

    def show_answers(self, exp: Experience) -> None:
        answers = self.decode_answers(exp)
        for prompt, answer, score in zip(exp.prompts[:2], answers[:2], exp.scores[:2].tolist()):
            print_rank0(f"--- prompt: {prompt.strip()!r}\n    answer: {answer.strip()!r}\n    reward: {score:.3f}")
