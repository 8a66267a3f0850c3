"""Experience: what a rollout and its scoring leave for the update."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from chatrlhf.step3_rlhf.rollout import Rollout


@dataclass
class Experience:
    """One micro-batch of episodes; the ``old_*``/advantage fields are filled before or during training.

    When a micro-batch is trained before the models have taken an optimizer step since the rollout,
    its first training forward IS the old policy and value forward: those fields are then filled from
    it instead of an extra no-grad pass (exactly the same numbers, one forward pass fewer per model).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompt_width: int
    ref_logprobs: torch.Tensor
    scores: torch.Tensor
    rewards_in: torch.Tensor
    prompts: list[str]
    tasks: list[str]
    old_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    kl: torch.Tensor | None = None

    @classmethod
    def from_rollout(cls, rollout: Rollout, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                     rewards_in: torch.Tensor, prompts: list[str], tasks: list[str]) -> Experience:
        return cls(rollout.sequences, rollout.attention_mask, rollout.answer_mask, rollout.prompt_width,
                   ref_logprobs, scores, rewards_in, prompts, tasks)

    @property
    def answers(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width :]

    @property
    def ready(self) -> bool:
        """The old policy's pass has run (critic-free advantages may be set before it)."""
        return self.old_logprobs is not None

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def rows(self, start: int, stop: int) -> Experience:
        """Rows ``start:stop`` of every per-episode field."""
        changes = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor | list):
                changes[field.name] = value[start:stop]
        return replace(self, **changes)


def select(exp: Experience, indices: list[int]) -> Experience:
    """The rows ``indices`` of a fresh experience (before its old log-probs and advantages are set)."""
    index = torch.tensor(indices, dtype=torch.long, device=exp.sequences.device)
    return replace(exp, sequences=exp.sequences[index], attention_mask=exp.attention_mask[index],
                   answer_mask=exp.answer_mask[index], ref_logprobs=exp.ref_logprobs[index],
                   scores=exp.scores[index], rewards_in=exp.rewards_in[index],
                   prompts=[exp.prompts[i] for i in indices], tasks=[exp.tasks[i] for i in indices])


def concat(parts: list[Experience], pad_id: int) -> Experience:
    """Fresh experiences stacked into one: prompts left-padded and answers right-padded to the widest part
    (positions come from the mask, so the extra padding changes no number)."""
    prompt_width = max(part.prompt_width for part in parts)
    answer_width = max(part.answer_mask.shape[1] for part in parts)

    def widen(tensor: torch.Tensor, left: int, right: int, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (left, right), value=value)

    pieces: dict[str, list] = {name: [] for name in ("sequences", "attention_mask", "answer_mask", "ref_logprobs")}
    for part in parts:
        left, right = prompt_width - part.prompt_width, answer_width - part.answer_mask.shape[1]
        pieces["sequences"].append(widen(part.sequences, left, right, pad_id))
        pieces["attention_mask"].append(widen(part.attention_mask, left, right, 0))
        pieces["answer_mask"].append(widen(part.answer_mask, 0, right, 0))
        pieces["ref_logprobs"].append(widen(part.ref_logprobs, 0, right, 0.0))
    return Experience(
        **{name: torch.cat(tensors) for name, tensors in pieces.items()}, prompt_width=prompt_width,
        scores=torch.cat([part.scores for part in parts]), rewards_in=torch.cat([part.rewards_in for part in parts]),
        prompts=[p for part in parts for p in part.prompts], tasks=[t for part in parts for t in part.tasks])


def micro_batches(buffer: list[Experience], size: int) -> list[Experience]:
    return [exp.rows(i, i + size) for exp in buffer for i in range(0, len(exp), size)]


def repeat_prompts(batch: dict, times: int) -> dict:
    """Every prompt of a collated batch ``times`` times in adjacent rows, so each prompt's samples form a group."""
    if times == 1:
        return batch
    repeated = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            repeated[key] = value.repeat_interleave(times, dim=0)
        else:
            repeated[key] = [item for item in value for _ in range(times)]
    return repeated
