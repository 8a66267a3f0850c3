"""How step 3 runs its models: one backend, chosen once when the engines are built.

The trainer asks a backend for four things only: ``sample`` answers, the actor's or reference's ``logprobs``
(any head on the answer logits), the critic's ``values`` and the reward model's ``scores``.

``PlainForward`` is the models' own forward over the padded batch and ``generate``-style decoding through the
model: the path on GPUs and under ZeRO-3 lockstep (every rank must make the same module calls), and the oracle
the CPU speed paths are tested against. ``CpuFastForward`` puts every CPU speed path of ``utils/model`` in:
packed rows, length groups, the trimmed final layer, oneDNN products, the flat decode step and the
preallocated cache. Each of those checks itself on first use (``utils/model/cpu_fast/shortcuts.py``) and, where it does
not fit a model, that model takes the plain route inside the fast backend.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from chatrlhf.step3_rlhf.config import GenerationConfig
from chatrlhf.step3_rlhf.length_groups import RowGroup, grouped, plan_groups
from chatrlhf.step3_rlhf.packed_answers import Head, PackedAnswers
from chatrlhf.step3_rlhf.rollout import Rollout, answer_tokens, plain_prefill, prompt_pass, rollout_of
from chatrlhf.utils.device import has_cuda
from chatrlhf.utils.model import cpu_fast
from chatrlhf.utils.model.cpu_fast.fast_decode import fast_decoder
from chatrlhf.utils.model.cpu_fast.kv_cache import decode_cache, merged_cache, preallocation_fits
from chatrlhf.utils.model.cpu_fast.last_layer import outputs_from
from chatrlhf.utils.model.cpu_fast.packed_linear import onednn_linears, packed_linears
from chatrlhf.utils.model.cpu_fast.packed_rows import packing_supported
from chatrlhf.utils.model.decoding import model_step
from chatrlhf.utils.model.lm_forward import answer_logits, split_lm


class ForwardBackend(Protocol):
    name: str

    def sample(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: GenerationConfig,
               *, eos_id: int, pad_id: int) -> Rollout:
        """Answers to left-padded prompts, cut after each row's first end-of-text token."""

    def logprobs(self, model: nn.Module, rollout: Rollout, head: Head) -> tuple[torch.Tensor, ...]:
        """``head(logits, answer tokens)`` of a causal LM at every answer token, each (B, answer width)."""

    def values(self, critic: nn.Module, rollout: Rollout) -> torch.Tensor:
        """The critic's value before each answer token, (B, answer width)."""

    def scores(self, reward: nn.Module, rollout: Rollout) -> torch.Tensor:
        """The reward model's score of each prompt + answer, at its last real token, (B,), fp32."""


def _values_at(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from chatrlhf.utils.model.reward_model import token_values

    return token_values(model, ids, mask)


def _sequence_scores(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from chatrlhf.utils.model.reward_model import sequence_scores

    return sequence_scores(_values_at(model, ids, mask), mask).float()


@dataclass(frozen=True)
class PlainForward:
    """Every pass is the model's own forward on one padded batch (trimmed to the columns any row uses).

    ``hybrid_engine``: the actor's DeepSpeed engine when ``--enable_hybrid_engine`` runs on CUDA; its
    ``generate`` then samples, switching the training weights into its inference kernels and back.
    """

    lockstep: bool = False
    hybrid_engine: Any = field(default=None, compare=False, repr=False)
    name: str = "plain"

    @staticmethod
    def _one_batch(rollout: Rollout) -> list[RowGroup]:
        return plan_groups(rollout.attention_mask, rollout.prompt_width, split=False)

    @torch.no_grad()
    def sample(self, model, prompt_ids, prompt_mask, cfg, *, eos_id, pad_id) -> Rollout:
        if self.hybrid_engine is not None:
            tokens = self._engine_tokens(prompt_ids, prompt_mask, cfg, eos_id=eos_id, pad_id=pad_id)
        else:
            tokens = answer_tokens(model, prompt_ids, prompt_mask, cfg, model_step(model), plain_prefill,
                                   eos_id=eos_id, pad_id=pad_id, lockstep=self.lockstep)
        return rollout_of(prompt_ids, prompt_mask, tokens, eos_id=eos_id, pad_id=pad_id)

    def _engine_tokens(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: GenerationConfig, *,
                       eos_id: int, pad_id: int) -> torch.Tensor:
        """The answer tokens from the hybrid engine's ``generate``; ``rollout_of`` cuts and masks them as it
        does our own sampler's, so everything after generation is shared."""
        sampling = ({"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
                    if cfg.temperature > 0 else {"do_sample": False})
        out = self.hybrid_engine.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=cfg.max_answer_seq_len,
            min_new_tokens=cfg.min_answer_seq_len, pad_token_id=pad_id, eos_token_id=eos_id,
            synced_gpus=self.lockstep, **sampling)
        return out[:, prompt_ids.shape[1]:]

    def logprobs(self, model, rollout, head) -> tuple[torch.Tensor, ...]:
        def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
            return head(answer_logits(model, ids, mask, start), ids[:, start:])

        return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width,
                       self._one_batch(rollout))

    def values(self, critic, rollout) -> torch.Tensor:
        def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
            return (_values_at(critic, ids, mask)[:, start - 1 : -1],)

        return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width,
                       self._one_batch(rollout))[0]

    def scores(self, reward, rollout) -> torch.Tensor:
        def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
            return (_sequence_scores(reward, ids, mask),)

        return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width,
                       self._one_batch(rollout))[0]


@dataclass(frozen=True)
class CpuFastForward:
    """The CPU speed paths: rows packed end to end where the family allows it, else length groups; the final
    layer only where its outputs are read; oneDNN products; the flat decode step."""

    name: str = "cpu_fast"

    @staticmethod
    def _packed(model: nn.Module, rollout: Rollout) -> PackedAnswers | None:
        if not packing_supported(model):
            return None
        return PackedAnswers.of(rollout.sequences, rollout.attention_mask, rollout.prompt_width)

    @staticmethod
    def prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                capacity: int) -> tuple[torch.Tensor, Cache]:
        """Next-token logits after each prompt, (B, V), and a cache of ``capacity`` positions holding the prompts.

        The prompts run in length groups (``plan_groups``): a batch left-padded to its longest prompt is
        about 40% padding on the peer workload. Within each group the final layer computes its output at
        the last position only (``outputs_from``); every position's keys and values are kept.
        """
        width = prompt_ids.shape[1]
        groups = plan_groups(prompt_mask, max(width - 1, 1), split=preallocation_fits(model))
        if len(groups) == 1:
            with outputs_from(model, width - 1):
                return prompt_pass(model, prompt_ids, prompt_mask, decode_cache(model, capacity))
        parts, logits = [], []
        for group in groups:
            cache = DynamicCache()
            ids, mask = prompt_ids[group.rows, group.left :], prompt_mask[group.rows, group.left :]
            with outputs_from(model, ids.shape[1] - 1):
                logits.append(prompt_pass(model, ids, mask, cache)[0])
            parts.append((group.rows, group.left, cache))
        order = torch.cat([group.rows for group in groups])
        return torch.cat(logits)[torch.argsort(order)], merged_cache(parts, width, capacity)

    @torch.no_grad()
    def sample(self, model, prompt_ids, prompt_mask, cfg, *, eos_id, pad_id) -> Rollout:
        decode = fast_decoder(model)
        with onednn_linears(model) if decode else packed_linears(model):
            tokens = answer_tokens(model, prompt_ids, prompt_mask, cfg, decode or model_step(model), self.prefill,
                                   eos_id=eos_id, pad_id=pad_id, lockstep=False)
        return rollout_of(prompt_ids, prompt_mask, tokens, eos_id=eos_id, pad_id=pad_id)

    def logprobs(self, model, rollout, head) -> tuple[torch.Tensor, ...]:
        with onednn_linears(model):
            packed = self._packed(model, rollout)
            if packed is not None:
                lm_head = split_lm(model)[1]
                return packed.answer_outputs(model, lambda hidden, labels: head(lm_head(hidden), labels))

            def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
                with outputs_from(model, start - 1):
                    return head(answer_logits(model, ids, mask, start), ids[:, start:])

            return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width)

    def values(self, critic, rollout) -> torch.Tensor:
        from chatrlhf.utils.model.reward_model import score_head

        with onednn_linears(critic):
            packed = self._packed(critic, rollout)
            if packed is not None:
                return packed.answer_outputs(critic, lambda hidden, _: (score_head(critic)(hidden).squeeze(-1),))[0]

            def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
                with outputs_from(critic, start - 1):
                    return (_values_at(critic, ids, mask)[:, start - 1 : -1],)

            return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width)[0]

    def scores(self, reward, rollout) -> torch.Tensor:
        from chatrlhf.utils.model.reward_model import score_head

        with onednn_linears(reward):
            packed = self._packed(reward, rollout)
            if packed is not None:
                return score_head(reward)(packed.final_hidden(reward)).squeeze(-1).float()

            def forward(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple[torch.Tensor]:
                with outputs_from(reward, start - 1):
                    return (_sequence_scores(reward, ids, mask),)

            return grouped(forward, rollout.sequences, rollout.attention_mask, rollout.prompt_width)[0]


def choose_backend(lockstep: bool, models: Sequence[nn.Module] = (), *,
                   hybrid_engine: Any = None) -> PlainForward | CpuFastForward:
    """Plain on GPUs and when ranks must run in lockstep (ZeRO-3 across ranks); the CPU speed paths otherwise,
    with each path's fit for ``models`` decided here, before the first step."""
    if has_cuda() or lockstep:
        return PlainForward(lockstep=lockstep, hybrid_engine=hybrid_engine)
    for model in models:
        cpu_fast.check(model)
    return CpuFastForward()

