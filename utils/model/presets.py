"""Named models that work offline: two tiny random-init models for fast runs and SmolLM2-135M from its GGUF.

Each preset is materialised once as an ordinary Hugging Face directory in a cache, so every step (and every
process) loads it with ``from_pretrained`` like any other model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, OPTConfig, PretrainedConfig

from chatrlhf.utils.model.node_save import save_on_this_rank
from chatrlhf.utils.model.smollm2 import convert_smollm2
from chatrlhf.utils.model.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer

logger = logging.getLogger(__name__)

TINY_PRESETS = ("tiny-opt", "tiny-llama")
SMOLLM2_PRESET = "smollm2-135m"
PRESETS = (*TINY_PRESETS, SMOLLM2_PRESET)
# Bump whenever a builder's output changes, so stale cache entries are not reused.
BUILDER_VERSION = 4
INIT_SEED = 1234
TINY_POSITIONS = 1024
METADATA_FILE = "chatrlhf_preset.json"


def is_preset(name_or_path: str) -> bool:
    return name_or_path in PRESETS


def preset_config(name: str, *, vocab_size: int | None = None) -> PretrainedConfig:
    """Architecture of a preset without building it (the memory estimator reads sizes from here).

    ``vocab_size`` overrides the tiny presets' nominal 2048 when the trained tokenizer came out smaller.
    """
    vocab = vocab_size or DEFAULT_VOCAB_SIZE
    # Ids match the trained tokenizer: <pad> 0, </s> 1, <s> 2.
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if name == "tiny-opt":
        return OPTConfig(
            vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
            word_embed_proj_dim=256, max_position_embeddings=TINY_POSITIONS, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, layerdrop=0.0, tie_word_embeddings=True, **ids,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=TINY_POSITIONS, attention_dropout=0.0,
            tie_word_embeddings=True, **ids,
        )
    if name == SMOLLM2_PRESET:
        return LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )
    raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")


def default_cache_root() -> Path:
    return Path(os.environ.get("CHATRLHF_CACHE") or Path.home() / ".cache" / "chatrlhf")


def preset_cache_dir(name: str, corpus_key: str = "", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a preset lives: one directory per (preset, corpus, builder version)."""
    key_source = json.dumps([name, corpus_key if name in TINY_PRESETS else "", BUILDER_VERSION])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"{name}-{key}"


def resolve_model_path(
    name_or_path: str,
    *,
    corpus: Callable[[], Iterable[str]] | None = None,
    corpus_key: str = "",
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Map a preset name to its cached directory (building it on first use); return anything else unchanged.

    ``corpus`` is only called when a tiny preset is built: it yields the texts its tokenizer is trained on.
    ``corpus_key`` names that data, so steps run on the same data share one tokenizer and model init.
    """
    if not is_preset(name_or_path):
        return name_or_path
    target = preset_cache_dir(name_or_path, corpus_key, cache_dir)
    if target.is_dir():
        return str(target)
    if name_or_path in TINY_PRESETS:
        if corpus is None:
            raise ValueError(
                f"preset {name_or_path!r} trains its tokenizer on the run's data, but no corpus was given; "
                "pass corpus= (a callable returning texts) or use a pretrained model path"
            )
        _publish(target, lambda out: _build_tiny(name_or_path, corpus(), out), name_or_path, corpus_key)
    else:
        _publish(target, convert_smollm2, name_or_path, "")
    return str(target)


def _build_tiny(name: str, texts: Iterable[str], out: Path) -> None:
    """Tokenizer trained on the run's texts, then a seeded random-init model sized to that tokenizer."""
    tokenizer = train_tokenizer(texts, out, model_max_length=TINY_POSITIONS, split_letters=True)
    vocab_size = -(-len(tokenizer) // 8) * 8
    config = preset_config(name, vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    save_on_this_rank(model, out)


def _publish(target: Path, build: Callable[[Path], None], name: str, corpus_key: str) -> None:
    """Build into a temporary sibling and rename it into place, so readers never see a half-written model.

    When two processes race, the second rename fails on the now non-empty target and that process simply
    discards its copy and uses the winner's.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        logger.info("building preset %s in %s", name, target)
        build(staging)
        metadata = {"preset": name, "corpus_key": corpus_key, "builder_version": BUILDER_VERSION, "seed": INIT_SEED}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        staging.chmod(0o755)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("preset %s was built concurrently by another process; using %s", name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
