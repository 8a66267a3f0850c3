"""Step 1's loss and evaluation: next-token cross-entropy on the response tokens (or the full text)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chatrlhf.training.metrics_log import report_empty_eval
from chatrlhf.utils.model.lm_forward import causal_lm_loss
from chatrlhf.utils.model.packing import HiddenStates


@dataclass
class SFTTask:
    fp32_loss: bool = False
    loss_is_token_nll: bool = True
    hidden_states: HiddenStates | None = None
    """The backbone's forward under ``--packing``; None: the padded one."""

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = causal_lm_loss(
            engine.module, batch["input_ids"], batch["attention_mask"], batch["labels"], fp32_loss=self.fp32_loss,
            hidden_states=self.hidden_states,
        )
        return loss, {}

    def evaluate(self, engine, batches: list[dict]) -> dict[str, float]:
        """Token-weighted mean loss over the held-out batches, and its perplexity; no metrics (and a notice) when
        the held-out set is empty, which every rank sees alike (the sampler pads a non-empty set to each rank)."""
        if not batches:
            return report_empty_eval()
        total, count = 0.0, 0
        for batch in batches:
            loss, n = causal_lm_loss(
                engine.module, batch["input_ids"], batch["attention_mask"], batch["labels"], fp32_loss=True,
                hidden_states=self.hidden_states,
            )
            total += float(loss) * n
            count += n
        mean = total / max(count, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    def count_tokens(self, batch: dict) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])
