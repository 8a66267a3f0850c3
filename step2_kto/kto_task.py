"""KTO's ``StepTask``: the loss of a batch of labelled completions, and held-out rewards, KL estimate and (for rows
that came from pairs) pair reward accuracy.

The batches are ``UnpairedCollator``'s: one row per completion and, under ``--loss_type kto``, the mismatched
rows (each prompt with its neighbour's completion) whose log-ratio is KTO's reference point. The policy scores
the mismatched rows without gradient, as TRL does: the reference point is a constant of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.step2_kto.kto_loss import KTOConfig, KTOLoss, kto_loss, reference_point
from chatrlhf.training.metrics_log import report_empty_eval
from chatrlhf.training.reference_model import LiveReference
from chatrlhf.utils import device
from chatrlhf.utils.model.lm_forward import answer_logprobs
from chatrlhf.utils.model.packing import HiddenStates


@dataclass
class ScoredBatch:
    loss: KTOLoss
    logps: torch.Tensor


@dataclass
class KTOTask:
    config: KTOConfig
    reference: LiveReference
    fp32: bool = True
    loss_is_token_nll: bool = False
    hidden_states: HiddenStates | None = None
    """The backbone's forward under ``--packing`` (policy and live reference); None: the padded one."""

    def _logps(self, model: nn.Module, batch: dict, mismatched: bool = False) -> torch.Tensor:
        """Summed completion log-probs of the batch's rows, or of its mismatched rows (same prompt lengths)."""
        prefix = "kl_" if mismatched else ""
        sums, _ = answer_logprobs(model, batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"],
                                  batch["prompt_len"], fp32=self.fp32, hidden_states=self.hidden_states)
        return sums

    def score(self, engine, batch: dict, *, across_ranks: bool = True) -> ScoredBatch:
        policy = engine.module
        logps = self._logps(policy, batch)
        kl = None
        with torch.no_grad():
            with self.reference.scoring(policy) as reference:
                ref_logps = self._logps(reference, batch)
                ref_kl = self._logps(reference, batch, mismatched=True) if self.config.estimates_kl else None
            if ref_kl is not None:
                kl = reference_point(self._logps(policy, batch, mismatched=True), ref_kl, across_ranks=across_ranks)
        return ScoredBatch(kto_loss(self.config, logps, ref_logps, batch["label"], kl), logps)

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scored = self.score(engine, batch)
        out, labels = scored.loss, batch["label"].float()
        signs = 2 * labels - 1
        stats = {"kl": float(out.kl), "desirable_share": float(labels.mean()),
                 "signed_reward": float((signs * out.rewards).mean())}
        return out.losses.mean(), stats

    def evaluate(self, engine, batches: list[dict]) -> dict[str, float]:
        """Metrics over all ranks' completions at once; each held-out batch uses its own reference point."""
        columns: dict[str, list] = {key: [] for key in ("loss", "reward", "logp", "label", "pair", "kl")}
        for batch in batches:
            scored = self.score(engine, batch, across_ranks=False)
            columns["loss"] += scored.loss.losses.tolist()
            columns["reward"] += scored.loss.rewards.tolist()
            columns["logp"] += scored.logps.tolist()
            columns["label"] += batch["label"].tolist()
            columns["pair"] += batch["pair"].tolist()
            columns["kl"].append(float(scored.loss.kl))
        parts = device.all_gather_json(columns)
        columns = {key: sum((part[key] for part in parts), []) for key in columns}
        if not columns["loss"]:
            return report_empty_eval()
        return unpaired_metrics(columns)

    def count_tokens(self, batch: dict) -> tuple[int, int]:
        tokens = int(batch["attention_mask"].sum()) + int(batch.get("kl_attention_mask", torch.zeros(1)).sum())
        return tokens, int(batch["input_ids"].shape[0])


def unpaired_metrics(columns: dict[str, list]) -> dict[str, float]:
    """Loss, KL estimate, mean reward and log-prob of desirable and undesirable completions, their margin, and the
    reward accuracy of the pairs whose two completions were both held out."""
    metrics = {"loss": _mean(columns["loss"]), "kl": _mean(columns["kl"])}
    sides = {True: "desirable", False: "undesirable"}
    for label, name in sides.items():
        rows = [i for i, value in enumerate(columns["label"]) if bool(value) is label]
        if rows:
            metrics[f"{name}_reward"] = _mean([columns["reward"][i] for i in rows])
            metrics[f"{name}_logp"] = _mean([columns["logp"][i] for i in rows])
    if "desirable_reward" in metrics and "undesirable_reward" in metrics:
        metrics["reward_margin"] = metrics["desirable_reward"] - metrics["undesirable_reward"]
    pairs: dict[int, dict[bool, float]] = {}
    for pair, label, reward in zip(columns["pair"], columns["label"], columns["reward"], strict=True):
        if pair >= 0:
            pairs.setdefault(pair, {})[bool(label)] = reward
    both = [found for found in pairs.values() if len(found) == 2]
    if both:
        metrics["reward_accuracy"] = _mean([1.0 if s[True] > s[False] else 0.0 for s in both])
    return metrics


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
