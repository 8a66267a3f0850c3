"""The PPO loop: rollouts, scoring, advantages, clipped updates of actor and critic, metrics, saving."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from chatrlhf.step3_rlhf.config import GenerationConfig, PPOConfig, RunConfig
from chatrlhf.step3_rlhf.engines import PPOEngines, update_ema
from chatrlhf.step3_rlhf.experience import Experience, micro_batches
from chatrlhf.step3_rlhf.kl_control import KLController
from chatrlhf.step3_rlhf.length_groups import RowGroup, grouped, plan_groups
from chatrlhf.step3_rlhf.packed_answers import Head, PackedAnswers
from chatrlhf.step3_rlhf.ppo_math import (
    explained_variance,
    gae,
    masked_mean,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from chatrlhf.step3_rlhf.rollout import Rollout, sample
from chatrlhf.training.metrics_log import MetricsLogger, format_metrics, print_rank0
from chatrlhf.utils import device
from chatrlhf.utils.model.last_layer import outputs_from
from chatrlhf.utils.model.lm_forward import (
    answer_logits,
    causal_lm_loss,
    split_lm,
    token_logprobs,
    token_logprobs_and_entropy,
)
from chatrlhf.utils.model.packed_linear import onednn_linears
from chatrlhf.utils.model.packed_rows import packing_supported
from chatrlhf.utils.model.zero3 import lockstep_needed


@dataclass
class IterationStats:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **items: float) -> None:
        for key, value in items.items():
            self.values.setdefault(key, []).append(float(value))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


class PPOTrainer:
    def __init__(
        self,
        engines: PPOEngines,
        tokenizer,
        generation: GenerationConfig,
        ppo: PPOConfig,
        run: RunConfig,
        logger: MetricsLogger,
        *,
        reward_mean: float = 0.0,
        reward_std: float = 1.0,
        unsupervised: Iterator[dict] | None = None,
        actor_zero_stage: int = 0,
    ) -> None:
        self.engines = engines
        self.tokenizer = tokenizer
        self.generation = generation
        self.ppo = ppo
        self.run = run
        self.logger = logger
        self.kl = KLController(ppo.kl_ctl, ppo.target_kl, ppo.kl_horizon)
        self.reward_mean, self.reward_std = reward_mean, max(reward_std, 1e-6)
        self.unsupervised = unsupervised
        self.actor_zero_stage = actor_zero_stage
        self.target = device.local_device()
        self.steps = 0
        self.history: list[dict] = []
        self.lockstep = lockstep_needed(engines.actor.module, engines.critic.module, engines.reference, engines.reward)

    def _groups(self, rollout: Rollout | Experience) -> list[RowGroup]:
        """Length groups for a rollout's forward passes; one group when ranks must run in lockstep."""
        return plan_groups(rollout.attention_mask, rollout.prompt_width, split=not self.lockstep)

    @staticmethod
    def _packed(model, rollout: Rollout | Experience) -> PackedAnswers | None:
        """The rollout packed for ``model``'s forward passes, or None where only length groups serve it."""
        if not packing_supported(model):
            return None
        return PackedAnswers.of(rollout.sequences, rollout.attention_mask, rollout.prompt_width)

    def _policy_outputs(self, model, rollout: Rollout | Experience, head: Head) -> tuple[torch.Tensor, ...]:
        """``head(logits, answer tokens)`` of a causal LM at every answer token, each output (B, answer width)."""
        packed = self._packed(model, rollout)
        if packed is not None:
            lm_head = split_lm(model)[1]
            return packed.answer_outputs(model, lambda hidden, labels: head(lm_head(hidden), labels))

        def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
            return head(answer_logits(model, ids, mask, start), ids[:, start:])

        return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width,
                       self._groups(rollout))

    # ----- rollout and scoring
    @torch.no_grad()
    def reward_scores(self, rollout: Rollout) -> torch.Tensor:
        """The frozen reward model's score of each prompt + answer (at its last real token)."""
        from chatrlhf.step2_reward.reward_model import score_head, sequence_scores, token_values

        reward = self.engines.reward

        def score(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
            with outputs_from(reward, start - 1):
                return (sequence_scores(token_values(reward, ids, mask), mask).float(),)

        with onednn_linears(reward):
            packed = self._packed(reward, rollout)
            if packed is not None:
                return score_head(reward)(packed.final_hidden(reward)).squeeze(-1).float()
            return grouped(score, rollout.sequences, rollout.attention_mask, rollout.prompt_width,
                           self._groups(rollout))[0]

    def generate(self, batch: dict, cfg: GenerationConfig | None = None):
        actor = self.engines.actor.module
        was_training = actor.training
        actor.eval()
        rollout = sample(actor, batch["input_ids"].to(self.target), batch["attention_mask"].to(self.target),
                         cfg or self.generation, eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
                         lockstep=self.lockstep)
        actor.train(was_training)
        return rollout

    @torch.no_grad()
    def make_experience(self, batch: dict, timing: IterationStats) -> Experience:
        started = time.perf_counter()
        rollout = self.generate(batch)
        generated = time.perf_counter()
        with self.engines.reference_policy() as reference, onednn_linears(reference):
            (ref_logprobs,) = self._policy_outputs(reference, rollout,
                                                   lambda logits, tokens: (token_logprobs(logits, tokens),))
        scores = self.reward_scores(rollout)
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            print_rank0(f"warning: the reward model gave {int((~finite).sum())} non-finite scores; they count as 0")
            scores = torch.where(finite, scores, torch.zeros_like(scores))
        timing.add(nonfinite_rewards=float((~finite).sum()))
        rewards_in = (scores - self.reward_mean) / self.reward_std if self.ppo.normalize_reward else scores
        scored = time.perf_counter()
        new_tokens = int(rollout.answer_mask.sum())
        timing.add(generation_s=generated - started, scoring_s=scored - generated,
                   generated_tokens_per_s=new_tokens / max(generated - started, 1e-9))
        return Experience.from_rollout(rollout, ref_logprobs, scores, rewards_in, batch["prompt"], batch["task"])

    # ----- advantages
    def _finish(self, exp: Experience, logprobs: torch.Tensor, values: torch.Tensor) -> None:
        """Old log-probs and values of ``exp`` are known: compute rewards, KL, advantages and returns."""
        mask = exp.answer_mask.to(logprobs.dtype)
        rewards, kl = token_rewards(logprobs, exp.ref_logprobs, exp.rewards_in, mask, kl_coef=self.kl.value,
                                    clip_reward_value=self.ppo.clip_reward_value, estimator=self.ppo.kl_estimator)
        exp.old_logprobs, exp.old_values, exp.kl = logprobs, values, kl
        exp.advantages, exp.returns = gae(rewards, values, mask, self.ppo.gamma, self.ppo.lam)

    def _forward(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actor answer log-probs and entropy, and critic values, at the answer positions."""
        from chatrlhf.step2_reward.reward_model import score_head, token_values

        actor, critic = self.engines.actor.module, self.engines.critic.module

        def value(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
            with outputs_from(critic, start - 1):
                return (token_values(critic, ids, mask)[:, start - 1 : -1].float(),)

        with onednn_linears(actor):
            logprobs, ent = self._policy_outputs(actor, exp, token_logprobs_and_entropy)
        with onednn_linears(critic):
            packed = self._packed(critic, exp)
            if packed is not None:
                (values,) = packed.answer_outputs(
                    critic, lambda hidden, _: (score_head(critic)(hidden).squeeze(-1).float(),))
            else:
                (values,) = grouped(value, exp.sequences, exp.attention_mask, exp.prompt_width, self._groups(exp))
        return logprobs, ent, values

    @torch.no_grad()
    def _score_old(self, exp: Experience) -> None:
        logprobs, _, values = self._forward(exp)
        self._finish(exp, logprobs, values)

    def prepare(self, buffer: list[Experience]) -> list[Experience]:
        """Cut the buffer into training micro-batches and compute what cannot be fused into training."""
        batches = micro_batches(buffer, self.run.per_device_training_batch_size)
        fusable = 0 if self.ppo.whiten_advantages else self.engines.actor.gradient_accumulation_steps()
        for index, exp in enumerate(batches):
            if index >= fusable:
                self._score_old(exp)
        if self.ppo.whiten_advantages:
            flat_adv = torch.cat([e.advantages.flatten() for e in batches])
            flat_mask = torch.cat([e.answer_mask.flatten() for e in batches]).to(flat_adv.dtype)
            whitened = whiten(flat_adv, flat_mask).split([e.advantages.numel() for e in batches])
            for exp, adv in zip(batches, whitened):
                exp.advantages = adv.view_as(exp.advantages)
        return batches

    # ----- update
    def train_on(self, batches: list[Experience], stats: IterationStats) -> None:
        actor, critic = self.engines.actor, self.engines.critic
        actor.train()
        critic.train()
        for _ in range(self.ppo.ppo_epochs):
            for exp in batches:
                logprobs, ent, values = self._forward(exp)
                if not exp.ready:
                    self._finish(exp, logprobs.detach(), values.detach())
                mask = exp.answer_mask.to(logprobs.dtype)
                pg_loss, pg_stats = policy_loss(logprobs, exp.old_logprobs, exp.advantages, mask, self.ppo.cliprange)
                loss = pg_loss
                if self.unsupervised is not None and self.ppo.unsup_coef > 0:
                    unsup = {k: v.to(self.target) for k, v in next(self.unsupervised).items()}
                    lm_loss, _ = causal_lm_loss(actor.module, unsup["input_ids"], unsup["attention_mask"],
                                                unsup["labels"])
                    loss = loss + self.ppo.unsup_coef * lm_loss
                    stats.add(unsup_loss=float(lm_loss.detach()))
                actor.backward(loss)
                actor.step()
                v_loss = value_loss(values, exp.old_values, exp.returns, mask, self.ppo.cliprange_value)
                critic.backward(v_loss)
                critic.step()
                if self.engines.ema is not None and actor.is_gradient_accumulation_boundary():
                    update_ema(self.engines.ema, actor.module, self.ppo.ema_beta, self.actor_zero_stage)
                stats.add(actor_loss=float(pg_loss.detach()), critic_loss=float(v_loss.detach()),
                          entropy=float(masked_mean(ent, mask)),
                          explained_variance=explained_variance(values.detach(), exp.returns, mask), **pg_stats)

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
            kl_coef=self.kl.value,
        )
        self.kl.update(metrics["kl_to_ref"], len(scores))
        return metrics

    def state(self, epoch: int, next_batch: int) -> dict:
        """Everything besides the engines that decides the rest of the run."""
        state = {"epoch": epoch, "next_batch": next_batch, "steps": self.steps, "history": self.history,
                 "kl": self.kl.state_dict()}
        if self.engines.ema is not None:
            state["ema"] = {k: v.detach().cpu().clone() for k, v in self.engines.ema.state_dict().items()}
        return state

    def load_state(self, state: dict) -> None:
        self.steps = state["steps"]
        self.history = list(state["history"])
        self.kl.load_state_dict(state["kl"])
        if self.engines.ema is not None:
            if "ema" not in state:
                raise ValueError("--enable_ema is set but the checkpoint holds no EMA weights; resume without it")
            self.engines.ema.load_state_dict(state["ema"])

    def log(self, metrics: dict[str, float]) -> None:
        metrics["clock"] = time.perf_counter()
        self.logger.scalars("ppo", metrics, self.steps)
        self.history.append({"step": self.steps, **metrics})
        if self.steps % self.run.log_interval == 0:
            print_rank0(f"[ppo] step {self.steps}: {format_metrics(metrics)}")

    def show_answers(self, exp: Experience) -> None:
        answers = self.tokenizer.batch_decode(exp.answers, skip_special_tokens=True)
        for prompt, answer, score in zip(exp.prompts[:2], answers[:2], exp.scores[:2].tolist()):
            print_rank0(f"--- prompt: {prompt.strip()!r}\n    answer: {answer.strip()!r}\n    reward: {score:.3f}")
