"""Architecture sizes for memory estimates: an offline table of known models and ``config.json`` reading.

Parameter counts follow the Hugging Face implementations (``OPTForCausalLM``, ``LlamaForCausalLM``) exactly, so
the estimator never needs to build a model or reach the Hugging Face hub.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal["opt", "llama"]
ModelKind = Literal["lm", "reward"]
"""``lm``: causal LM with its head (SFT model, actor, reference); ``reward``: base model plus a scalar value head
(reward model, critic), as DeepSpeed-Chat's ``RewardModel`` builds it."""

SUPPORTED_MODEL_TYPES: dict[str, Family] = {"opt": "opt", "llama": "llama", "mistral": "llama"}


class ModelSpecError(ValueError):
    """A model name, path or config the estimator cannot turn into an architecture."""


@dataclass(frozen=True)
class LinearShape:
    """One ``nn.Linear`` of a decoder block (LoRA targets these)."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ModelSpec:
    """What memory depends on: sizes of a decoder-only transformer of the OPT or LLaMA family."""

    name: str
    family: Family
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    vocab_size: int
    max_positions: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    tie_embeddings: bool = True
    word_embed_proj_dim: int | None = None
    """OPT only: embedding width when it differs from ``hidden_size`` (OPT-350m: 512, with project_in/out)."""
    final_layer_norm: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    dropout: float = 0.0
    """Hidden-state dropout; > 0 keeps a 1-byte mask per element for backward."""

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads, self.ffn_dim, self.vocab_size) <= 0:
            raise ModelSpecError(f"model {self.name!r}: sizes must be positive, got {self}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ModelSpecError(
                f"model {self.name!r}: hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads; "
                "set head_dim in the config"
            )
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ModelSpecError(
                f"model {self.name!r}: {self.num_heads} attention heads are not a multiple of {self.kv_heads} kv heads"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_per_head

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim_per_head

    @property
    def embed_dim(self) -> int:
        return self.word_embed_proj_dim or self.hidden_size

    @property
    def rms_norm(self) -> bool:
        return self.family == "llama"

    def block_linears(self) -> tuple[LinearShape, ...]:
        """The linear layers of one decoder block, in forward order."""
        h, attn_bias = self.hidden_size, self.attention_bias
        attention = (
            LinearShape("q_proj", h, self.q_dim, attn_bias),
            LinearShape("k_proj", h, self.kv_dim, attn_bias),
            LinearShape("v_proj", h, self.kv_dim, attn_bias),
            LinearShape("o_proj", self.q_dim, h, attn_bias),
        )
        if self.family == "opt":
            mlp = (
                LinearShape("fc1", h, self.ffn_dim, self.mlp_bias),
                LinearShape("fc2", self.ffn_dim, h, self.mlp_bias),
            )
        else:
            mlp = (
                LinearShape("gate_proj", h, self.ffn_dim, self.mlp_bias),
                LinearShape("up_proj", h, self.ffn_dim, self.mlp_bias),
                LinearShape("down_proj", self.ffn_dim, h, self.mlp_bias),
            )
        return attention + mlp

    def _norm_params(self) -> int:
        """LayerNorm has weight and bias, RMSNorm only a weight."""
        return self.hidden_size * (1 if self.rms_norm else 2)

    def _embedding_modules(self, kind: ModelKind) -> list[int]:
        """Parameter counts of the non-block modules: embeddings, projections, final norm, head."""
        h, e = self.hidden_size, self.embed_dim
        modules = [self.vocab_size * e]
        if self.family == "opt":
            modules.append((self.max_positions + 2) * h)  # OPT's learned positions are offset by 2
            if e != h:
                modules += [e * h, h * e]  # project_in, project_out (no bias)
        if self.final_layer_norm:
            modules.append(self._norm_params())
        if kind == "lm" and not self.tie_embeddings:
            modules.append(self.vocab_size * e)
        if kind == "reward":
            modules.append(self.value_head_params)
        return modules

    @property
    def value_head_params(self) -> int:
        """DeepSpeed-Chat's reward/critic ``v_head``: ``Linear(embed_dim, 1, bias=False)``."""
        return self.embed_dim

    def block_params(self) -> int:
        return sum(linear.params for linear in self.block_linears()) + 2 * self._norm_params()

    def params(self, kind: ModelKind = "lm") -> int:
        """Total parameters, shared (tied) ones counted once like ``deepspeed``'s ``model_to_params``."""
        return self.num_layers * self.block_params() + sum(self._embedding_modules(kind))

    def largest_layer_params(self, kind: ModelKind = "lm") -> int:
        """Most parameters held directly by one module (ZeRO-3 gathers one such module at a time).

        PEFT's LoRA adapters are modules of their own, so they never make a layer larger.
        """
        return max(self._embedding_modules(kind) + [linear.params for linear in self.block_linears()])

    def lora_params(self, lora_dim: int) -> int:
        """LoRA on every block linear (chatrlhf's ``training/lora.py``, via PEFT, as DeepSpeed-Chat's
        ``convert_linear_layer_to_lora``): ``lora_A`` (in x r) plus ``lora_B`` (r x out)."""
        per_block = sum(lora_dim * (linear.in_features + linear.out_features) for linear in self.block_linears())
        return self.num_layers * per_block

    def largest_lora_module(self, lora_dim: int) -> int:
        return lora_dim * max(max(linear.in_features, linear.out_features) for linear in self.block_linears())

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str = "config.json") -> ModelSpec:
        """Read sizes from a Hugging Face config dict (``config.json`` or ``PretrainedConfig.to_dict()``)."""
        model_type = config.get("model_type")
        family = SUPPORTED_MODEL_TYPES.get(str(model_type))
        if family is None:
            raise ModelSpecError(
                f"{name}: model_type {model_type!r} is not supported; the estimator knows "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoder-only OPT/LLaMA layouts)"
            )
        try:
            common = {
                "name": name,
                "family": family,
                "hidden_size": int(config["hidden_size"]),
                "num_layers": int(config["num_hidden_layers"]),
                "num_heads": int(config["num_attention_heads"]),
                "vocab_size": pad_vocab(int(config["vocab_size"])),
                "max_positions": int(config["max_position_embeddings"]),
            }
            if family == "opt":
                return cls(
                    **common,
                    ffn_dim=int(config["ffn_dim"]),
                    word_embed_proj_dim=config.get("word_embed_proj_dim"),
                    final_layer_norm=bool(config.get("do_layer_norm_before", True))
                    and not config.get("_remove_final_layer_norm", False),
                    attention_bias=bool(config.get("enable_bias", True)),
                    mlp_bias=bool(config.get("enable_bias", True)),
                    tie_embeddings=bool(config.get("tie_word_embeddings", True)),
                    dropout=float(config.get("dropout", 0.1)),
                )
            return cls(
                **common,
                ffn_dim=int(config["intermediate_size"]),
                num_kv_heads=config.get("num_key_value_heads"),
                head_dim=config.get("head_dim"),
                attention_bias=bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as error:
            raise ModelSpecError(f"{name}: {family} config lacks the field {error.args[0]!r}") from None


def pad_vocab(vocab_size: int) -> int:
    """DeepSpeed-Chat resizes embeddings to a multiple of 8 (``resize_token_embeddings``)."""
    return -(-vocab_size // 8) * 8


_OPT_SIZES = {  # name: (hidden, layers, heads, ffn); all have vocab 50272 and 2048 positions
    "opt-125m": (768, 12, 12, 3072),
    "opt-350m": (1024, 24, 16, 4096),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
    "opt-13b": (5120, 40, 40, 20480),
    "opt-30b": (7168, 48, 56, 28672),
    "opt-66b": (9216, 64, 72, 36864),
}
_LLAMA2_SIZES = {  # name: (hidden, layers, heads, kv heads, intermediate); vocab 32000, 4096 positions
    "llama-2-7b": (4096, 32, 32, 32, 11008),
    "llama-2-13b": (5120, 40, 40, 40, 13824),
    "llama-2-70b": (8192, 80, 64, 8, 28672),
}


def _opt(name: str, hidden: int, layers: int, heads: int, ffn: int) -> ModelSpec:
    # OPT-350m alone embeds at 512 and applies its layer norms after each sublayer (no final norm).
    is_350m = name == "opt-350m"
    return ModelSpec(
        name=name, family="opt", hidden_size=hidden, num_layers=layers, num_heads=heads, ffn_dim=ffn,
        vocab_size=50272, max_positions=2048, word_embed_proj_dim=512 if is_350m else None,
        final_layer_norm=not is_350m, attention_bias=True, mlp_bias=True, dropout=0.1,
    )


def _llama2(name: str, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int) -> ModelSpec:
    return ModelSpec(
        name=name, family="llama", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        ffn_dim=ffn, vocab_size=32000, max_positions=4096, tie_embeddings=False,
    )


KNOWN_MODELS: dict[str, ModelSpec] = {
    **{name: _opt(name, *sizes) for name, sizes in _OPT_SIZES.items()},
    **{name: _llama2(name, *sizes) for name, sizes in _LLAMA2_SIZES.items()},
}

_HUB_PREFIXES = ("facebook/", "meta-llama/", "huggingfacetb/")


def _table_key(name: str) -> str:
    """``facebook/opt-1.3b`` and ``meta-llama/Llama-2-7b-hf`` name the same architectures as the table."""
    key = name.strip().lower()
    for prefix in _HUB_PREFIXES:
        key = key.removeprefix(prefix)
    return key.removesuffix("-hf").replace("llama2-", "llama-2-")


def _preset_spec(name: str) -> ModelSpec | None:
    """The project's offline presets, read from the config the preset builder itself uses."""
    from chatrlhf.utils.model.presets import PRESETS, preset_config

    if name not in PRESETS:
        return None
    return ModelSpec.from_hf_config(preset_config(name).to_dict(), name=name)


def family_members(family: Family) -> list[ModelSpec]:
    """Known models of one family, smallest first."""
    return sorted((spec for spec in KNOWN_MODELS.values() if spec.family == family), key=lambda spec: spec.params())


def load_model_spec(name_or_path: str | os.PathLike[str]) -> ModelSpec:
    """A model directory, a ``config.json`` path, or a known name (see ``KNOWN_MODELS``)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelSpecError(
                f"{path.parent} is a directory without config.json; point --model at a model directory"
            )
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelSpecError(f"cannot read {path} as JSON: {error}") from None
        if not isinstance(config, dict):
            raise ModelSpecError(f"{path} does not hold a JSON object; expected a Hugging Face config.json")
        label = path.parent.name if path.name == "config.json" else path.name
        return ModelSpec.from_hf_config(config, name=label or str(path))
    spec = KNOWN_MODELS.get(_table_key(str(name_or_path))) or _preset_spec(str(name_or_path))
    if spec is None:
        raise ModelSpecError(
            f"unknown model {str(name_or_path)!r}: not a model directory or config.json path, nor a known "
            f"architecture; pass a path or one of: {', '.join(KNOWN_MODELS)}"
        )
    return spec


def as_model_spec(model: ModelSpec | Mapping[str, Any] | str | os.PathLike[str]) -> ModelSpec:
    """Accept a spec, a config dict (``model.config.to_dict()``), a name or a path."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return ModelSpec.from_hf_config(model, name=str(model.get("_name_or_path") or model.get("model_type")))
    return load_model_spec(model)
