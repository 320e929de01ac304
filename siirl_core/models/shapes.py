"""Model shapes of real families, as their published `config.json` on the Hugging Face
hub gives them (base models): hidden size, layers, heads, KV heads, vocabulary, tied
embeddings, RoPE settings, context length. `model.size` picks one; the factory makes a
randomly initialised model of that exact shape with a BPE tokenizer trained on the
task's text, so loading, chat prompts, vLLM and export run as they will on a
downloaded checkpoint of the family."""
from __future__ import annotations

# (architecture, config fields). head_dim is hidden_size / heads in all of them.
REAL_SHAPES: dict[str, tuple[str, dict]] = {
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": ("llama", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        max_position_embeddings=8192, rms_norm_eps=1e-5, hidden_act="silu")),
    # Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": ("qwen2", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
        sliding_window=32768, max_window_layers=24)),
    # Qwen/Qwen2.5-1.5B
    "qwen2.5-1.5b": ("qwen2", dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
        max_position_embeddings=131072, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
        max_window_layers=28)),
    # Qwen/Qwen2.5-3B
    "qwen2.5-3b": ("qwen2", dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
        sliding_window=32768, max_window_layers=36)),
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": ("llama", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False,
        mlp_bias=False)),
}


def parameter_count(shape: str) -> int:
    """Parameters of a real shape, from its dimensions (tied embeddings counted once)."""
    _, c = REAL_SHAPES[shape]
    h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    head_dim = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    attention = h * q + 2 * h * kv + q * h
    if REAL_SHAPES[shape][0] == "qwen2":  # Qwen2 has biases on q, k and v
        attention += q + 2 * kv
    per_layer = attention + 3 * h * c["intermediate_size"] + 2 * h  # MLP and two RMSNorms
    return vocab * h * (1 if c["tie_word_embeddings"] else 2) + layers * per_layer + h
