"""Step 2's loss and evaluation: pairwise ranking of chosen over rejected answers.

The collator stacks the chosen rows over the rejected rows, so one forward pass scores both halves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chatrlhf.step2_reward.tied_lm_head import tied_lm_logits
from chatrlhf.training.metrics_log import report_empty_eval
from chatrlhf.training.pair_metrics import ScoredPairs, pair_metrics, pairwise_loss
from chatrlhf.utils import device
from chatrlhf.utils.model.packing import HiddenStates
from chatrlhf.utils.model.reward_model import backbone_hidden, score_head, sequence_scores
from chatrlhf.utils.model.reward_stats import RewardStats


def pair_forward(model, batch: dict, *, fp32: bool = False,
                 hidden_states: HiddenStates = backbone_hidden) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen and rejected sequence scores of a ``PairCollator`` batch, and the backbone's hidden states
    (``hidden_states``: the packed forward under ``--packing``)."""
    hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"])
    scores = sequence_scores(score_head(model)(hidden).squeeze(-1), batch["attention_mask"])
    if fp32:
        scores = scores.float()
    half = scores.shape[0] // 2
    return scores[:half], scores[half:], hidden


def pair_scores(model, batch: dict, *, fp32: bool = False,
                hidden_states: HiddenStates = backbone_hidden) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected sequence scores of a ``PairCollator`` batch."""
    chosen, rejected, _ = pair_forward(model, batch, fp32=fp32, hidden_states=hidden_states)
    return chosen, rejected


def chosen_lm_loss(model, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens of the chosen rows (the first half of the batch)."""
    half = hidden.shape[0] // 2
    targets = batch["input_ids"][:half, 1:]
    keep = batch["attention_mask"][:half, 1:].bool()
    logits = tied_lm_logits(model, hidden[:half, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def score_batches(model, batches, *, fp32: bool = True, hidden_states: HiddenStates = backbone_hidden) -> ScoredPairs:
    """Score ``batches`` without gradients and gather the results of every rank (all ranks must call this)."""
    chosen: list[float] = []
    rejected: list[float] = []
    tasks: list[str] = []
    mistakes: list[str] = []
    with torch.no_grad():
        for batch in batches:
            good, bad = pair_scores(model, batch, fp32=fp32, hidden_states=hidden_states)
            chosen += good.tolist()
            rejected += bad.tolist()
            tasks += batch.get("task") or [""] * len(good)
            mistakes += batch.get("mistake") or [""] * len(good)
    parts = device.all_gather_json([chosen, rejected, tasks, mistakes])
    return ScoredPairs(*(sum((part[i] for part in parts), []) for i in range(4)))


def reward_stats(engine, loader) -> RewardStats:
    """Score statistics of the whole held-out set with the trained model, for step 3's reward normalisation."""
    from chatrlhf.training.loop import to_device

    target = device.local_device()
    engine.eval()
    scored = score_batches(engine.module, (to_device(b, target) for b in loader))
    engine.train()
    return RewardStats.from_scores(scored.chosen, scored.rejected)


@dataclass
class RewardTask:
    """The ``StepTask`` of step 2."""

    fp32_loss: bool = False
    use_margin: bool = False
    center_rewards_coef: float = 0.0
    lm_loss_coef: float = 0.0
    loss_is_token_nll: bool = False
    hidden_states: HiddenStates | None = None
    """The backbone's forward under ``--packing``; None: the padded one."""

    @property
    def _hidden_states(self) -> HiddenStates:
        return self.hidden_states or backbone_hidden

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, hidden = pair_forward(engine.module, batch, fp32=self.fp32_loss,
                                                hidden_states=self._hidden_states)
        margin = batch["margin"] if self.use_margin else None
        loss = pairwise_loss(chosen, rejected, margin, self.center_rewards_coef)
        with torch.no_grad():
            stats = {
                "accuracy": float((chosen > rejected).float().mean()),
                "chosen_score": float(chosen.mean()),
                "rejected_score": float(rejected.mean()),
            }
        if self.lm_loss_coef:
            lm_loss = chosen_lm_loss(engine.module, hidden, batch)
            loss = loss + self.lm_loss_coef * lm_loss
            stats["lm_loss"] = float(lm_loss.detach())
        return loss, stats

    def evaluate(self, engine, batches: list[dict]) -> dict[str, float]:
        """Metrics over all ranks' batches at once, so every rank reports the same keys and values; none (and a
        notice) when the held-out set is empty."""
        scored = score_batches(engine.module, batches, hidden_states=self._hidden_states)
        return pair_metrics(scored) if scored.chosen else report_empty_eval()

    def count_tokens(self, batch: dict) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])
