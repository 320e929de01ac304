"""Model factory: writes an HF-format directory (config, safetensors weights, tokenizer)
that both transformers and vLLM load. Toy sizes (`SIZES`) use a character tokenizer over
the task's alphabet; real shapes (models/shapes.py) a BPE tokenizer trained on the
task's text. Sizes are named so configs and benchmarks can refer to them."""
from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from siirl_core.models.bpe import train_bpe_tokenizer
from siirl_core.models.shapes import REAL_SHAPES
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


def make_model_config(size: str, architecture: str, vocab_size: int, tokenizer, init_std: float = 0.02):
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
        initializer_range=init_std,
        **dims,
    )


def create_tiny_model(out_dir: str, alphabet: str, size: str = "tiny", architecture: str = "llama",
                      seed: int = 0, init_std: float = 0.02) -> str:
    """Write a randomly initialised model of the named size to out_dir (weights drawn
    with standard deviation init_std)."""
    tokenizer = build_char_tokenizer(alphabet)
    config = make_model_config(size, architecture, len(tokenizer), tokenizer, init_std)
    return _write_random_model(out_dir, config, tokenizer, seed)


def _write_random_model(out_dir: str, config, tokenizer, seed: int) -> str:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def create_real_shape_model(out_dir: str, shape: str, texts: list[str], seed: int = 0,
                            bpe_vocab_size: int = 1024) -> str:
    """Write a randomly initialised model of a real family's shape (its published
    vocabulary size: the embedding rows beyond the BPE tokenizer's are unused, as in the
    family's own checkpoints) with a BPE tokenizer trained on `texts`."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; expected one of {sorted(REAL_SHAPES)}")
    architecture, fields = REAL_SHAPES[shape]
    tokenizer = train_bpe_tokenizer(texts, bpe_vocab_size)
    config = ARCHITECTURES[architecture](**fields, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         torch_dtype="float32")
    return _write_random_model(out_dir, config, tokenizer, seed)


def task_text(task, prompts: int = 4096) -> list[str]:
    """Text a BPE tokenizer learns from: training prompts with their answers (never the
    held-out set)."""
    per_step = 256
    return [p.prompt + p.answer for step in range(max(1, prompts // per_step))
            for p in task.demonstrations(0, step, per_step)]


def create_model(out_dir: str, task, size: str, architecture: str = "llama", seed: int = 0,
                 bpe_vocab_size: int = 1024) -> str:
    """A toy size over the task's alphabet, or a real shape with a BPE tokenizer trained
    on the task's text."""
    if size in REAL_SHAPES:
        return create_real_shape_model(out_dir, size, task_text(task), seed, bpe_vocab_size)
    return create_tiny_model(out_dir, task.alphabet, size=size, architecture=architecture, seed=seed)


def model_positions(size: str) -> int:
    """Context length (positions) of a model the factory makes."""
    return REAL_SHAPES[size][1]["max_position_embeddings"] if size in REAL_SHAPES else MAX_POSITIONS


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
