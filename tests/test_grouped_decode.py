"""siirl's grouped decoder for Llama-family models (rollout/grouped_decode.py) against
transformers' own forward pass: the same logits, the same gradients (through the
deferred weight gradients of rollout/deferred_grads.py), the same samples."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from siirl_core.data.arithmetic import ALPHABET
from siirl_core.models.tokenizer import build_char_tokenizer
from siirl_core.batch import pad_rollout
from siirl_core.rollout.base import SamplingConfig
from siirl_core.rollout.decode import CacheDecoder, decoder_for
from siirl_core.rollout.grouped_decode import GroupedDecoder, grouped_decode_blocker
from siirl_core.rollout.hf_engine import HFRollout
from siirl_core.training.logprobs import response_logits

TOK = build_char_tokenizer(ALPHABET)
PROMPTS = ["1+2=", "34+56=", "7+89=", "5+5="]  # different lengths: left padding matters
COMMON = dict(vocab_size=len(TOK), hidden_size=64, num_hidden_layers=2, intermediate_size=96,
              max_position_embeddings=64, pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id,
              bos_token_id=TOK.bos_token_id)
VARIANTS = {
    "llama": LlamaConfig(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, **COMMON),
    # grouped-query attention (2 query heads per key head) and an LM head tied to the embedding
    "llama-gqa-tied": LlamaConfig(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                  **COMMON),
    "qwen2": Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **COMMON),
}


def _model(name: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(VARIANTS[name], attn_implementation="sdpa")


def _prompts():
    return [TOK(p)["input_ids"] for p in PROMPTS]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_and_gradients_equal_a_plain_forward_pass(name):
    model = _model(name)
    assert grouped_decode_blocker(model) is None
    assert isinstance(decoder_for(model, 4), GroupedDecoder)
    engine = HFRollout(model, pad_id=TOK.pad_token_id, eos_id=TOK.eos_token_id)
    sampling = SamplingConfig(n=4, temperature=0.8, max_new_tokens=7)
    fused = engine.generate(_prompts(), sampling, seed=5, keep_graph=True)
    t = pad_rollout(fused, TOK.pad_token_id)
    model.train()
    fresh = response_logits(model, t.input_ids, t.attention_mask, t.response_len, 0.8)
    kept = fused.train_logits[:, :t.response_len]
    mask = t.response_mask[..., None]
    torch.testing.assert_close(kept * mask, fresh * mask, rtol=0, atol=1e-5)
    weights = torch.randn_like(fresh)  # an arbitrary loss reaching every logit
    params = list(model.parameters())
    g_kept = torch.autograd.grad((kept * mask * weights).sum(), params)
    g_fresh = torch.autograd.grad((fresh * mask * weights).sum(), params)
    assert any(g.abs().sum() > 0 for g in g_kept)
    for (pname, _), a, b in zip(model.named_parameters(), g_kept, g_fresh):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {pname}: {m}")
    # Left padding feeds pad tokens, whose embedding row nn.Embedding never updates (a tied
    # row still gets the LM head's gradient, compared above).
    assert (t.input_ids == TOK.pad_token_id).any()
    embed_grad = g_kept[params.index(model.get_input_embeddings().weight)]
    assert (embed_grad[TOK.pad_token_id].abs().sum() == 0) != VARIANTS[name].tie_word_embeddings


@pytest.mark.parametrize("keep_graph", [False, True])
def test_samples_equal_transformers_cache_decoding(keep_graph):
    model = _model("llama-gqa-tied")
    sampling = SamplingConfig(n=6, max_new_tokens=8)
    grouped = HFRollout(model, pad_id=TOK.pad_token_id, eos_id=TOK.eos_token_id, grouped=True)
    cached = HFRollout(model, pad_id=TOK.pad_token_id, eos_id=TOK.eos_token_id, grouped=False)
    a = grouped.generate(_prompts(), sampling, seed=11, keep_graph=keep_graph)
    b = cached.generate(_prompts(), sampling, seed=11, keep_graph=keep_graph)
    assert a.response_ids == b.response_ids and a.finished == b.finished
    for x, y in zip(a.response_logprobs, b.response_logprobs):
        assert x == pytest.approx(y, abs=1e-5)
    assert isinstance(decoder_for(model, 6, grouped=False), CacheDecoder)


def test_models_outside_the_family_use_transformers_forward():
    mistral = AutoModelForCausalLM.from_config(MistralConfig(num_attention_heads=4, num_key_value_heads=4, **COMMON))
    assert "mistral" in grouped_decode_blocker(mistral)
    assert isinstance(decoder_for(mistral, 2), CacheDecoder)
    sliding = Qwen2Config(num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                          max_window_layers=0, **COMMON)
    assert "sliding" in grouped_decode_blocker(AutoModelForCausalLM.from_config(sliding))
    dropout = AutoModelForCausalLM.from_config(Qwen2Config(num_attention_heads=4, attention_dropout=0.1, **COMMON))
    assert grouped_decode_blocker(dropout.train()) == "attention dropout in training mode"
    assert grouped_decode_blocker(dropout.eval()) is None
    adapted = _model("llama")

    class WithAdapter(torch.nn.Linear):  # e.g. a LoRA layer: its own forward adds to the weight's
        def forward(self, x):
            return super().forward(x) + 1.0

    old = adapted.model.layers[1].mlp.up_proj
    adapted.model.layers[1].mlp.up_proj = WithAdapter(old.in_features, old.out_features, bias=False)
    assert "plain torch.nn.Linear" in grouped_decode_blocker(adapted)


@pytest.mark.parametrize("tokens", [3, 40])  # the broadcast sum while few, a batched product beyond
def test_batched_products_equal_matmul(tokens):
    from siirl_core.rollout.grouped_decode import _batched_products

    q, keys = torch.randn(5, 2, 3, 16), torch.randn(5, 2, tokens, 16)
    torch.testing.assert_close(_batched_products(q, keys.transpose(-1, -2)), q @ keys.transpose(-1, -2))
    probs = torch.rand(5, 2, 3, tokens)
    torch.testing.assert_close(_batched_products(probs, keys), probs @ keys)
