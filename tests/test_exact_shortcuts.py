"""Speed shortcuts that must not change a number: flat decode steps, oneDNN products, a trimmed last layer."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    OPTConfig,
    OPTForCausalLM,
    OPTForSequenceClassification,
)

from chatrlhf.utils.model.cpu_fast.fast_decode import fast_decoder
from chatrlhf.utils.model.cpu_fast.kv_cache import preallocated_cache
from chatrlhf.utils.model.cpu_fast.last_layer import outputs_from
from chatrlhf.utils.model.cpu_fast.packed_linear import onednn_linears, packed_linears, packing_supported
from chatrlhf.utils.model.decoding import cache_kwargs, model_step
from chatrlhf.utils.model.lm_forward import position_ids_from_mask

pytestmark = pytest.mark.skipif(not packing_supported(torch.nn.Linear(2, 2)), reason="this PyTorch has no oneDNN")


def opt(cls=OPTForCausalLM, **overrides):
    config = dict(vocab_size=300, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, pad_token_id=0)
    torch.manual_seed(0)
    return cls(OPTConfig(**(config | overrides))).eval()


def llama(cls=LlamaForCausalLM, **overrides):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         rope_scaling={"rope_type": "linear", "factor": 2.0}, **overrides)
    return cls(config).eval()


def decode_logits(model, step, steps: int = 5) -> torch.Tensor:
    """Logits of ``steps`` greedy decode steps after a left-padded prefill of three prompts."""
    torch.manual_seed(1)
    ids = torch.randint(2, 300, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, :1] = 0
    full = torch.cat([mask, torch.ones(3, steps, dtype=mask.dtype)], dim=1)
    cache = preallocated_cache(7 + steps)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=True, **cache_kwargs(model, cache)).logits[:, -1]
        position, seen = mask.sum(1, keepdim=True), []
        for index in range(steps):
            logits = step(logits.argmax(-1), position, full[:, : 8 + index], cache)
            position = position + 1
            seen.append(logits)
    return torch.stack(seen)


@pytest.mark.parametrize("build", [opt, llama], ids=["opt-projected", "llama-gqa-scaled-rope"])
def test_fast_decoder_gives_the_models_own_logits(build):
    model = build()
    step = fast_decoder(model)
    assert step is not None
    torch.testing.assert_close(decode_logits(model, step), decode_logits(model, model_step(model)),
                               rtol=1e-4, atol=1e-5)


def test_fast_decoder_declines_what_it_does_not_know():
    assert fast_decoder(opt().train()) is None
    assert fast_decoder(opt(do_layer_norm_before=False)) is None
    assert fast_decoder(opt().to(torch.float64)) is None
    assert fast_decoder(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).eval()) is None
    lora = opt()
    lora.model.decoder.layers[0].fc1 = torch.nn.Sequential(lora.model.decoder.layers[0].fc1)
    assert fast_decoder(lora) is None


def test_onednn_linears_keep_gradients_and_follow_weight_updates():
    model = opt().train()
    ids = torch.randint(2, 300, (2, 9))
    runs = []
    for fast in (False, True):
        model.zero_grad()
        with onednn_linears(model) if fast else torch.enable_grad():
            model(input_ids=ids).logits.square().mean().backward()
        runs.append([p.grad.clone() for p in model.parameters()])
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with onednn_linears(model):
        before = model(input_ids=ids).logits.detach()
        optimizer.step()
        after = model(input_ids=ids).logits.detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, model(input_ids=ids).logits.detach(), rtol=1e-4, atol=1e-5)
    with onednn_linears(model):
        outer = vars(model.lm_head)["forward"]
        with packed_linears(model):
            assert vars(model.lm_head)["forward"] is not outer
        assert vars(model.lm_head)["forward"] is outer
    assert not any("forward" in vars(m) for m in model.modules())


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    ids = torch.randint(2, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, 10:] = 0
    return ids, mask


@pytest.mark.parametrize("build", [opt, llama, lambda: opt(OPTForSequenceClassification, num_labels=1),
                                   lambda: llama(LlamaForSequenceClassification)],
                         ids=["opt", "llama", "opt-score", "llama-score"])
def test_trimmed_last_layer_gives_the_same_outputs_and_gradients(build):
    model = build().train()
    ids, mask = padded_batch()
    first = 5
    layers = model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.decoder.layers
    runs = []
    for trim in (False, True):
        model.zero_grad()
        with outputs_from(model, first if trim else 0):
            assert type(layers[-1]).__name__.endswith("Tail") == trim
            hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                      use_cache=False)[0]
        tail = hidden[:, first:]
        tail.square().mean().backward()
        runs.append((tail.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (plain, plain_grads), (trimmed, trimmed_grads) = runs
    torch.testing.assert_close(trimmed, plain, rtol=1e-4, atol=1e-5)
    assert len(trimmed_grads) == len(plain_grads)
    for got, want in zip(trimmed_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    assert type(layers[-1]).__name__.endswith("DecoderLayer")


def test_trimmed_last_layer_stands_aside_where_it_cannot_be_exact():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with outputs_from(gpt2, 3):
        assert type(gpt2.transformer.h[-1]).__name__ == "GPT2Block"
    dropping = opt(dropout=0.1).train()
    with outputs_from(dropping, 3):
        assert type(dropping.model.decoder.layers[-1]).__name__ == "OPTDecoderLayer"
    model = opt()
    cache = preallocated_cache(8)
    model(input_ids=torch.ones(1, 4, dtype=torch.long), use_cache=True, **cache_kwargs(model, cache))
    with outputs_from(model, 3), pytest.raises(RuntimeError, match="prefills of an empty cache"):
        model(input_ids=torch.ones(1, 1, dtype=torch.long), use_cache=True, **cache_kwargs(model, cache))


@pytest.mark.parametrize("build", [opt, llama], ids=["opt", "llama"])
def test_trimmed_last_layer_prefills_a_cache_exactly(build):
    """A prompt pass into an empty cache: the same last-position logits and the same keys and values."""
    model = build()
    ids, mask = padded_batch()
    ids, mask = ids[:, :10], mask[:, :10]
    runs = []
    for first in (0, ids.shape[1] - 1):
        cache = preallocated_cache(16)
        with torch.no_grad(), outputs_from(model, first):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                           use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)).logits
        runs.append((logits, [(layer.keys, layer.values) for layer in cache.layers]))
    (plain, plain_kv), (trimmed, trimmed_kv) = runs
    torch.testing.assert_close(trimmed, plain, rtol=1e-4, atol=1e-5)
    for (keys, values), (want_keys, want_values) in zip(trimmed_kv, plain_kv, strict=True):
        torch.testing.assert_close(keys, want_keys)
        torch.testing.assert_close(values, want_values)


@pytest.mark.parametrize("build", [opt, llama], ids=["opt", "llama"])
def test_length_grouped_prefill_equals_one_padded_pass(build):
    """Prompts of 3 to 40 tokens prefill in length groups; logits, cache and greedy rollout match one padded pass."""
    from chatrlhf.step3_rlhf.config import GenerationConfig
    from chatrlhf.step3_rlhf.forward_backend import CpuFastForward, PlainForward
    from chatrlhf.step3_rlhf.length_groups import plan_groups
    from chatrlhf.step3_rlhf.rollout import plain_prefill

    model = build()
    torch.manual_seed(3)
    lengths = [3, 40, 5, 38]
    ids = torch.randint(2, 300, (4, 40))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, 40 - length :] = 1
    ids = ids.masked_fill(mask == 0, 0)
    assert len(plan_groups(mask, 39)) == 2
    with torch.no_grad():
        (grouped_logits, grouped_cache), (padded_logits, padded_cache) = (
            prefill(model, ids, mask, 48) for prefill in (CpuFastForward.prefill, plain_prefill))
    torch.testing.assert_close(grouped_logits, padded_logits, rtol=1e-4, atol=1e-5)
    real = mask.bool()
    for got, want in zip(grouped_cache.layers, padded_cache.layers, strict=True):
        for got_part, want_part in ((got.keys, want.keys), (got.values, want.values)):
            # The fast cache is preallocated to 48 positions, transformers' own holds the 40 written.
            torch.testing.assert_close(got_part[:, :, :40].transpose(1, 2)[real],
                                       want_part[:, :, :40].transpose(1, 2)[real], rtol=1e-4, atol=1e-5)
    cfg = GenerationConfig(max_answer_seq_len=8, min_answer_seq_len=8, temperature=0.0)
    grouped, padded = (backend.sample(model, ids, mask, cfg, eos_id=1, pad_id=0)
                       for backend in (CpuFastForward(), PlainForward()))
    assert torch.equal(grouped.sequences, padded.sequences)


def rollout_batch() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prompts of 2-9 tokens left-padded to 9, answers of 1-6 tokens right-padded after their end."""
    torch.manual_seed(4)
    width, prompts, answers = 9, [9, 2, 5, 7], [6, 1, 4, 6]
    ids = torch.randint(2, 300, (4, width + max(answers)))
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        mask[row, width - prompt : width + answer] = 1
    return ids.masked_fill(mask == 0, 0), mask, width


@pytest.mark.parametrize("build", [opt, llama, lambda: opt(do_layer_norm_before=False),
                                   lambda: llama(LlamaForSequenceClassification)],
                         ids=["opt", "llama-gqa", "opt-post-norm-untrimmed", "llama-score"])
def test_packed_rows_give_each_rows_padded_outputs_and_gradients(build):
    """Rows packed end to end: the padded batch's hidden states at every answer position, and its gradients."""
    from chatrlhf.step3_rlhf.packed_answers import PackedAnswers
    from chatrlhf.utils.model.cpu_fast.packed_rows import packed_hidden, packing_supported

    model = build().train()
    assert packing_supported(model)
    ids, mask, width = rollout_batch()
    packed = PackedAnswers.of(ids, mask, width)
    assert [end - start for start, end in packed.rows.spans] == mask.sum(1).tolist()
    runs = []
    for pack in (False, True):
        model.zero_grad()
        if pack:
            hidden = packed_hidden(model, packed.rows, packed.answer_ranges)
        else:
            hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                      use_cache=False)[0][:, width - 1 : -1][mask[:, width:].bool()]
        hidden.square().mean().backward()
        runs.append((hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (padded, padded_grads), (got, got_grads) = runs
    assert got.shape == (int(mask[:, width:].sum()), padded.shape[-1])
    torch.testing.assert_close(got, padded, rtol=1e-4, atol=1e-5)
    assert len(got_grads) == len(padded_grads)
    for got_grad, want in zip(got_grads, padded_grads):
        torch.testing.assert_close(got_grad, want, rtol=1e-3, atol=1e-5)
    assert model.config._attn_implementation != "chatrlhf_packed_rows"


def test_packed_answers_give_what_length_groups_give():
    """Log-probs, entropy and reward scores from packed rows equal those of the length-grouped padded passes."""
    from chatrlhf.step3_rlhf.length_groups import grouped
    from chatrlhf.step3_rlhf.packed_answers import PackedAnswers
    from chatrlhf.utils.model.lm_forward import answer_logits, token_logprobs_and_entropy
    from chatrlhf.utils.model.reward_model import score_head, sequence_scores, token_values

    actor, reward = llama(), llama(LlamaForSequenceClassification, num_labels=1)
    ids, mask, width = rollout_batch()
    packed = PackedAnswers.of(ids, mask, width)
    with torch.no_grad():
        got = packed.answer_outputs(actor, lambda hidden, labels: token_logprobs_and_entropy(actor.lm_head(hidden),
                                                                                              labels))
        want = grouped(lambda i, m, s: token_logprobs_and_entropy(answer_logits(actor, i, m, s), i[:, s:]),
                       ids, mask, width)
        scores = score_head(reward)(packed.final_hidden(reward)).squeeze(-1)
        want_scores = sequence_scores(token_values(reward, ids, mask), mask)
    answer_mask = mask[:, width:].bool()
    for got_part, want_part in zip(got, want, strict=True):
        assert got_part.shape == answer_mask.shape
        torch.testing.assert_close(got_part[answer_mask], want_part[answer_mask], rtol=1e-4, atol=1e-5)
        assert not got_part[~answer_mask].any()
    torch.testing.assert_close(scores, want_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_cpu_fast_backend_equals_plain(family):
    """Step 3's two forward backends give the same log-probs, entropies, values, scores and actor gradients."""
    from chatrlhf.step3_rlhf.forward_backend import CpuFastForward, PlainForward
    from chatrlhf.step3_rlhf.rollout import Rollout
    from chatrlhf.utils.model.lm_forward import token_logprobs_and_entropy

    build, scorer = (opt, OPTForSequenceClassification) if family == "opt" else (llama, LlamaForSequenceClassification)
    actor, critic = build().train(), build(scorer, num_labels=1)
    actor.config.dropout = 0.0
    ids, mask, width = rollout_batch()
    rollout = Rollout(sequences=ids, attention_mask=mask, answer_mask=mask[:, width:], prompt_width=width)
    answer = mask[:, width:].bool()
    results = []
    for backend in (CpuFastForward(), PlainForward()):
        actor.zero_grad()
        logprobs, entropy = backend.logprobs(actor, rollout, token_logprobs_and_entropy)
        (logprobs * answer).sum().backward()
        with torch.no_grad():
            values, scores = backend.values(critic, rollout), backend.scores(critic, rollout)
        grads = [p.grad.clone() for p in actor.parameters() if p.grad is not None]
        results.append((logprobs.detach()[answer], entropy[answer], values[answer], scores, grads))
    fast, plain = results
    for got, want in zip(fast[:4], plain[:4], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(fast[4]) == len(plain[4]) > 0
    for got, want in zip(fast[4], plain[4], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_packed_attention_needs_the_row_spans():
    from chatrlhf.utils.model.cpu_fast.packed_rows import _span_attention_installed

    model = opt()
    with _span_attention_installed(model.config), pytest.raises(RuntimeError, match="packed_spans"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))
    assert model.config._attn_implementation == "sdpa"
