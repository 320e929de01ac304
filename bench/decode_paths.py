"""The `hf` rollout's sampling loop with its graph kept (the fused update's forward) and
the backward pass through it, per decoder, side by side in one process (one thread):

- cache: transformers' forward with a repeated KV cache (rollout.grouped_decode=false)
- grouped-plain: siirl's grouped decoder, weight gradients per decode step (autograd's)
- grouped: siirl's grouped decoder with one weight gradient per weight (the default)
- grouped, denormals kept: the default without flushing denormals to zero (RankWorker
  flushes them on CPU ranks)

on the benchmark's warm-started `small` model (bench/work_spec.py's 16 prompts x 8
samples, 6 tokens) and on the same shape with a 32k-token vocabulary (random weights).
The loss weights every sampled token's log-prob by a fixed random advantage.

    .venv/bin/python bench/decode_paths.py [--repeats 8] [--out docs/benchmarks/decode_paths]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from siirl_core.algorithms.entropy import logprobs_from_logits  # noqa: E402
from siirl_core.models.factory import SIZES  # noqa: E402
from siirl_core.rollout import grouped_decode  # noqa: E402
from siirl_core.rollout.base import SamplingConfig  # noqa: E402
from siirl_core.rollout.decode import decode  # noqa: E402
from siirl_core.rollout.deferred_grads import DeferredGrads  # noqa: E402
from work_spec import SPEC, siirl_overrides  # noqa: E402

VARIANTS = ("cache", "grouped-plain", "grouped", "grouped, denormals kept")


class _PerStepGrads(DeferredGrads):
    """The grouped decoder with autograd's own weight gradients (one per decode step)."""

    @staticmethod
    def _deferred(weight) -> bool:
        return False


def _run(model, prompts, sampling, advantages, variant: str) -> tuple[float, float]:
    torch.set_flush_denormal(variant != "grouped, denormals kept")
    grouped_decode.DeferredGrads = _PerStepGrads if variant == "grouped-plain" else DeferredGrads
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    out = decode(model, prompts, sampling, pad_id=0, eos_id=2, gen=gen, keep_graph=True,
                 grouped=variant != "cache")
    t1 = time.perf_counter()
    (-(logprobs_from_logits(out.train_logits, out.tokens) * advantages).mean()).backward()
    t2 = time.perf_counter()
    model.zero_grad(set_to_none=False)
    return t1 - t0, t2 - t1


def measure(model, prompts, repeats: int) -> dict:
    model.train()
    n, new = SPEC["n"], SPEC["max_new_tokens"]
    sampling = SamplingConfig(n=n, max_new_tokens=new, min_new_tokens=new)
    advantages = torch.randn(len(prompts) * n, 1, generator=torch.Generator().manual_seed(1))
    times = {v: [] for v in VARIANTS}
    for rep in range(repeats + 2):  # the first two rounds warm up allocator and caches
        for v in VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]:
            t = _run(model, prompts, sampling, advantages, v)
            if rep >= 2:
                times[v].append(t)
    med = statistics.median
    return {v: {"forward_s": med(f for f, _ in ts), "backward_s": med(b for _, b in ts),
                "total_s": med(f + b for f, b in ts)} for v, ts in times.items()}


def models(tmp: str):
    from common import warm_policy
    from siirl_core.compose import compose_config
    from siirl_core.data import build_task
    from siirl_core.models import load_tokenizer

    cfg = compose_config(siirl_overrides(SPEC, "small", "hf", 3))
    path = warm_policy(cfg, tmp)
    tok = load_tokenizer(path)
    task = build_task(cfg.task)
    prompts = [tok(p.prompt)["input_ids"] for p in task.train_batch(cfg.trainer.seed, 1, SPEC["prompts_per_step"])]
    yield f"small (warm, {len(tok)}-token vocabulary)", AutoModelForCausalLM.from_pretrained(path), prompts
    dims = SIZES["small"]
    big = LlamaConfig(vocab_size=32000, num_key_value_heads=dims["num_attention_heads"], pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, **dims)
    torch.manual_seed(0)
    widths = [len(p) for p in prompts]
    rand = [[1] + torch.randint(3, 32000, (w - 1,)).tolist() for w in widths]
    yield "small shape, 32k vocabulary (random weights)", AutoModelForCausalLM.from_config(big), rand


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "benchmarks", "decode_paths"))
    args = ap.parse_args()
    torch.set_num_threads(SPEC["threads"])
    result = {"spec": SPEC, "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, prompts in models(tmp):
            result["models"][name] = measure(model, prompts, args.repeats)
            print(name, json.dumps(result["models"][name]), flush=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Command: `python bench/decode_paths.py --repeats {args.repeats}`", "",
             "Medians over the repeats (variants alternate who goes first); seconds for one batch of "
             f"{SPEC['prompts_per_step']} prompts x {SPEC['n']} samples x {SPEC['max_new_tokens']} tokens, one thread.",
             "", "| model | decoder | forward s | backward s | total s | vs cache |", "|---|---|---|---|---|---|"]
    for name, rows in result["models"].items():
        base = rows["cache"]["total_s"]
        lines += [f"| {name} | {v} | {r['forward_s']:.3f} | {r['backward_s']:.3f} | {r['total_s']:.3f} | "
                  f"{base / r['total_s']:.2f}x |" for v, r in rows.items()]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
