"""Activation, logits and KV-cache memory of one decoder-only transformer, per process.

For OPT and LLaMA (and Mistral) hand-written formulas count the tensors autograd keeps for backward in the Hugging
Face implementations, for ``b`` sequences of ``s`` tokens, hidden ``h``, ``a`` heads, FFN width ``f``, vocab ``V``,
``L`` layers and ``w`` bytes per element of the compute dtype. Any other family is measured instead: a tiny
autograd trace of the same architecture (``traced_activations``) scaled up. Transients freed within a layer are
not counted: the figure is what is live at the start of backward, where training peaks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from chatrlhf.utils.model_specs import TRACE_VOCAB, ModelKind, ModelSpec, decoder_blocks

if TYPE_CHECKING:
    from torch import nn

Attention = Literal["sdpa", "eager"]
FP32_BYTES = 4
TRACE_BATCH = 2
TRACE_SEQ = 64
"""The trace runs 2 sequences of 32 and of 64 tokens (fewer if the model has fewer positions)."""
TRACE_WIDTH_TOLERANCE = 0.05
"""How far a narrowed block's parameters may be from ``1/k²`` of the real block's (biases and norms scale by
``1/k``) before the trace distrusts the narrowing and runs at full width."""


def norm_bytes_per_element(spec: ModelSpec, dtype_bytes: int) -> int:
    """LayerNorm keeps its input (``w``); HF RMSNorm upcasts, keeping an fp32 copy (4) and the result (``w``)."""
    return FP32_BYTES + dtype_bytes if spec.rms_norm else dtype_bytes


def attention_scores_bytes(spec: ModelSpec, batch: int, seq: int, dtype_bytes: int, attention: Attention) -> int:
    """Per layer. Eager: ``b·a·s²`` probabilities, kept in fp32 by the softmax and again in ``w`` by the matmul
    with V (one tensor in fp32). SDPA (fused kernels) keeps only the fp32 log-sum-exp, ``b·a·s·4``."""
    if attention == "eager":
        per_score = FP32_BYTES + (dtype_bytes if dtype_bytes < FP32_BYTES else 0)
        return batch * spec.num_heads * seq * seq * per_score
    return batch * spec.num_heads * seq * FP32_BYTES


def layer_activation_bytes(
    spec: ModelSpec,
    batch: int,
    seq: int,
    dtype_bytes: int,
    attention: Attention,
    lora_dim: int = 0,
    dropout_mask_bytes: int = 1,
) -> int:
    """One decoder layer without checkpointing: ``b·s·[2h·norm + w·(h + 4·q_dim + mlp) + masks + lora] + scores``.

    Per token: both norms' inputs; the q/k/v projection input (``h``); q, k and v as the attention matmuls see
    them (k and v repeated to all heads, ``3·q_dim``); the o_proj input (``q_dim``). MLP: OPT keeps the fc1 input
    and the ReLU output (``h + f``), LLaMA the gate/up input and gate, SiLU(gate), up and their product
    (``h + 4f``). OPT's hidden dropout adds two masks of ``h`` (1-byte bool from the fused CUDA kernel; on the
    CPU dropout multiplies by a mask in the compute dtype); LoRA keeps ``x·A`` (``r``) per linear.

    Checked against the tensors autograd saves for the tiny presets (sdpa/eager, fp32/bf16): within 0.3%.
    """
    h, f = spec.hidden_size, spec.ffn_dim
    mlp = h + (f if spec.family == "opt" else 4 * f)
    per_token = 2 * h * norm_bytes_per_element(spec, dtype_bytes) + dtype_bytes * (h + 4 * spec.q_dim + mlp)
    if spec.dropout > 0:
        per_token += 2 * h * dropout_mask_bytes
    return (batch * seq * per_token + attention_scores_bytes(spec, batch, seq, dtype_bytes, attention)
            + lora_activation_bytes(spec, batch, seq, dtype_bytes, lora_dim))


def lora_activation_bytes(spec: ModelSpec, batch: int, seq: int, dtype_bytes: int, lora_dim: int) -> int:
    """One layer's LoRA adapters keep ``x·A`` (``r`` per token) for each block linear."""
    return batch * seq * dtype_bytes * lora_dim * len(spec.block_linears)


@dataclass(frozen=True)
class SeqFit:
    """Bytes per sequence as ``linear·s + quadratic·s²``."""

    linear: float
    quadratic: float

    def bytes(self, batch: int, seq: int) -> int:
        return round(batch * (self.linear * seq + self.quadratic * seq * seq))

    @classmethod
    def through(cls, short: int, short_bytes: float, long: int, long_bytes: float) -> SeqFit:
        """The curve through two measurements (per sequence); a negative s² term is taken as none."""
        quadratic = max(0.0, (long_bytes / long - short_bytes / short) / (long - short))
        return cls(linear=long_bytes / long - quadratic * long, quadratic=quadratic)


@dataclass(frozen=True)
class TracedActivations:
    """Saved-tensor bytes of a family without formulas, measured on a narrowed model and scaled to full width."""

    layer: SeqFit
    """One decoder layer."""
    rest: SeqFit
    """Everything outside the layers: embeddings, position tables, final norm and the LM head's input."""
    width_divisor: int
    seq_lengths: tuple[int, int]


def _saved_bytes(model: nn.Module, seq: int) -> int:
    """Bytes autograd keeps for backward of one training forward, parameters excluded, each storage once."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, TRACE_VOCAB, (TRACE_BATCH, seq))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=ids, use_cache=False)
    return sum(saved.values())


def _trace_model(spec: ModelSpec, num_layers: int, width_divisor: int, dtype_bytes: int,
                 attention: Attention) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    config = spec.trace_config(num_layers, width_divisor)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    return model.to(torch.float32 if dtype_bytes == FP32_BYTES else torch.bfloat16).train()


def _narrowing_holds(model: nn.Module, spec: ModelSpec, width_divisor: int) -> bool:
    """The narrowed block holds ``1/k²`` of the real block's parameters: every width the config names shrank."""
    block = sum(p.numel() for p in decoder_blocks(model, 1)[0].parameters())
    return abs(block * width_divisor**2 - spec.counts.block) <= TRACE_WIDTH_TOLERANCE * spec.counts.block


@functools.cache
def traced_activations(spec: ModelSpec, dtype_bytes: int, attention: Attention) -> TracedActivations:
    """Activations of a family without hand-written formulas, from a tiny autograd trace.

    The architecture runs on the CPU at 1 and 2 layers (their difference is one layer, the rest is everything
    else), at two sequence lengths (a linear + quadratic fit in ``s``: the quadratic part is attention scores),
    with a small vocabulary (the logits are counted by formula) and every width divided by
    ``ModelSpec.trace_width_divisor``; per-token activations are linear in the widths, so they scale back by that
    factor, and linearly in batch and layers. What is measured is what the CPU kernels keep: dropout masks in the
    compute dtype (1-byte on CUDA), and attention probabilities where CPU SDPA falls back to its math kernel.
    """
    import torch

    long = min(TRACE_SEQ, spec.max_positions or TRACE_SEQ)
    short = long // 2
    width = spec.trace_width_divisor()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        one = _trace_model(spec, 1, width, dtype_bytes, attention)
        if not _narrowing_holds(one, spec, width):
            width = 1
            one = _trace_model(spec, 1, width, dtype_bytes, attention)
        two = _trace_model(spec, 2, width, dtype_bytes, attention)
        measured = {(layers, seq): _saved_bytes(model, seq) * width / TRACE_BATCH
                    for layers, model in ((1, one), (2, two)) for seq in (short, long)}
    layer = {seq: measured[2, seq] - measured[1, seq] for seq in (short, long)}
    rest = {seq: measured[1, seq] - layer[seq] for seq in (short, long)}
    return TracedActivations(
        layer=SeqFit.through(short, layer[short], long, layer[long]),
        rest=SeqFit.through(short, rest[short], long, rest[long]),
        width_divisor=width, seq_lengths=(short, long),
    )


def logits_bytes_per_element(dtype_bytes: int, fp32_loss: bool) -> int:
    """Per ``b·s·V`` element at the start of backward.

    SFT (Hugging Face loss): logits in ``w``, the fp32 log-softmax kept for backward and its fp32 gradient.
    PPO actor (DeepSpeed-Chat's ``gather_log_probs`` on the logits as they are): logits, log-softmax and its
    gradient, all in ``w``.
    """
    return dtype_bytes + 2 * FP32_BYTES if fp32_loss else 3 * dtype_bytes


@dataclass(frozen=True)
class TrainingActivations:
    """Activation bytes of one training forward kept for backward, split as printed."""

    layers: int
    logits: int

    @property
    def total(self) -> int:
        return self.layers + self.logits


def training_activation_bytes(
    spec: ModelSpec,
    kind: ModelKind,
    *,
    batch: int,
    seq: int,
    dtype_bytes: int,
    attention: Attention,
    gradient_checkpointing: bool,
    lora_dim: int = 0,
    fp32_loss: bool = True,
    dropout_mask_bytes: int = 1,
) -> TrainingActivations:
    """Activations of one training micro-batch at the start of backward.

    Layers: ``L·layer`` without checkpointing; with it each layer keeps only its input (``L·b·s·h·w``) and backward
    recomputes one layer at a time (``+ layer``). Plus the final norm and head inputs, ``b·s·h·(norm + w)``
    (traced families: everything outside the layers, as measured). Logits (LM heads only):
    ``b·s·V·logits_bytes_per_element``; the value head of reward/critic models is ``b·s``.
    """
    if spec.family is None:
        traced = traced_activations(spec, dtype_bytes, attention)
        layer = traced.layer.bytes(batch, seq) + lora_activation_bytes(spec, batch, seq, dtype_bytes, lora_dim)
        rest = traced.rest.bytes(batch, seq)
    else:
        layer = layer_activation_bytes(spec, batch, seq, dtype_bytes, attention, lora_dim, dropout_mask_bytes)
        rest = batch * seq * spec.hidden_size * (norm_bytes_per_element(spec, dtype_bytes) + dtype_bytes)
    if gradient_checkpointing:
        layers = spec.num_layers * batch * seq * spec.hidden_size * dtype_bytes + layer
    else:
        layers = spec.num_layers * layer
    layers += rest
    if kind == "reward":
        return TrainingActivations(layers=layers, logits=batch * seq * FP32_BYTES)
    logits = batch * seq * spec.vocab_size * logits_bytes_per_element(dtype_bytes, fp32_loss)
    return TrainingActivations(layers=layers, logits=logits)


def kv_cache_bytes(spec: ModelSpec, batch: int, seq: int, dtype_bytes: int) -> int:
    """Generation cache: ``2 (k and v) · L · b · s · kv_heads · head_dim · w``."""
    return 2 * spec.num_layers * batch * seq * spec.kv_heads * spec.dim_per_head * dtype_bytes


def experience_bytes(spec: ModelSpec, batch: int, seq: int, dtype_bytes: int, attention: Attention) -> int:
    """Scoring generated sequences without grad (DeepSpeed-Chat ``generate_experience``): actor and reference
    logits held together plus one log-softmax, ``3·b·s·V·w``, and one layer's attention scores at a time."""
    logits = 3 * batch * seq * spec.vocab_size * dtype_bytes
    return logits + attention_scores_bytes(spec, batch, seq, dtype_bytes, attention)
