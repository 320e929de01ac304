"""Models of real families' shapes with a BPE tokenizer trained on the task's text: the
shapes give the published parameter counts, the tokenizer is a subword one with a chat
template, and a rank trains the smallest shape (with vLLM: tests/e2e/test_real_shape_run.py)."""
import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, to_dict
from siirl_core.data import ArithmeticTask
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.models.bpe import train_bpe_tokenizer
from siirl_core.models.factory import ARCHITECTURES, create_model, task_text
from siirl_core.models.shapes import REAL_SHAPES, parameter_count
from tests.conftest import _free_port

# The parameter counts the families publish (model cards), to the digits they give.
PUBLISHED = {"smollm2-135m": (135e6, 1e6), "qwen2.5-0.5b": (0.49e9, 0.01e9), "qwen2.5-1.5b": (1.54e9, 0.01e9),
             "qwen2.5-3b": (3.09e9, 0.01e9), "llama-3.2-1b": (1.23e9, 0.01e9)}


@pytest.mark.parametrize("shape", sorted(REAL_SHAPES))
def test_each_shape_has_its_published_size(shape):
    architecture, fields = REAL_SHAPES[shape]
    config = ARCHITECTURES[architecture](**fields)
    with torch.device("meta"):  # the shape only: no memory for the weights
        model = AutoModelForCausalLM.from_config(config)
    built = sum(p.numel() for p in model.parameters())
    assert built == parameter_count(shape)
    published, digits = PUBLISHED[shape]
    assert abs(built - published) <= digits, (shape, built)


def test_the_bpe_tokenizer_learns_subwords_and_speaks_chatml():
    tok = train_bpe_tokenizer(task_text(ArithmeticTask(), prompts=1024), vocab_size=300)
    assert len(tok) <= 300
    ids = tok("12+35=")["input_ids"]
    assert len(ids) < len("12+35=")  # merges, not one token per character
    assert tok.decode(ids) == "12+35="
    assert tok.decode(tok("47")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True) == "47"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id and tok.bos_token is None
    chat = tok.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm_shape(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smollm") / "model")
    return create_model(out, ArithmeticTask(), "smollm2-135m", seed=0, bpe_vocab_size=512)


def test_the_factory_writes_the_shape_a_downloaded_checkpoint_has(smollm_shape):
    config = AutoConfig.from_pretrained(smollm_shape)
    _, fields = REAL_SHAPES["smollm2-135m"]
    for key, value in fields.items():
        # transformers keeps RoPE settings in rope_parameters
        found = config.rope_parameters["rope_theta"] if key == "rope_theta" else getattr(config, key)
        assert found == value, key
    tok = load_tokenizer(smollm_shape)
    assert 256 < len(tok) <= 512 and tok.chat_template and config.eos_token_id == tok.eos_token_id
    with open(os.path.join(smollm_shape, "config.json")) as f:
        assert json.load(f)["architectures"] == ["LlamaForCausalLM"]
    assert sum(p.numel() for p in load_causal_lm(smollm_shape).parameters()) == parameter_count("smollm2-135m")


def test_a_rank_trains_the_real_shape_with_checkpointing(smollm_shape, rank_worker):
    from siirl_core.worker import RankWorker

    cfg = compose_config(["model.size=smollm2-135m", "rollout=hf", "trainer.prompts_per_step=1", "rollout.n=2",
                          "trainer.micro_batch_size=8", "trainer.gradient_checkpointing=true", "task.eval_size=8",
                          "rollout.max_new_tokens=256", "rollout.min_new_tokens=256",  # long answers
                          # a fresh model scores 0 everywhere: the entropy bonus gives the step a gradient
                          "algorithm.entropy_coef=0.01"])
    worker = RankWorker(to_dict(cfg), smollm_shape, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    before = {n: p.detach().clone() for n, p in worker.parts.actor.module.named_parameters()}
    m = worker.run_until(1)
    assert m["response/length_mean"] == 256 and m["perf/fused_update"] == 0  # checkpointing rules it out
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in worker.parts.actor.module.named_parameters())
    assert moved > 0 and m["actor/grad_norm"] > 0
    assert worker.parts.rollout.max_positions == 2048  # the shape's 8192 positions, capped


def test_a_response_that_does_not_fit_the_context_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv("SIIRL_SKIP_MEMORY_CHECK", "1")  # the context rule only, whatever this machine's memory
    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens=128 leaves no room for a prompt in 128 positions "
                                          r"\(model.size=mini"):
        compose_config(["rollout.max_new_tokens=128"])
    with pytest.raises(ConfigError, match=r"rollout.max_model_len=4096 is beyond the model's context of 128"):
        compose_config(["rollout.max_model_len=4096"])
    assert compose_config(["model.size=qwen2.5-0.5b", "rollout.max_new_tokens=1024"]).rollout.max_new_tokens == 1024


def test_a_prompt_too_long_for_the_planned_positions_is_an_error():
    from siirl_core.rollout.base import ContextTooShort, check_room

    check_room([[1] * 100], max_new_tokens=28, positions=128)  # exactly fits
    with pytest.raises(ContextTooShort, match=r"prompt 1 has 101 tokens: with rollout.max_new_tokens=28 it needs "
                                              r"129 positions, more than the 128 planned"):
        check_room([[1] * 10, [1] * 101], max_new_tokens=28, positions=128)
