"""Train the small byte-level BPE tokenizer the tiny presets use, so they need nothing from the hub."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
BOS_TOKEN = "<s>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: pad 0, eos 1, bos 2, unk 3 (the tiny model configs rely on these).
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)
DEFAULT_VOCAB_SIZE = 2048


def build_bpe_tokenizer(
    texts: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE, split_letters: bool = False
) -> Tokenizer:
    """Train a byte-level BPE whose pre-tokenizer splits every digit apart so arithmetic stays learnable.

    ``split_letters`` isolates letters too, so words are spelled out letter by letter: a model of a few
    million parameters can then learn spelling tasks (reversing, capitals, counting letters) as rules
    instead of memorising the spelling of every merged piece. Merges still form over the rest (spaces,
    line breaks, punctuation). No post-processor is set: encoding adds no BOS/EOS, so prompt and
    response token counts add up.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    splits = [pre_tokenizers.Digits(individual_digits=True)]
    if split_letters:
        splits.append(pre_tokenizers.Split(Regex("[A-Za-z]"), behavior="isolated"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False)])
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
    model_max_length: int = 1024, split_letters: bool = False,
) -> PreTrainedTokenizerFast:
    """Train on ``texts`` and wrap the result for transformers; save it to ``out_dir`` when given."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_bpe_tokenizer(texts, vocab_size=vocab_size, split_letters=split_letters),
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
