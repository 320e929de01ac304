"""Time and peak memory of one update step (forward, backward, optimizer step through
siirl's update loop on a DeepSpeed actor) on rows whose prompt and response lengths
vary, split three ways: a fixed number of rows per micro-batch (trainer.micro_batch_size),
a token budget over rows grouped by length (trainer.max_tokens_per_micro_batch), and the
same budget with each micro-batch packed into one sequence (trainer.padding_free). Each
side runs in its own process. Writes docs/benchmarks/padding.{json,md}.

    .venv/bin/python bench/padding.py --size small --rows 64 --micro-rows 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIDES = ("fixed rows", "token budget", "token budget, packed", "small budget, packed")


def _batch(rows: int, prompt: tuple[int, int], response: tuple[int, int], vocab: int):
    """Rows in the training layout (prompts left-padded, responses right-padded), lengths
    drawn uniformly from the given ranges; random tokens (a step's cost does not depend on
    what it learns)."""
    import torch

    g = torch.Generator().manual_seed(0)
    p = torch.randint(prompt[0], prompt[1] + 1, (rows,), generator=g)
    r = torch.randint(response[0], response[1] + 1, (rows,), generator=g)
    width_p, width_r = int(p.max()), int(r.max())
    ids = torch.randint(4, vocab, (rows, width_p + width_r), generator=g)
    cols = torch.arange(width_p + width_r)[None]
    mask = ((cols >= width_p - p[:, None]) & (cols < width_p + r[:, None])).long()
    response_mask = mask[:, width_p:].float()
    advantages = torch.randn(rows, generator=g)[:, None] * response_mask
    return ids * mask, mask, response_mask, advantages, width_r


def one_side(model_dir: str, side: str, rows: int, micro_rows: int, prompt, response, repeats: int,
             small_budget: int) -> dict:
    """Runs in its own process."""
    import torch

    from bench.process_memory import peak_rss_mib
    from siirl_core.algorithms.aggregation import aggregate_loss
    from siirl_core.algorithms.entropy import logprobs_from_logits
    from siirl_core.distributed import init_process_group
    from siirl_core.metrics import MetricBag
    from siirl_core.models import load_causal_lm
    from siirl_core.training.actor import DeepSpeedActor
    from siirl_core.training.logprobs import response_logits, trim_padding
    from siirl_core.training.micro_batches import MicroBatching
    from siirl_core.training.update_loop import run_update

    init_process_group(0, 1, "127.0.0.1", int(os.environ.get("BENCH_PORT", "29571")))
    torch.manual_seed(0)
    module = load_causal_lm(model_dir)
    ids, mask, response_mask, advantages, r_len = _batch(rows, prompt, response, module.config.vocab_size)
    longest = int(mask.sum(-1).max())
    budget = micro_rows * longest  # what one fixed micro-batch of the longest rows holds
    batching = {"fixed rows": MicroBatching(micro_rows),
                "token budget": MicroBatching(micro_rows, max_tokens=budget),
                "token budget, packed": MicroBatching(micro_rows, max_tokens=budget, packed=True),
                "small budget, packed": MicroBatching(micro_rows, max_tokens=small_budget, packed=True)}[side]
    actor = DeepSpeedActor(module, lr=1e-5, weight_decay=0.0, warmup_steps=0, total_steps=100, schedule="constant",
                           zero_stage=0, micro_batch_size=micro_rows, grad_accum=max(1, rows // micro_rows),
                           world_size=1, grad_clip=1.0)
    computed = []

    def micro_loss(micro, share):
        sub_ids, sub_mask, kept = trim_padding(ids[micro], mask[micro], r_len)
        computed.append(int(sub_mask.sum()) if batching.packed else sub_ids.numel())
        logits = response_logits(actor.engine, ids[micro], mask[micro], r_len, packed=batching.packed)
        lp = logprobs_from_logits(logits, ids[micro][:, -r_len:])
        return aggregate_loss(-lp * advantages[micro], response_mask[micro], "token-mean") * share, {}, None

    base = peak_rss_mib()
    times = []
    for _ in range(repeats):
        computed.clear()
        t0 = time.perf_counter()
        run_update(actor, [torch.arange(rows)], batching, micro_loss, response_mask, mask, "token-mean", MetricBag())
        times.append(time.perf_counter() - t0)
    # Settings as the built objects have them, not as asked.
    return {"side": side, "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in module.parameters()), "rows": rows,
            "real_tokens": int(mask.sum()), "computed_tokens": sum(computed), "micro_batches": len(computed),
            "max_tokens_per_micro_batch": batching.max_tokens, "packed": batching.packed,
            "gradient_checkpointing": bool(module.is_gradient_checkpointing), "seconds": min(times),
            "update_rss_mib": peak_rss_mib() - base, "threads": torch.get_num_threads()}


def main() -> None:
    from bench.gradient_checkpointing import _model
    from bench.sides import run_side, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--micro-rows", type=int, default=8)
    ap.add_argument("--prompt", default="16,64", help="shortest,longest prompt")
    ap.add_argument("--response", default="8,256", help="shortest,longest response")
    ap.add_argument("--small-budget", type=int, default=512, help="tokens per packed micro-batch, 4th side")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "padding"))
    ap.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side, print its JSON
    args = ap.parse_args()
    prompt = tuple(int(x) for x in args.prompt.split(","))
    response = tuple(int(x) for x in args.response.split(","))
    if args.side:
        model_dir, side = args.side.split("|")
        print(json.dumps(one_side(model_dir, side, args.rows, args.micro_rows, prompt, response, args.repeats,
                                  args.small_budget)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model(args.size, prompt[1] + response[1], tmp)
        results = []
        for side in SIDES:
            cmd = [sys.executable, __file__, "--side", f"{model_dir}|{side}", "--rows", str(args.rows),
                   "--micro-rows", str(args.micro_rows), "--prompt", args.prompt, "--response", args.response,
                   "--repeats", str(args.repeats), "--small-budget", str(args.small_budget)]
            results.append(run_side(cmd, ROOT))
    same = ("dtype", "parameters", "rows", "real_tokens", "gradient_checkpointing", "threads")
    assert all(r[k] == results[0][k] for r in results for k in same), results
    fixed = results[0]
    result = {"size": args.size, "prompt": prompt, "response": response, "sides": results,
              "time_ratio": {r["side"]: r["seconds"] / fixed["seconds"] for r in results},
              "memory_ratio": {r["side"]: r["update_rss_mib"] / fixed["update_rss_mib"] for r in results}}
    write_result(args.out, result, _markdown(result, args))


def _markdown(result: dict, args) -> str:
    fixed = result["sides"][0]
    budget, packed, small = result["sides"][1:]
    lines = [
        "# Padding: one update step on rows of varying length",
        "",
        f"Against `trainer.micro_batch_size={args.micro_rows}` rows per micro-batch, a token budget of the same "
        f"size (`trainer.max_tokens_per_micro_batch={budget['max_tokens_per_micro_batch']}`, rows grouped by "
        f"length) takes **{result['time_ratio'][budget['side']]:.2f}x** the time and "
        f"**{result['memory_ratio'][budget['side']]:.2f}x** the memory; packed into one sequence per "
        f"micro-batch (`trainer.padding_free=true`) **{result['time_ratio'][packed['side']]:.2f}x** and "
        f"**{result['memory_ratio'][packed['side']]:.2f}x**, and packed in micro-batches of "
        f"{small['max_tokens_per_micro_batch']} tokens **{result['time_ratio'][small['side']]:.2f}x** and "
        f"**{result['memory_ratio'][small['side']]:.2f}x**. On the CPU the packed sequence's attention "
        "grows with the square of its length (transformers masks across rows; it does not skip them): "
        "packing pays only in small micro-batches, or with FlashAttention's variable-length kernels on a GPU. "
        "Same model, rows, tokens and precision on every "
        "side, read from the built objects; the loss and gradient are the same on every side "
        "(tests/test_update_loop.py).",
        "",
        f"`{result['size']}` model ({fixed['parameters'] / 1e6:.1f}M parameters), {fixed['rows']} rows with "
        f"prompts of {result['prompt'][0]}-{result['prompt'][1]} and responses of "
        f"{result['response'][0]}-{result['response'][1]} tokens ({fixed['real_tokens']} real tokens), "
        f"one optimizer step through siirl's update loop on a DeepSpeed actor, {fixed['dtype']} on the CPU "
        f"({fixed['threads']} threads), each side in its own process (`bench/padding.py`), the faster of "
        f"{args.repeats} steps. Random tokens: this measures what a step costs, not what it learns (the "
        "loss and gradient are the same on every side). Computed tokens count what the forward passes ran "
        "on, padding included.",
        "",
        "| split | micro-batches | computed tokens | share that is padding | seconds | memory of the step (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["sides"]:
        pad = 1 - r["real_tokens"] / r["computed_tokens"]
        lines.append(f"| {r['side']} | {r['micro_batches']} | {r['computed_tokens']} | {pad:.0%} | "
                     f"{r['seconds']:.2f} | {r['update_rss_mib']:.0f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
