"""Parity check: our DPO-family and KTO losses and GRPO/RLOO advantages and losses against TRL 1.16's, on identical
inputs.

Why: TRL is the implementation most users compare against; a definition that drifts from it unnoticed is either a
bug or a choice that must be written down. Each row feeds both sides the same float64 inputs and reports the
largest absolute difference over the loss, its gradient with respect to the policy's logits or per-token
log-probs, and the logged rewards or the advantages. A row passes within 1e-6; a row that differs on purpose
carries a note that says why.

TRL is not a dependency of chatrlhf: run this in a separate venv that has it, e.g.

  python3 -m venv /work/venv-trl && . /work/venv-trl/bin/activate
  pip install -c constraints.txt torch==2.13.0 && pip install -c constraints.txt trl==1.16.0 transformers==5.25.0
  pip install -e . --no-deps
  python scripts/parity_trl.py

How TRL is called (nothing of TRL is copied or reimplemented here): each TRL method runs unchanged on a trainer
made with ``object.__new__`` that holds only the attributes the method reads, with a real ``Accelerator`` on the
CPU. The model is a stand-in: for ``DPOTrainer``, ``GRPOTrainer`` and ``RLOOTrainer`` it returns what TRL's fused LM
head returns (per-token log-probs, zero where the label is -100); for ``CPOTrainer`` and ``ORPOTrainer`` it returns
fixed logits. GRPO's and RLOO's advantages come from their ``_generate_and_score_completions`` with ``_generate`` and
``_calculate_rewards`` replaced by stand-ins that return fixed completions and rewards. Losses come from
``DPOTrainer._compute_loss``, ``CPOTrainer.get_batch_loss_metrics`` / ``cpo_loss``,
``ORPOTrainer.get_batch_loss_metrics`` / ``odds_ratio_loss``, ``GRPOTrainer._compute_loss`` /
``RLOOTrainer._compute_loss``, and ``KTOTrainer._compute_loss`` (its stand-in model answers the matched and the
mismatched KL rows with their own log-probs; the KL term and the rewards are what it logs). Two rows call a
smaller TRL piece because no TRL trainer computes the loss whole:
cDPO (sigmoid with label smoothing, which TRL 1.16's ``DPOTrainer`` dropped) is ``CPOTrainer.cpo_loss`` on the
policy-minus-reference log-ratios, and ORPO's odds-ratio term alone is ``odds_ratio_loss`` on
``get_batch_logps``' averages. TRL's advantages are per answer; ours sit on every answer token, so TRL's are spread
over the answer mask before they are compared. TRL's ``nanstd`` takes Bessel's factor in float32, hence GRPO's
group-scaled advantages agree to about 1e-8, not to float64 rounding.

Our side: KTO through ``kto_loss`` and ``reference_point`` on log-probs summed over the completion tokens as
``KTOTask`` does; the DPO family through ``LossConfig.sequence_logps`` and ``preference_loss`` on log-probs summed over
the answer tokens as ``DPOTask`` does (in float64 here; ``answer_logprobs`` itself sums in float32, which would
round past 1e-6), and step 3 through ``PPOTrainer._finish``, ``_critic_free_advantages`` and ``_actor_loss`` on a
trainer made the same way, with two micro-batches so the advantages cross them.

Exit status: 0 when every row passes or differs on purpose, 1 otherwise, 2 when TRL cannot be imported.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch

from chatrlhf.step2_kto.kto_loss import KTOConfig, kto_loss, reference_point
from chatrlhf.step3_rlhf.advantages import broadcast
from chatrlhf.step3_rlhf.config import AlgorithmConfig, PPOConfig
from chatrlhf.step3_rlhf.experience import Experience
from chatrlhf.step3_rlhf.kl_control import KLController
from chatrlhf.step3_rlhf.trainer import IterationStats, PPOTrainer
from chatrlhf.training.preference_losses import LossConfig, orpo_loss, preference_loss
from chatrlhf.utils.model.lm_forward import token_logprobs

TOLERANCE = 1e-6
SEED = 0
BETA = 0.1
SIMPO_BETA, SIMPO_GAMMA = 2.0, 0.5
FLIP_RATE = 0.1
GRPO_BETA, RLOO_BETA = 0.04, 0.05
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
RLOO_REWARD_CLIP = 1.0  # below some rewards, so the clip is exercised
PAIRS, PAIR_WIDTH, VOCAB = 6, 12, 7
PROMPTS, GROUP, PROMPT_WIDTH, ANSWER_WIDTH = 4, 4, 3, 8
KTO_LABELS = (True, False, True, True, False, False, True)
KTO_WEIGHTS = (1.33, 0.75)
PAD = 0

# What one side of a check returns: the loss first, then what it logs (rewards) or nothing.
Sided = tuple[torch.Tensor | float, ...]


@dataclass
class Row:
    name: str
    diff: float
    note: str = ""  # why the definitions differ on purpose; empty: they must agree


def max_diff(*pairs: tuple[torch.Tensor | float, torch.Tensor | float]) -> float:
    def values(x: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float64).detach()

    return max(float((values(a) - values(b)).abs().max()) for a, b in pairs)


def bare(cls: type, **attributes) -> object:
    """An instance of ``cls`` without its ``__init__``: only the attributes the called method reads."""
    obj = object.__new__(cls)
    for key, value in attributes.items():
        setattr(obj, key, value)
    return obj


def metrics_store() -> defaultdict:
    return defaultdict(lambda: defaultdict(list))


def compare(ours: Callable[[torch.Tensor], Sided], theirs: Callable[[torch.Tensor], Sided],
            inputs: torch.Tensor) -> float:
    """Largest difference of what each side returns, (loss, *logged), and of d loss / d ``inputs``."""
    results = []
    for side in (ours, theirs):
        leaf = inputs.clone().requires_grad_(True)
        loss, *logged = side(leaf)
        results.append((loss, torch.autograd.grad(loss, leaf)[0], *logged))
    return max_diff(*zip(*results))


class FusedLM:
    """A model with TRL's fused LM head: fixed per-token log-probs of the last label positions, zero where the
    label is -100 (``FusedCausalLMOutput``), whatever the input."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, logps: torch.Tensor, output_cls: type) -> None:
        self.logps, self.output_cls = logps, output_cls

    def __call__(self, labels: torch.Tensor, **_) -> object:
        keep = labels[:, 1:] != -100
        left = self.logps.new_zeros(len(labels), keep.shape[1] - self.logps.shape[1])
        log_probs = torch.cat([left, self.logps], dim=1) * keep
        zeros = torch.zeros_like(log_probs).detach()
        return self.output_cls(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=keep & False)


class LogitsLM:
    """A causal LM that returns fixed logits whatever the input (what CPO's and ORPO's forward reads)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, *_, **__) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


# ----- DPO family


@dataclass
class PairBatch:
    """Chosen rows over rejected rows, right-padded; the answer is every kept token at or after ``prompt_len``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    logits: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        return self.input_ids.masked_fill(self.completion_mask == 0, -100)

    def token_logps(self, logits: torch.Tensor) -> torch.Tensor:
        """log p of each next token (the model's part, the same for both sides)."""
        return token_logprobs(logits[:, :-1], self.input_ids[:, 1:], fp32=False)


def pair_batch(gen: torch.Generator) -> PairBatch:
    rows = 2 * PAIRS
    prompt_len = torch.randint(2, 5, (PAIRS,), generator=gen).repeat(2)
    length = prompt_len + torch.randint(2, PAIR_WIDTH - 4, (rows,), generator=gen)
    positions = torch.arange(PAIR_WIDTH)
    attention = (positions < length[:, None]).long()
    completion = attention * (positions >= prompt_len[:, None]).long()
    ids = torch.randint(1, VOCAB, (rows, PAIR_WIDTH), generator=gen) * attention
    logits = 2 * torch.randn(rows, PAIR_WIDTH, VOCAB, generator=gen, dtype=torch.float64)
    ref = -torch.rand(rows, generator=gen, dtype=torch.float64) * 6 - 2
    return PairBatch(ids, attention, completion, logits, ref[:PAIRS], ref[PAIRS:])


def our_sequence_logps(config: LossConfig, batch: PairBatch,
                       logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen and rejected log-probs a loss reads (``DPOTask._split``), and every row's answer length."""
    keep = batch.completion_mask[:, 1:]
    sums, counts = (batch.token_logps(logits) * keep).sum(1), keep.sum(1)
    chosen, rejected = config.sequence_logps(sums, counts).chunk(2)
    return chosen, rejected, counts


def ours_pairs(config: LossConfig, batch: PairBatch, logits: torch.Tensor, average_ratios: bool = False) -> Sided:
    """What ``DPOTask.loss`` computes: the mean pair loss and the mean chosen and rejected rewards.
    ``average_ratios``: divide the policy and reference log-probs by the answer length first (TRL's IPO)."""
    chosen, rejected, counts = our_sequence_logps(config, batch, logits)
    refs = (batch.ref_chosen, batch.ref_rejected)
    if average_ratios:
        chosen_n, rejected_n = counts.chunk(2)
        chosen, rejected, refs = chosen / chosen_n, rejected / rejected_n, (refs[0] / chosen_n, refs[1] / rejected_n)
    out = preference_loss(config, chosen, rejected, *(() if config.reference_free else refs))
    return out.losses.mean(), out.chosen_rewards.mean(), out.rejected_rewards.mean()


def dpo_rows(trl: SimpleNamespace, batch: PairBatch) -> list[Row]:
    orpo = LossConfig(loss_type="orpo", beta=BETA)

    def dpo_trainer(loss_type: str, flip_rate: float, logits: torch.Tensor) -> Sided:
        model = FusedLM(batch.token_logps(logits), trl.FusedCausalLMOutput)
        trainer = bare(trl.DPOTrainer, model=model, accelerator=trl.accelerator, beta=BETA, label_smoothing=flip_rate,
                       loss_types=[loss_type], loss_weights=[1.0], ld_alpha=None, aux_loss_enabled=False,
                       precompute_ref_logps=True, f_divergence_type="reverse_kl", use_weighting=False,
                       _metrics=metrics_store(), _total_train_tokens=0, _tp_size=1)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "completion_mask": batch.completion_mask, "ref_chosen_logps": batch.ref_chosen,
                  "ref_rejected_logps": batch.ref_rejected}
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
        logged = trainer._metrics["train"]
        return loss, logged["rewards/chosen"][0], logged["rewards/rejected"][0]

    def cpo_trainer(loss_type: str, beta: float, flip_rate: float = 0.0) -> object:
        return bare(trl.CPOTrainer, accelerator=trl.accelerator, is_encoder_decoder=False, pad_token_id=PAD,
                    aux_loss_enabled=False, cpo_alpha=0.0, loss_type=loss_type, alpha=0.0, beta=beta,
                    simpo_gamma=SIMPO_GAMMA, label_smoothing=flip_rate)

    def orpo_trainer() -> object:
        return bare(trl.ORPOTrainer, accelerator=trl.accelerator, is_encoder_decoder=False, padding_value=PAD,
                    aux_loss_enabled=False, beta=BETA)

    def split_batch() -> dict[str, torch.Tensor]:
        parts = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}
        return {f"{side}_{key}": half for key, value in parts.items()
                for side, half in zip(("chosen", "rejected"), value.chunk(2))}

    def batch_metrics(trainer: object, logits: torch.Tensor) -> Sided:
        loss, logged = trainer.get_batch_loss_metrics(LogitsLM(logits), split_batch())
        return loss, logged["rewards/chosen"], logged["rewards/rejected"]

    def cdpo(logits: torch.Tensor) -> Sided:
        """TRL 1.16's DPOTrainer has no label smoothing under sigmoid; CPO's sigmoid on the log-ratios is cDPO."""
        sums = trl.CPOTrainer.get_batch_logps(logits, batch.labels)
        chosen, rejected = sums.chunk(2)
        losses, chosen_rewards, rejected_rewards = cpo_trainer("sigmoid", BETA, FLIP_RATE).cpo_loss(
            chosen - batch.ref_chosen, rejected - batch.ref_rejected)
        return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()

    def odds_term_ours(logits: torch.Tensor) -> Sided:
        """Our ORPO loss less its NLL term (the chosen answer's -mean log p): the odds-ratio term alone."""
        chosen, rejected, _ = our_sequence_logps(orpo, batch, logits)
        return (orpo_loss(chosen, rejected, BETA) + chosen).mean(), BETA * chosen.mean(), BETA * rejected.mean()

    def odds_term_trl(logits: torch.Tensor) -> Sided:
        chosen, rejected = trl.ORPOTrainer.get_batch_logps(logits, batch.labels, average_log_prob=True).chunk(2)
        losses, chosen_rewards, rejected_rewards, *_ = orpo_trainer().odds_ratio_loss(chosen, rejected)
        return -losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()

    rows = []
    for loss_type, flip_rate in (("sigmoid", 0.0), ("hinge", 0.0), ("robust", FLIP_RATE)):
        config = LossConfig(loss_type=loss_type, beta=BETA, label_smoothing=flip_rate)
        rows.append(Row(f"dpo {loss_type}" + (f" eps={flip_rate}" if flip_rate else ""),
                        compare(lambda x, c=config: ours_pairs(c, batch, x),
                                lambda x, t=loss_type, f=flip_rate: dpo_trainer(t, f, x), batch.logits)))
    cdpo_config = LossConfig(loss_type="sigmoid", beta=BETA, label_smoothing=FLIP_RATE)
    rows.append(Row(f"dpo sigmoid eps={FLIP_RATE} (cDPO) vs CPO cpo_loss on log-ratios",
                    compare(lambda x: ours_pairs(cdpo_config, batch, x), cdpo, batch.logits)))
    ipo = LossConfig(loss_type="ipo", beta=BETA)
    rows.append(Row("dpo ipo", compare(lambda x: ours_pairs(ipo, batch, x), lambda x: dpo_trainer("ipo", 0.0, x),
                                       batch.logits),
                    "TRL divides IPO's log-ratios by the answer length; ours sums them (docs/algorithms.md)"))
    rows.append(Row("dpo ipo, our loss on length-averaged log-ratios (loss only)",
                    compare(lambda x: ours_pairs(ipo, batch, x, average_ratios=True)[:1],
                            lambda x: dpo_trainer("ipo", 0.0, x)[:1], batch.logits)))
    simpo = LossConfig(loss_type="simpo", beta=SIMPO_BETA, simpo_gamma=SIMPO_GAMMA)
    rows.append(Row("simpo vs CPOTrainer loss_type=simpo cpo_alpha=0",
                    compare(lambda x: ours_pairs(simpo, batch, x),
                            lambda x: batch_metrics(cpo_trainer("simpo", SIMPO_BETA), x), batch.logits)))
    rows.append(Row("orpo odds-ratio term (odds_ratio_loss)", compare(odds_term_ours, odds_term_trl, batch.logits)))
    rows.append(Row("orpo full loss (ORPOTrainer)",
                    compare(lambda x: ours_pairs(orpo, batch, x), lambda x: batch_metrics(orpo_trainer(), x),
                            batch.logits),
                    "TRL's NLL term covers prompt + answer tokens, token mean over the batch; ours the chosen "
                    "answer's tokens, mean per pair"))
    return rows


# ----- KTO


class RowsLM:
    """A model with TRL's fused LM head whose per-token log-probs depend on which rows it is given: the matched or
    the mismatched (KL) ones, told apart by the ``input_ids`` tensor itself."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, by_rows: dict[int, torch.Tensor], output_cls: type) -> None:
        self.by_rows, self.output_cls = by_rows, output_cls

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, **_) -> object:
        return FusedLM(self.by_rows[id(input_ids)], self.output_cls)(labels=labels)


@dataclass
class UnpairedBatch:
    """Labelled completions, right-padded, and their mismatched rows (same shapes); reference sums per row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    kl_input_ids: torch.Tensor
    kl_completion_mask: torch.Tensor
    labels: torch.Tensor
    logps: torch.Tensor  # the policy's per-token log-probs of the matched rows (what the gradient is taken of)
    kl_logps: torch.Tensor
    ref: torch.Tensor
    ref_kl: torch.Tensor


def unpaired_batch(gen: torch.Generator) -> UnpairedBatch:
    rows = len(KTO_LABELS)

    def masks() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt_len = torch.randint(2, 5, (rows,), generator=gen)
        length = prompt_len + torch.randint(2, PAIR_WIDTH - 4, (rows,), generator=gen)
        positions = torch.arange(PAIR_WIDTH)
        attention = (positions < length[:, None]).long()
        ids = torch.randint(1, VOCAB, (rows, PAIR_WIDTH), generator=gen) * attention
        return ids, attention, attention * (positions >= prompt_len[:, None]).long()

    ids, attention, completion = masks()
    kl_ids, _, kl_completion = masks()

    def token_logps() -> torch.Tensor:
        return -2 * torch.rand(rows, PAIR_WIDTH - 1, generator=gen, dtype=torch.float64)

    ref = -torch.rand(rows, generator=gen, dtype=torch.float64) * 6 - 8
    return UnpairedBatch(ids, attention, completion, kl_ids, kl_completion, torch.tensor(KTO_LABELS), token_logps(),
                         token_logps(), ref, ref - 1)


def ours_kto(config: KTOConfig, batch: UnpairedBatch, logps: torch.Tensor) -> Sided:
    """What ``KTOTask.loss`` computes: the mean weighted loss, the reference point, the mean desirable and
    undesirable rewards."""
    sums = (logps * batch.completion_mask[:, 1:]).sum(1)
    kl = None
    if config.estimates_kl:
        kl = reference_point((batch.kl_logps * batch.kl_completion_mask[:, 1:]).sum(1), batch.ref_kl)
    out = kto_loss(config, sums, batch.ref, batch.labels, kl)
    return out.losses.mean(), out.kl, out.rewards[batch.labels].mean(), out.rewards[~batch.labels].mean()


def trl_kto(trl: SimpleNamespace, config: KTOConfig, batch: UnpairedBatch, logps: torch.Tensor) -> Sided:
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "completion_mask": batch.completion_mask, "label": batch.labels, "ref_logps": batch.ref}
    if config.estimates_kl:
        inputs.update(KL_input_ids=batch.kl_input_ids, KL_attention_mask=(batch.kl_input_ids > 0).long(),
                      KL_completion_mask=batch.kl_completion_mask, ref_KL_logps=batch.ref_kl)
    model = RowsLM({id(batch.input_ids): logps, id(batch.kl_input_ids): batch.kl_logps}, trl.FusedCausalLMOutput)
    trainer = bare(trl.KTOTrainer, model=model, accelerator=trl.accelerator, beta=config.beta,
                   loss_type=config.loss_type, desirable_weight=config.desirable_weight,
                   undesirable_weight=config.undesirable_weight, calculate_KL=config.estimates_kl,
                   precompute_ref_logps=True, aux_loss_enabled=False, _metrics=metrics_store(),
                   _total_train_tokens=0, _tp_size=1)
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    logged = trainer._metrics["train"]
    return loss, logged["kl"][0], logged["rewards/chosen"][0], logged["rewards/rejected"][0]


def kto_rows(trl: SimpleNamespace, batch: UnpairedBatch) -> list[Row]:
    rows = []
    below = replace(batch, ref_kl=batch.ref_kl + 40)  # the mismatched log-ratio is negative: z0 clamps to 0
    for name, config, inputs in (
            ("kto", KTOConfig("kto", BETA), batch),
            (f"kto desirable_weight={KTO_WEIGHTS[0]} undesirable_weight={KTO_WEIGHTS[1]}",
             KTOConfig("kto", BETA, *KTO_WEIGHTS), batch),
            ("kto, KL estimate below 0 (clamped)", KTOConfig("kto", BETA), below),
            ("kto apo_zero_unpaired", KTOConfig("apo_zero_unpaired", BETA), batch)):
        rows.append(Row(f"{name} (loss, KL term, rewards)",
                        compare(lambda x, c=config, b=inputs: ours_kto(c, b, x),
                                lambda x, c=config, b=inputs: trl_kto(trl, c, b, x), inputs.logps)))
    return rows


# ----- GRPO and RLOO


@dataclass
class Rollout:
    """``PROMPTS`` groups of ``GROUP`` answers in adjacent rows; per-token tensors are zero past each answer."""

    mask: torch.Tensor
    tokens: torch.Tensor
    rewards: torch.Tensor
    logps: torch.Tensor
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    advantages: torch.Tensor

    def __len__(self) -> int:
        return len(self.mask)

    def experience(self, **fields: torch.Tensor) -> Experience:
        """The rollout as one micro-batch of ours."""
        rows = len(self)
        prompt = torch.ones(rows, PROMPT_WIDTH, dtype=torch.long)
        return Experience(torch.cat([prompt, self.tokens], dim=1), torch.cat([prompt, self.mask.long()], dim=1),
                          self.mask.long(), PROMPT_WIDTH, self.ref_logps, self.rewards, self.rewards,
                          [""] * rows, [""] * rows, **fields)

    def trl_inputs(self) -> dict[str, torch.Tensor]:
        rows = len(self)
        return {"prompt_ids": torch.ones(rows, PROMPT_WIDTH, dtype=torch.long),
                "prompt_mask": torch.ones(rows, PROMPT_WIDTH, dtype=torch.long),
                "completion_ids": self.tokens, "completion_mask": self.mask.long()}

    def without_answer(self, row: int) -> Rollout:
        """The same rollout with answer ``row`` masked out whole (TRL's ``mask_truncated_completions``)."""
        mask = self.mask.clone()
        mask[row] = 0
        return replace(self, mask=mask, tokens=self.tokens * mask.long(), logps=self.logps * mask,
                       old_logps=self.old_logps * mask, ref_logps=self.ref_logps * mask)


def rollout(gen: torch.Generator) -> Rollout:
    rows = PROMPTS * GROUP
    lengths = torch.randint(1, ANSWER_WIDTH + 1, (rows,), generator=gen)
    lengths[-1] = ANSWER_WIDTH  # TRL pads its completions to the longest one
    mask = (torch.arange(ANSWER_WIDTH) < lengths[:, None]).double()
    tokens = torch.randint(1, VOCAB, (rows, ANSWER_WIDTH), generator=gen) * mask.long()
    rewards = 4 * torch.rand(rows, generator=gen, dtype=torch.float64) - 2
    rewards[:GROUP] = 1.0  # a flat group: zero advantages, not 0/0

    def near(logps: torch.Tensor) -> torch.Tensor:
        return (logps + 0.3 * torch.randn(rows, ANSWER_WIDTH, generator=gen, dtype=torch.float64)) * mask

    logps = -2 * torch.rand(rows, ANSWER_WIDTH, generator=gen, dtype=torch.float64) * mask
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    return Rollout(mask, tokens, rewards, logps, near(logps), near(logps), advantages)


def our_trainer(algorithm: str, kl_estimator: str, kl_coef: float,
                clip_reward_value: float = PPOConfig.clip_reward_value, **settings: str) -> PPOTrainer:
    ppo = PPOConfig(kl_ctl=kl_coef, kl_estimator=kl_estimator, cliprange=CLIP_LOW, cliprange_high=CLIP_HIGH,
                    clip_reward_value=clip_reward_value)
    return bare(PPOTrainer, algorithm=AlgorithmConfig(name=algorithm, num_samples_per_prompt=GROUP, **settings),
                ppo=ppo, kl=KLController(kl_coef),
                # Read by ``_actor_loss`` for dr_grpo's constant normaliser, which no row here uses.
                generation=SimpleNamespace(max_answer_seq_len=ANSWER_WIDTH))


def our_advantages(trainer: PPOTrainer, data: Rollout) -> torch.Tensor:
    """``prepare``'s critic-free part on two micro-batches: old log-probs and KL (``_finish``), then advantages."""
    whole, bounds = data.experience(), ((0, len(data) // 2), (len(data) // 2, len(data)))
    batches = [whole.rows(start, stop) for start, stop in bounds]
    for exp, (start, stop) in zip(batches, bounds):
        trainer._finish(exp, data.old_logps[start:stop], None)
    trainer._critic_free_advantages(batches)
    return torch.cat([exp.advantages for exp in batches])


def our_loss(trainer: PPOTrainer, data: Rollout, logps: torch.Tensor) -> tuple[torch.Tensor]:
    """``_actor_loss`` on the rollout as one micro-batch, with ``data.advantages`` on every answer token."""
    exp = data.experience(old_logprobs=data.old_logps, advantages=broadcast(data.advantages, data.mask))
    return (trainer._actor_loss(exp, logps, torch.zeros_like(logps), IterationStats()),)


def trl_common(trl: SimpleNamespace, **args: object) -> dict[str, object]:
    """What every TRL RL trainer method called here reads besides its own settings."""
    return {"accelerator": trl.accelerator, "state": SimpleNamespace(global_step=0), "_metrics": metrics_store(),
            "args": SimpleNamespace(report_to=[], **args)}


def trl_advantages(trl: SimpleNamespace, cls: type, data: Rollout, **settings: object) -> torch.Tensor:
    """``cls._generate_and_score_completions`` on fixed completions, rewards and old and reference log-probs."""
    rows = len(data)
    prompt_ids = [[1] * PROMPT_WIDTH] * rows
    completion_ids = [row[:length].tolist() for row, length in zip(data.tokens, data.mask.sum(1).long())]
    texts = [""] * rows
    generated = (prompt_ids, completion_ids, texts)
    if cls is trl.GRPOTrainer:
        generated = (prompt_ids, completion_ids, None, texts, None, {}, None, None)
    policy, reference = (FusedLM(logps, trl.FusedCausalLMOutput) for logps in (data.old_logps, data.ref_logps))
    trainer = bare(
        cls, model=policy, ref_model=reference, _generate=lambda prompts: generated,
        _calculate_rewards=lambda *_: data.rewards[:, None],
        _tokenizer=SimpleNamespace(pad_token_id=PAD), pad_to_multiple_of=None, mask_truncated_completions=False,
        num_generations=GROUP, reward_weights=torch.ones(1, dtype=torch.float64), reward_func_names=["fixed"],
        _logs={"prompt": [], "completion": [], "advantages": [], "rewards": defaultdict(list),
               "extra": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, **settings,
        **trl_common(trl, per_device_train_batch_size=rows, gradient_checkpointing_kwargs=None,
                     steps_per_generation=1, gradient_accumulation_steps=1))
    prompts = [{"prompt": f"prompt {row // GROUP}"} for row in range(rows)]
    return trainer._generate_and_score_completions(prompts)["advantages"]


def trl_grpo_loss(trl: SimpleNamespace, data: Rollout, logps: torch.Tensor, loss_type: str,
                  bias_correction: bool) -> tuple[torch.Tensor]:
    model = FusedLM(logps, trl.FusedCausalLMOutput)
    trainer = bare(trl.GRPOTrainer, model=model, beta=GRPO_BETA, loss_type=loss_type, epsilon_low=CLIP_LOW,
                   epsilon_high=CLIP_HIGH, aux_loss_enabled=False, top_entropy_quantile=1.0,
                   off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
                   current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                   **trl_common(trl, use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1))
    inputs = {**data.trl_inputs(), "advantages": data.advantages, "old_per_token_logps": data.old_logps,
              "ref_per_token_logps": data.ref_logps, "num_items_in_batch": data.mask.sum()}
    return (trainer._compute_loss(model, inputs),)


def trl_rloo_loss(trl: SimpleNamespace, data: Rollout, logps: torch.Tensor) -> tuple[torch.Tensor]:
    model = FusedLM(logps, trl.FusedCausalLMOutput)
    trainer = bare(trl.RLOOTrainer, model=model, epsilon_low=CLIP_LOW, epsilon_high=CLIP_HIGH,
                   aux_loss_enabled=False, **trl_common(trl))
    inputs = {**data.trl_inputs(), "old_logps": data.old_logps.sum(1), "advantages": data.advantages}
    return (trainer._compute_loss(model, inputs),)


def step3_rows(trl: SimpleNamespace, data: Rollout) -> list[Row]:
    rows = []
    large = replace(data, rewards=4 * data.rewards)
    for scale, inputs, note in (
            ("group", data, ""), ("none", data, ""),
            ("group", large, "ours clips every reward to +-clip_reward_value (5.0, '--clip_reward_value' help); "
                             "TRL's GRPO does not clip")):
        ours = our_advantages(our_trainer("grpo", "k3", GRPO_BETA, scale_rewards=scale), inputs)
        theirs = trl_advantages(trl, trl.GRPOTrainer, inputs, beta=GRPO_BETA, scale_rewards=scale, num_iterations=1,
                                multi_objective_aggregation="sum_then_normalize", use_vllm=False,
                                environment_factories=None, environments=None, tools=None)
        name = f"grpo advantages scale_rewards={scale}" + (" + rewards beyond +-5" if inputs is large else "")
        rows.append(Row(name, max_diff((ours, theirs[:, None] * inputs.mask)), note))
    grpo_losses = (
        ("token_mean", "bnpo", False, data, ""),
        ("token_mean", "dapo", False, data, ""),
        ("sequence_mean", "grpo", False, data, ""),
        ("token_mean", "dapo", True, data,
         "TRL's default use_bias_correction_kl weighs the KL by the ratio (DeepSeek-V3.2); ours is GRPO's k3 term"),
        ("sequence_mean", "grpo", False, data.without_answer(5),
         "an answer with no tokens: TRL's 'grpo' counts it as 0 in the mean over answers, ours leaves it out"),
    )
    for aggregation, loss_type, bias_correction, inputs, note in grpo_losses:
        trainer = our_trainer("grpo", "k3", GRPO_BETA, loss_aggregation=aggregation)
        name = (f"grpo loss k3 {aggregation} vs loss_type={loss_type} use_bias_correction_kl={bias_correction}"
                + (" + empty answer" if inputs is not data else ""))
        rows.append(Row(name, compare(lambda x, t=trainer, d=inputs: our_loss(t, d, x),
                                      lambda x, lt=loss_type, b=bias_correction, d=inputs:
                                      trl_grpo_loss(trl, d, x, lt, b), inputs.logps), note))
    ours = our_advantages(our_trainer("rloo", "k1", RLOO_BETA, RLOO_REWARD_CLIP), data)
    theirs = trl_advantages(trl, trl.RLOOTrainer, data, beta=RLOO_BETA, normalize_advantages=False,
                            reward_clip_range=(-RLOO_REWARD_CLIP, RLOO_REWARD_CLIP))
    rows.append(Row("rloo advantages (k1 KL in the reward, reward clip)",
                    max_diff((ours, theirs[:, None] * data.mask))))
    trainer = our_trainer("rloo", "k1", RLOO_BETA, loss_aggregation="sequence_mean")
    rows.append(Row("rloo loss sequence_mean", compare(lambda x: our_loss(trainer, data, x),
                                                       lambda x: trl_rloo_loss(trl, data, x), data.logps),
                    "TRL's RLOO clips one ratio per answer (its summed log-ratio); ours the per-token "
                    "surrogate every algorithm shares"))
    return rows


def load_trl() -> SimpleNamespace | None:
    """TRL's pieces, imported at run time: chatrlhf does not depend on TRL."""
    try:
        import trl
        from accelerate import Accelerator
        from trl import DPOTrainer, GRPOTrainer, KTOTrainer, RLOOTrainer
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
        from trl.trainer.utils import FusedCausalLMOutput
    except ImportError as error:
        print(f"cannot import TRL ({error}); run this in a venv with trl==1.16.0 (see the usage in "
              f"{__file__}'s docstring)", file=sys.stderr)
        return None
    return SimpleNamespace(DPOTrainer=DPOTrainer, CPOTrainer=CPOTrainer, ORPOTrainer=ORPOTrainer,
                           GRPOTrainer=GRPOTrainer, RLOOTrainer=RLOOTrainer, KTOTrainer=KTOTrainer,
                           FusedCausalLMOutput=FusedCausalLMOutput,
                           accelerator=Accelerator(cpu=True), version=trl.__version__)


def main() -> int:
    trl = load_trl()
    if trl is None:
        return 2
    gen = torch.Generator().manual_seed(SEED)
    rows = dpo_rows(trl, pair_batch(gen)) + kto_rows(trl, unpaired_batch(gen)) + step3_rows(trl, rollout(gen))
    width = max(len(row.name) for row in rows)
    print(f"TRL {trl.version}, torch {torch.__version__}, float64, tolerance {TOLERANCE:g}\n")
    print(f"{'check':<{width}}  {'max abs diff':>12}  status  note")
    failed = 0
    for row in rows:
        status = "PASS" if row.diff <= TOLERANCE else "DIFF"
        failed += status == "DIFF" and not row.note
        note = row.note if row.note else ("" if status == "PASS" else "unexpected: not a documented difference")
        print(f"{row.name:<{width}}  {row.diff:>12.3e}  {status:<6}  {note}")
    print(f"\n{failed} unexpected difference(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
