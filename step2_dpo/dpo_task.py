"""DPO's ``StepTask``: the preference loss of a pair batch, and held-out reward accuracy, margin and log-probs.

The batches are step 2's (``PairCollator``: chosen rows over rejected rows), so one forward pass of the policy
scores both answers of every pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.step2_dpo.reference import pair_sums
from chatrlhf.training.metrics_log import report_empty_eval
from chatrlhf.training.pair_metrics import ScoredPairs, pair_metrics
from chatrlhf.training.preference_losses import LossConfig, PairLoss, preference_loss
from chatrlhf.training.reference_model import LiveReference
from chatrlhf.utils import device
from chatrlhf.utils.model.packing import HiddenStates

# pair_metrics' names for scores, as DPO's rewards.
REWARD_NAMES = {"accuracy": "reward_accuracy", "margin": "reward_margin", "chosen_score": "chosen_reward",
                "rejected_score": "rejected_reward"}


@dataclass
class ScoredBatch:
    loss: PairLoss
    chosen_logp: torch.Tensor
    rejected_logp: torch.Tensor


@dataclass
class DPOTask:
    """``reference`` None: the loss needs none, or the batches carry precomputed reference log-probs."""

    config: LossConfig
    reference: LiveReference | None = None
    fp32: bool = True
    loss_is_token_nll: bool = False
    hidden_states: HiddenStates | None = None
    """The backbone's forward under ``--packing`` (policy and live reference); None: the padded one."""

    def _split(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        sums, counts = pair_sums(model, batch, fp32=self.fp32, hidden_states=self.hidden_states)
        logps = self.config.sequence_logps(sums, counts)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]

    def _reference_logps(self, policy: nn.Module, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.config.reference_free:
            return None, None
        if self.reference is None:
            return batch["ref_chosen_logp"].float(), batch["ref_rejected_logp"].float()
        with torch.no_grad(), self.reference.scoring(policy) as model:
            return self._split(model, batch)

    def score(self, engine, batch: dict) -> ScoredBatch:
        chosen, rejected = self._split(engine.module, batch)
        ref_chosen, ref_rejected = self._reference_logps(engine.module, batch)
        return ScoredBatch(preference_loss(self.config, chosen, rejected, ref_chosen, ref_rejected), chosen, rejected)

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scored = self.score(engine, batch)
        out = scored.loss
        stats = {
            "chosen_logp": float(scored.chosen_logp.detach().mean()),
            "rejected_logp": float(scored.rejected_logp.detach().mean()),
            "chosen_reward": float(out.chosen_rewards.mean()),
            "rejected_reward": float(out.rejected_rewards.mean()),
            "reward_accuracy": float((out.chosen_rewards > out.rejected_rewards).float().mean()),
            "reward_margin": float((out.chosen_rewards - out.rejected_rewards).mean()),
        }
        return out.losses.mean(), stats

    def evaluate(self, engine, batches: list[dict]) -> dict[str, float]:
        """Metrics over all ranks' pairs at once, with reward accuracy per task and mistake kind when labelled."""
        columns: dict[str, list] = {key: [] for key in ("loss", "chosen", "rejected", "chosen_logp", "rejected_logp",
                                                        "task", "mistake")}
        for batch in batches:
            scored = self.score(engine, batch)
            columns["loss"] += scored.loss.losses.tolist()
            columns["chosen"] += scored.loss.chosen_rewards.tolist()
            columns["rejected"] += scored.loss.rejected_rewards.tolist()
            columns["chosen_logp"] += scored.chosen_logp.tolist()
            columns["rejected_logp"] += scored.rejected_logp.tolist()
            pairs = len(scored.chosen_logp)
            columns["task"] += batch.get("task") or [""] * pairs
            columns["mistake"] += batch.get("mistake") or [""] * pairs
        parts = device.all_gather_json(columns)
        columns = {key: sum((part[key] for part in parts), []) for key in columns}
        if not columns["loss"]:
            return report_empty_eval()
        by_pair = pair_metrics(ScoredPairs(columns["chosen"], columns["rejected"], columns["task"],
                                           columns["mistake"]))
        metrics = {"loss": _mean(columns["loss"]), "chosen_logp": _mean(columns["chosen_logp"]),
                   "rejected_logp": _mean(columns["rejected_logp"]),
                   "logp_accuracy": logp_accuracy(columns["chosen_logp"], columns["rejected_logp"])}
        metrics.update({REWARD_NAMES[key]: value for key, value in by_pair.items() if key in REWARD_NAMES})
        metrics.update({key: value for key, value in by_pair.items() if key.startswith("acc_")})
        return metrics

    def count_tokens(self, batch: dict) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])


def logp_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """The share of pairs whose chosen answer the policy finds likelier than the rejected one (ties count half):
    the policy's own ranking, which before training is the SFT model's, where the implicit reward is 0 for all."""
    return _mean([1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
