"""Tiny-model factory: writes an HF-format directory (config, safetensors weights,
tokenizer) that both transformers and vLLM load. Sizes are named so configs and
benchmarks can refer to them."""
from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from siirl_core.models.tokenizer import build_char_tokenizer

# hidden, layers, heads, intermediate. Head dims are 32 or 64, which vLLM's CPU
# attention supports.
SIZES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384),
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024),
    "medium": dict(hidden_size=640, num_hidden_layers=10, num_attention_heads=10, intermediate_size=2048),
}
ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
MAX_POSITIONS = 128


def make_model_config(size: str, architecture: str, vocab_size: int, tokenizer):
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    dims = SIZES[size]
    return ARCHITECTURES[architecture](
        vocab_size=vocab_size,
        num_key_value_heads=dims["num_attention_heads"],
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **dims,
    )


def create_tiny_model(out_dir: str, alphabet: str, size: str = "tiny", architecture: str = "llama",
                      seed: int = 0) -> str:
    """Write a randomly initialised model of the named size to out_dir."""
    tokenizer = build_char_tokenizer(alphabet)
    config = make_model_config(size, architecture, len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
