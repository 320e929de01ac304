"""Load any HF causal LM and its tokenizer from a local directory."""
from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def check_model_dir(path: str) -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"model path {path!r} is not an HF model directory: expected config.json there")


def load_tokenizer(path: str):
    check_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path)
    # Prompts are left-padded so every response starts at the same column.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
