"""``--packing`` in steps 1 and 2: the packed forward gives the padded forward's numbers (losses, gradients,
scores, log-probs), a forward that would leak across rows is refused in favour of the padded one, and a packed
run trains exactly as the unpacked run does."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

from chatrlhf.training import packing
from chatrlhf.utils.model import packing as plain
from chatrlhf.utils.model.cpu_fast import packed_rows
from chatrlhf.utils.model.lm_forward import answer_logprobs, causal_lm_loss
from chatrlhf.utils.model.loading import ModelOptions, load_causal_lm, load_tokenizer
from chatrlhf.utils.model.presets import resolve_model_path

FORWARDS = {"cpu rows": packed_rows.span_packed_hidden, "transformers": plain.packed_hidden}


@pytest.fixture(scope="module")
def llama(cache_root):
    path = resolve_model_path("tiny-llama", corpus=lambda: ["one two three four five six"] * 40,
                              cache_dir=cache_root / "presets")
    return load_causal_lm(path, load_tokenizer(path, ModelOptions()), ModelOptions())


def uneven_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


@pytest.mark.parametrize("forward", FORWARDS, ids=list(FORWARDS))
def test_packed_loss_and_gradients_equal_the_padded_ones(llama, forward):
    ids, mask, labels = uneven_batch()
    llama.zero_grad()
    padded, count = causal_lm_loss(llama, ids, mask, labels)
    padded.backward()
    want = {n: p.grad.clone() for n, p in llama.named_parameters()}
    llama.zero_grad()
    packed, packed_count = causal_lm_loss(llama, ids, mask, labels, hidden_states=FORWARDS[forward])
    packed.backward()
    assert packed_count == count == int(mask[:, 1:].sum())
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    for name, param in llama.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("forward", FORWARDS, ids=list(FORWARDS))
def test_packed_answer_logprobs_equal_the_padded_ones(llama, forward):
    ids, mask, _ = uneven_batch()
    prompt_len = torch.tensor([3, 2, 1])
    with torch.no_grad():
        want = answer_logprobs(llama, ids, mask, prompt_len)
        got = answer_logprobs(llama, ids, mask, prompt_len, hidden_states=FORWARDS[forward])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], want[1])


def test_the_cpu_row_attention_is_chosen_and_a_leaking_forward_is_refused(llama, monkeypatch, capsys):
    assert packing.choose_packed_forward([llama], False) is packing.PADDED
    chosen = packing.choose_packed_forward([llama], True)
    assert chosen.hidden_states is packed_rows.span_packed_hidden and "row by row" in capsys.readouterr().out

    def one_long_sequence(model, input_ids, attention_mask):
        """Rows end to end but positions running on: every row attends to the rows before it."""
        rows = plain.pack_rows(input_ids, attention_mask)
        positions = torch.arange(rows.input_ids.shape[1]).unsqueeze(0)
        hidden = plain.backbone_of(model)(input_ids=rows.input_ids, position_ids=positions, use_cache=False)[0]
        return plain.unpack(hidden, attention_mask)

    monkeypatch.setattr(packing.packed_rows, "packing_supported", lambda model: False)
    monkeypatch.setattr(packing, "packed_hidden", one_long_sequence)
    assert packing.choose_packed_forward([llama], True) is packing.PADDED
    assert "training on padded batches instead" in capsys.readouterr().out


def test_reward_scores_are_the_same_packed(sft_model):
    from chatrlhf.step2_reward.reward_task import pair_forward
    from chatrlhf.utils.model.reward_model import load_reward_model

    tokenizer = load_tokenizer(sft_model, ModelOptions())
    model = load_reward_model(sft_model, tokenizer, ModelOptions())
    ids, mask, _ = uneven_batch()
    batch = {"input_ids": torch.cat([ids, ids.flip(1)])[:4], "attention_mask": torch.cat([mask, mask])[:4]}
    with torch.no_grad():
        want = pair_forward(model, batch)
        got = pair_forward(model, batch, hidden_states=packed_rows.span_packed_hidden)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


def _losses(out) -> list[float]:
    metrics = json.loads((out / "metrics.json").read_text())
    return [row["loss"] for row in metrics["history"]], metrics


@pytest.mark.parametrize("step", ["sft", "dpo", "kto"])
def test_a_packed_run_trains_as_the_unpacked_one(step, tmp_path, data_cache, sft_model):
    """Same batches, same loss at every step (to rounding), and the run records the packed forward."""
    if step == "sft":
        from chatrlhf.step1_sft.main import main
        flags = ["--max_seq_len", "96"]
    else:
        main = importlib.import_module(f"chatrlhf.step2_{step}.main").main
        flags = ["--model_name_or_path", sft_model, "--max_seq_len", "128"]
    common = [*flags, "--max_steps", "4", "--per_device_train_batch_size", "4", "--data_output_path", data_cache,
              "--eval_iters", "1", "--log_interval", "1"]
    assert main(["--output_dir", str(tmp_path / "padded"), *common]) == 0
    assert main(["--output_dir", str(tmp_path / "packed"), *common, "--packing"]) == 0
    padded, _ = _losses(tmp_path / "padded")
    packed, metrics = _losses(tmp_path / "packed")
    assert len(packed) == len(padded) == 4
    assert packed == pytest.approx(padded, rel=1e-4)
    assert metrics.get("forward", "").startswith("packed rows")
