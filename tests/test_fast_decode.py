"""The flat decode step and reusable packed weights give the Hugging Face forward's numbers."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from chatrlhf.step3_rlhf.rollout import _model_step
from chatrlhf.utils.model.fast_decode import fast_decoder
from chatrlhf.utils.model.kv_cache import preallocated_cache
from chatrlhf.utils.model.lm_forward import position_ids_from_mask
from chatrlhf.utils.model.packed_linear import PackedWeights, packed_linears, packing_supported

pytestmark = pytest.mark.skipif(not packing_supported(torch.nn.Linear(2, 2)), reason="this PyTorch has no oneDNN")


def opt(**overrides) -> OPTForCausalLM:
    config = dict(vocab_size=300, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, word_embed_proj_dim=32)
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(**(config | overrides))).eval()


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_scaling={"rope_type": "linear", "factor": 2.0})
    return LlamaForCausalLM(config).eval()


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
                       past_key_values=cache, use_cache=True).logits[:, -1]
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
    torch.testing.assert_close(decode_logits(model, step), decode_logits(model, _model_step(model)),
                               rtol=1e-4, atol=1e-5)


def test_fast_decoder_declines_what_it_does_not_know():
    assert fast_decoder(opt().train()) is None
    assert fast_decoder(opt(do_layer_norm_before=False)) is None
    assert fast_decoder(opt().to(torch.float64)) is None
    assert fast_decoder(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).eval()) is None
    lora = opt()
    lora.model.decoder.layers[0].fc1 = torch.nn.Sequential(lora.model.decoder.layers[0].fc1)
    assert fast_decoder(lora) is None


def test_packed_weights_are_reused_until_the_block_ends():
    model = opt()
    ids = torch.randint(2, 300, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        weights = PackedWeights(model)
        for _ in range(2):
            with packed_linears(model, weights=weights):
                torch.testing.assert_close(model(input_ids=ids).logits, plain, rtol=1e-4, atol=1e-5)
    assert not any("forward" in vars(m) for m in model.modules())
