"""Activation, logits and KV-cache memory of one decoder-only transformer, per process.

Counts the tensors autograd keeps for backward in the Hugging Face OPT/LLaMA implementations, for ``b``
sequences of ``s`` tokens, hidden ``h``, ``a`` heads, FFN width ``f``, vocab ``V``, ``L`` layers and ``w`` bytes
per element of the compute dtype. Transients freed within a layer are not counted: the figure is what is live at
the start of backward, where training peaks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chatrlhf.utils.model_specs import ModelKind, ModelSpec

Attention = Literal["sdpa", "eager"]
FP32_BYTES = 4


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
    per_token += dtype_bytes * lora_dim * len(spec.block_linears())
    return batch * seq * per_token + attention_scores_bytes(spec, batch, seq, dtype_bytes, attention)


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
    recomputes one layer at a time (``+ layer``). Plus the final norm and head inputs, ``b·s·h·(norm + w)``.
    Logits (LM heads only): ``b·s·V·logits_bytes_per_element``; the value head of reward/critic models is ``b·s``.
    """
    layer = layer_activation_bytes(spec, batch, seq, dtype_bytes, attention, lora_dim, dropout_mask_bytes)
    if gradient_checkpointing:
        layers = spec.num_layers * batch * seq * spec.hidden_size * dtype_bytes + layer
    else:
        layers = spec.num_layers * layer
    layers += batch * seq * spec.hidden_size * (norm_bytes_per_element(spec, dtype_bytes) + dtype_bytes)
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
