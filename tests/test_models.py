import pytest
import torch

from siirl_core.data.arithmetic import ALPHABET
from siirl_core.models import count_parameters, create_tiny_model, load_causal_lm, load_tokenizer


@pytest.mark.parametrize("size, low, high", [("tiny", 0.3e6, 0.7e6), ("small", 8e6, 12e6)])
def test_named_sizes(tmp_path, size, low, high):
    path = create_tiny_model(str(tmp_path / size), ALPHABET, size=size)
    assert low < count_parameters(load_causal_lm(path)) < high


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_architectures_load_in_transformers(tmp_path, arch):
    path = create_tiny_model(str(tmp_path / arch), ALPHABET, size="tiny", architecture=arch)
    model = load_causal_lm(path)
    assert model.config.model_type == arch
    ids = torch.tensor([[1, 5, 6]])
    assert model(input_ids=ids).logits.shape == (1, 3, model.config.vocab_size)


def test_char_tokenizer_round_trip(tiny_model):
    tok = load_tokenizer(tiny_model)
    ids = tok("12+35=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7  # BOS + one token per character
    assert tok.decode(ids, skip_special_tokens=True) == "12+35="
    padded = tok(["1+2=", "12+35="], padding=True)
    assert padded["input_ids"][0][:2] == [tok.pad_token_id] * 2  # left padding


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected config.json"):
        load_causal_lm(str(tmp_path / "nothing"))
