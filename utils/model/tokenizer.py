"""Train the small byte-level BPE tokenizer the tiny presets use, so they need nothing from the hub."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
BOS_TOKEN = "<s>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: pad 0, eos 1, bos 2, unk 3 (the tiny model configs rely on these).
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)
# Small on purpose: frequent template words merge, content words stay near character level, so a tiny
# model can learn spelling tasks (reverse, capitals, letter counts) instead of memorising subwords.
DEFAULT_VOCAB_SIZE = 400


def build_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE whose pre-tokenizer splits every digit apart so arithmetic stays learnable.

    No post-processor is set: encoding adds no BOS/EOS, so prompt and response token counts add up.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte gets a token even if the corpus lacks it, so any text round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path | None = None, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train on ``texts`` and wrap the result for transformers; save it to ``out_dir`` when given."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_bpe_tokenizer(texts, vocab_size=vocab_size),
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tokenizer_fingerprint(directory: str | Path) -> str:
    """SHA-256 of a saved tokenizer.json: equal fingerprints mean identical vocab and merges."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()
