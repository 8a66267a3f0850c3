"""Architecture sizes for memory estimates, for any Hugging Face causal-LM family.

Parameter and shape counts come from the model itself, built from its config on the meta device (no weights are
allocated and nothing but a config is read), so they hold for every family transformers implements: totals with
tied weights counted once, embeddings, the largest single module (what ZeRO-3 gathers) and one decoder block's
linear layers (what LoRA wraps). Dimensions for the activation formulas and the KV cache come from the config.
OPT and LLaMA-2 sizes are also known by name, offline.
"""
from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

Family = Literal["opt", "llama"]
ModelKind = Literal["lm", "reward"]
"""``lm``: causal LM with its head (SFT model, actor, reference); ``reward``: the backbone plus a scalar ``score``
head (reward model, critic), as chatrlhf's ``AutoModelForSequenceClassification`` with one label builds it."""

FORMULA_FAMILIES: dict[str, Family] = {"opt": "opt", "llama": "llama", "mistral": "llama"}
"""Model types whose activations have hand-written formulas (``activation_memory``); others are traced."""
FFN_FIELDS = ("ffn_dim", "intermediate_size", "n_inner", "ffn_hidden_size")
"""Config fields that hold the MLP width, by family (GPT-2's ``n_inner`` may be None: 4 x hidden)."""
TRACE_HIDDEN = 128
"""Hidden size a model is shrunk to (at most, where its heads allow) for the activation trace."""
TRACE_VOCAB = 256


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
class KindCounts:
    """Parameters of one model kind, shared (tied) ones counted once like DeepSpeed's ``model_to_params``."""

    total: int
    embedding: int
    """``nn.Embedding`` tables (tokens, learned positions) plus an untied LM head."""
    largest_layer: int
    """Most parameters held directly by one module: ZeRO-3 gathers one such module at a time."""


@dataclass(frozen=True)
class ParamCounts:
    """Counted on the model built on the meta device."""

    lm: KindCounts
    reward: KindCounts
    value_head: int
    """The reward model's ``score`` head, ``Linear(lm_head.in_features, 1, bias=False)``."""
    block: int
    """One decoder block's parameters."""
    block_linears: tuple[LinearShape, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What memory depends on: the sizes of one decoder-only transformer and its parameter counts."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    kv_heads: int
    dim_per_head: int
    vocab_size: int
    max_positions: int | None
    """None: the config sets no position limit, so none is checked."""
    counts: ParamCounts
    config_json: str = field(repr=False)
    """The Hugging Face config (vocabulary padded) the counts were taken from, for the activation trace."""
    ffn_dim: int = 0
    """The MLP width (``FFN_FIELDS``); 0 when the config leaves it implicit (GPT-2: 4 x hidden)."""
    dropout: float = 0.0
    """OPT's hidden-state dropout; > 0 keeps a mask per element for backward (the OPT formula counts it)."""

    @property
    def family(self) -> Family | None:
        """The hand-written activation formulas that apply, or None (activations are then traced)."""
        return FORMULA_FAMILIES.get(self.model_type)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_per_head

    @property
    def rms_norm(self) -> bool:
        return self.family == "llama"

    @property
    def block_linears(self) -> tuple[LinearShape, ...]:
        """The linear layers of one decoder block, in module order."""
        return self.counts.block_linears

    @property
    def value_head_params(self) -> int:
        return self.counts.value_head

    def _kind(self, kind: ModelKind) -> KindCounts:
        return self.counts.lm if kind == "lm" else self.counts.reward

    def params(self, kind: ModelKind = "lm") -> int:
        return self._kind(kind).total

    def embedding_params(self, kind: ModelKind = "lm") -> int:
        return self._kind(kind).embedding

    def largest_layer_params(self, kind: ModelKind = "lm") -> int:
        """PEFT's LoRA adapters are modules of their own, so they never make a layer larger."""
        return self._kind(kind).largest_layer

    def lora_params(self, lora_dim: int) -> int:
        """LoRA on every block linear (chatrlhf's ``training/lora.py``, via PEFT, as DeepSpeed-Chat's
        ``convert_linear_layer_to_lora``): ``lora_A`` (in x r) plus ``lora_B`` (r x out)."""
        per_block = sum(lora_dim * (linear.in_features + linear.out_features) for linear in self.block_linears)
        return self.num_layers * per_block

    def largest_lora_module(self, lora_dim: int) -> int:
        return lora_dim * max((max(linear.in_features, linear.out_features) for linear in self.block_linears),
                              default=0)

    def hf_config(self) -> PretrainedConfig:
        return _config_from_dict(json.loads(self.config_json), self.name)

    def trace_width_divisor(self) -> int:
        """How much the activation trace narrows the model: the smallest divisor of the heads and kv heads (and of
        the hidden and FFN widths) that brings the hidden size to ``TRACE_HIDDEN`` or below, else the largest."""
        heads = math.gcd(self.num_heads, self.kv_heads)
        divisors = [k for k in range(1, heads + 1)
                    if heads % k == 0 and self.hidden_size % k == 0 and self.ffn_dim % k == 0]
        small = [k for k in divisors if self.hidden_size // k <= TRACE_HIDDEN]
        return min(small) if small else max(divisors)

    def trace_config(self, num_layers: int, width_divisor: int) -> PretrainedConfig:
        """This architecture with ``num_layers`` blocks, a tiny vocabulary and its hidden size, heads, kv heads and
        FFN width divided by ``width_divisor`` (the head size kept): small enough to run on the CPU in a moment,
        with activations that scale back linearly."""
        config = self.hf_config()
        config.num_hidden_layers = num_layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:num_layers]
        config.vocab_size = TRACE_VOCAB
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, 0)
        config.hidden_size = self.hidden_size // width_divisor
        config.num_attention_heads = self.num_heads // width_divisor
        if getattr(config, "num_key_value_heads", None):
            config.num_key_value_heads = self.kv_heads // width_divisor
        for name in FFN_FIELDS:
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, getattr(config, name) // width_divisor)
        return config

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | PretrainedConfig, name: str = "config.json") -> ModelSpec:
        """Sizes from a Hugging Face config: a ``config.json`` dict, ``to_dict()``, or a ``PretrainedConfig``."""
        data = dict(config) if isinstance(config, Mapping) else config.to_dict()
        return _spec_from_json(json.dumps(data, sort_keys=True, default=str), name)


def _config_from_dict(data: dict[str, Any], name: str) -> PretrainedConfig:
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelSpecError(f"{name}: the config has no model_type; expected a Hugging Face config.json")
    try:
        return AutoConfig.for_model(str(model_type), **data)
    except ValueError as error:
        if "Unrecognized model identifier" in str(error):
            raise ModelSpecError(f"{name}: model_type {model_type!r} is not a transformers model type") from None
        raise ModelSpecError(f"{name}: invalid {model_type} config: {error}") from None


def _unique_params(modules: list[nn.Module]) -> int:
    return sum({id(p): p.numel() for module in modules for p in module.parameters()}.values())


def _largest_layer(model: nn.Module) -> int:
    return max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())


def decoder_blocks(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The model's stack of decoder blocks: its ``nn.ModuleList`` of ``num_layers`` modules."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ModelSpecError(f"{type(model).__name__} has no list of {num_layers} decoder blocks")


def count_params(config: PretrainedConfig, name: str) -> ParamCounts:
    """Build the causal LM on the meta device (no memory, no weights) and count what ZeRO and LoRA size."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as error:
        raise ModelSpecError(f"{name}: transformers builds no causal LM from this {config.model_type} config: "
                             f"{str(error).splitlines()[0]}") from None
    head = model.get_output_embeddings()
    base = model.base_model
    embeddings: list[nn.Module] = [module for module in base.modules() if isinstance(module, nn.Embedding)]
    value_head = head.in_features
    block = decoder_blocks(model, config.num_hidden_layers)[0]
    return ParamCounts(
        lm=KindCounts(total=_unique_params([model]), embedding=_unique_params([*embeddings, head]),
                      largest_layer=_largest_layer(model)),
        reward=KindCounts(total=_unique_params([base]) + value_head, embedding=_unique_params(embeddings),
                          largest_layer=max(_largest_layer(base), value_head)),
        value_head=value_head,
        block=_unique_params([block]),
        block_linears=tuple(
            LinearShape(path, module.in_features, module.out_features, module.bias is not None)
            for path, module in block.named_modules() if isinstance(module, nn.Linear)
        ),
    )


@functools.cache
def _spec_from_json(config_json: str, name: str) -> ModelSpec:
    config = _config_from_dict(json.loads(config_json), name)
    try:
        config.vocab_size = pad_vocab(int(config.vocab_size))
        hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
    except AttributeError as error:
        raise ModelSpecError(f"{name}: {config.model_type} config lacks {error.name or error}") from None
    family = FORMULA_FAMILIES.get(config.model_type)
    ffn = next((value for field_name in FFN_FIELDS
                if isinstance(value := getattr(config, field_name, None), int)), 0)
    max_positions = getattr(config, "max_position_embeddings", None)
    return ModelSpec(
        name=name, model_type=config.model_type, hidden_size=hidden, num_layers=layers, num_heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        dim_per_head=int(getattr(config, "head_dim", None) or hidden // heads), vocab_size=config.vocab_size,
        max_positions=int(max_positions) if max_positions else None, counts=count_params(config, name),
        config_json=config.to_json_string(use_diff=False), ffn_dim=ffn,
        dropout=float(getattr(config, "dropout", 0.0) or 0.0) if family == "opt" else 0.0,
    )


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


def _known_config(name: str) -> dict[str, Any]:
    """The published configs' sizes, so the known models need no download."""
    if name in _OPT_SIZES:
        hidden, layers, heads, ffn = _OPT_SIZES[name]
        # OPT-350m alone embeds at 512 and applies its layer norms after each sublayer (no final norm).
        is_350m = name == "opt-350m"
        return {"model_type": "opt", "hidden_size": hidden, "num_hidden_layers": layers,
                "num_attention_heads": heads, "ffn_dim": ffn, "vocab_size": 50272, "max_position_embeddings": 2048,
                "word_embed_proj_dim": 512 if is_350m else hidden, "do_layer_norm_before": not is_350m,
                "dropout": 0.1}
    hidden, layers, heads, kv_heads, ffn = _LLAMA2_SIZES[name]
    return {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "intermediate_size": ffn, "vocab_size": 32000,
            "max_position_embeddings": 4096, "tie_word_embeddings": False}


class _KnownModels(Mapping[str, ModelSpec]):
    """Known models by name, each counted on first use (that needs torch, which ``--help`` should not import)."""

    def __getitem__(self, name: str) -> ModelSpec:
        if name not in self:
            raise KeyError(name)
        return ModelSpec.from_hf_config(_known_config(name), name=name)

    def __contains__(self, name: object) -> bool:
        return name in _OPT_SIZES or name in _LLAMA2_SIZES

    def __iter__(self) -> Iterator[str]:
        return iter((*_OPT_SIZES, *_LLAMA2_SIZES))

    def __len__(self) -> int:
        return len(_OPT_SIZES) + len(_LLAMA2_SIZES)


KNOWN_MODELS: Mapping[str, ModelSpec] = _KnownModels()

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
    return ModelSpec.from_hf_config(preset_config(name), name=name)


def family_members(family: str) -> list[ModelSpec]:
    """Known models of one family (``ModelSpec.family``, else its model type), smallest first."""
    names = [name for name in KNOWN_MODELS if FORMULA_FAMILIES[_known_config(name)["model_type"]] == family]
    return sorted((KNOWN_MODELS[name] for name in names), key=lambda spec: spec.params())


def _hub_spec(name: str) -> ModelSpec:
    """A Hugging Face hub model: only its config is read (``HF_HUB_OFFLINE=1`` keeps this to the local cache)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ModelSpecError(
            f"unknown model {name!r}: not a model directory or config.json path, a known architecture "
            f"({', '.join(KNOWN_MODELS)}), nor a hub model whose config could be read "
            f"({str(error).splitlines()[0]})"
        ) from None
    return ModelSpec.from_hf_config(config, name=name)


def load_model_spec(name_or_path: str | os.PathLike[str]) -> ModelSpec:
    """A model directory, a ``config.json`` path, a known name (see ``KNOWN_MODELS``) or a hub name."""
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
    key = _table_key(str(name_or_path))
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    return _preset_spec(str(name_or_path)) or _hub_spec(str(name_or_path))


def as_model_spec(model: ModelSpec | Mapping[str, Any] | str | os.PathLike[str]) -> ModelSpec:
    """Accept a spec, a config dict (``model.config.to_dict()``), a name or a path."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return ModelSpec.from_hf_config(model, name=str(model.get("_name_or_path") or model.get("model_type")))
    return load_model_spec(model)
