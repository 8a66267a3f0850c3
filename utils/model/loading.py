"""Load tokenizers and Hugging Face models the way every training step expects them.

The rules follow DeepSpeed-Chat: right padding, a pad token for families that ship without one, an optional
end-of-turn token, a ``--dropout`` override applied to the config, and embeddings padded to a multiple of 8.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

# Families whose tokenizers ship with an unk but no pad: they get a dedicated pad token, as in DeepSpeed-Chat.
LLAMA_LIKE_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral"})
PAD_TOKEN = "<pad>"
EMBEDDING_MULTIPLE = 8


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be used as it is; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelOptions:
    """Model-related flags shared by all steps (``--dropout``, ``--dtype``, ``--add_eot_token``, ...)."""

    dropout: float | None = None
    dtype: torch.dtype = torch.float32
    add_eot_token: bool = False
    eot_token: str = "<|endoftext|>"
    trust_remote_code: bool = False


def model_type_of(path: str, *, trust_remote_code: bool = False) -> str | None:
    """The config's ``model_type``, or None for a tokenizer-only directory."""
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError):
        return None


def load_tokenizer(path: str, options: ModelOptions) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer with a pad token, right padding, and the end-of-turn token if asked for."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    if tokenizer.pad_token is None:
        model_type = model_type_of(path, trust_remote_code=options.trust_remote_code)
        if model_type in LLAMA_LIKE_MODEL_TYPES or tokenizer.eos_token is None:
            # A fresh token keeps padding distinguishable from eos and unk in masks.
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        else:
            tokenizer.pad_token = tokenizer.eos_token
    # Set up after the pad token so that padding keeps the original eos and never masks the end-of-turn token.
    if options.add_eot_token:
        tokenizer.add_special_tokens({"extra_special_tokens": [options.eot_token]}, replace_extra_special_tokens=False)
        tokenizer.eos_token = options.eot_token
    tokenizer.padding_side = "right"
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer at {path} has no end-of-text token, so answers could not end; pass --add_eot_token "
            "(optionally with --eot_token TOKEN) to add one"
        )
    return tokenizer


def is_dropout_field(key: str) -> bool:
    """Config keys holding a dropout probability: ``*dropout*`` (OPT, LLaMA, BERT) and ``*_pdrop`` (GPT-2)."""
    return "dropout" in key or key.endswith("_pdrop")


def configure_dropout(config: PretrainedConfig, dropout: float | None) -> list[str]:
    """Set every numeric dropout field of ``config`` to ``dropout``; None leaves the model's own values."""
    if dropout is None:
        return []
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {dropout}")
    changed = []
    for key, value in config.to_dict().items():
        if is_dropout_field(key) and isinstance(value, int | float) and not isinstance(value, bool):
            setattr(config, key, dropout)
            changed.append(key)
    if changed:
        logger.info("set %s to %s", ", ".join(changed), dropout)
    return changed


def load_config(path: str, options: ModelOptions) -> PretrainedConfig:
    config = AutoConfig.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    configure_dropout(config, options.dropout)
    return config


def padded_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Round the tokenizer length up to a multiple of 8, which keeps embedding matmuls tensor-core friendly."""
    return EMBEDDING_MULTIPLE * math.ceil(len(tokenizer) / EMBEDDING_MULTIPLE)


def load_hf_model(
    model_class: type, path: str, tokenizer: PreTrainedTokenizerBase, options: ModelOptions, **config_overrides
) -> PreTrainedModel:
    """Load ``model_class`` (an ``AutoModel*``) from a name or directory and fit it to ``tokenizer``.

    Shared by the causal LM and the reward/critic model; ``config_overrides`` (e.g. ``num_labels=1``) are set
    on the config before loading.
    """
    config = load_config(path, options)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    kwargs = {"config": config, "dtype": options.dtype, "trust_remote_code": options.trust_remote_code}
    try:
        model = model_class.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except ValueError as error:
        if "attn_implementation" not in str(error):
            raise
        logger.info("%s does not support SDPA attention; using its default", path)
        model = model_class.from_pretrained(path, **kwargs)
    model.resize_token_embeddings(padded_vocab_size(tokenizer))
    model.config.end_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    _configure_generation(model, tokenizer)
    return model


def load_causal_lm(path: str, tokenizer: PreTrainedTokenizerBase, options: ModelOptions) -> PreTrainedModel:
    """Any Hugging Face causal LM, with the ``--dropout`` override, padded embeddings and pad/end ids set."""
    return load_hf_model(AutoModelForCausalLM, path, tokenizer, options)


def _configure_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with the tokenizer's pad and stop at its eos, and still at the model's own eos when they differ."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None:
        return
    previous = generation_config.eos_token_id
    previous_ids = previous if isinstance(previous, list) else [previous]
    eos_ids = list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *previous_ids] if i is not None))
    generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation_config.pad_token_id = tokenizer.pad_token_id
