"""Peak memory and time of one update step (forward, backward) with and without
trainer.gradient_checkpointing, each in a fresh process so that its high-water mark is
its own. Writes docs/benchmarks/gradient_checkpointing.{json,md}.

    .venv/bin/python bench/gradient_checkpointing.py --size medium --rows 16 --response 448
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


def one_side(model_dir: str, checkpointing: bool, rows: int, prompt: int, response: int, repeats: int) -> dict:
    """Runs in its own process: the update's forward and backward over one micro-batch."""
    import torch

    from bench.process_memory import peak_rss_mib
    from siirl_core.algorithms.entropy import logprobs_from_logits
    from siirl_core.models import load_causal_lm
    from siirl_core.training.actor import enable_gradient_checkpointing
    from siirl_core.training.logprobs import response_logits

    torch.manual_seed(0)
    module = load_causal_lm(model_dir)
    if checkpointing:
        enable_gradient_checkpointing(module)
    ids = torch.randint(4, module.config.vocab_size, (rows, prompt + response))
    mask = torch.ones_like(ids)
    base = peak_rss_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lp = logprobs_from_logits(response_logits(module, ids, mask, response), ids[:, -response:])
        (-lp.mean()).backward()
        times.append(time.perf_counter() - t0)
        module.zero_grad(set_to_none=True)
    # Settings as the built objects have them, not as asked.
    return {"gradient_checkpointing": bool(module.is_gradient_checkpointing),
            "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
            "peak_rss_mib": peak_rss_mib(), "model_loaded_rss_mib": base, "update_rss_mib": peak_rss_mib() - base,
            "seconds": min(times), "parameters": sum(p.numel() for p in module.parameters()),
            "rows": ids.shape[0], "tokens": ids.numel(), "response_tokens": response,
            "threads": torch.get_num_threads()}


def _model(size: str, positions: int, tmp: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from siirl_core.data.arithmetic import ALPHABET
    from siirl_core.models.factory import make_model_config
    from siirl_core.models.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer(ALPHABET)
    config = make_model_config(size, "llama", len(tokenizer), tokenizer)
    config.max_position_embeddings = positions
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def main() -> None:
    from bench.sides import run_side, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "gradient_checkpointing"))
    ap.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side, print its JSON
    args = ap.parse_args()
    if args.side:
        model_dir, on = args.side.rsplit(":", 1)
        print(json.dumps(one_side(model_dir, on == "on", args.rows, args.prompt, args.response, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model(args.size, args.prompt + args.response, tmp)
        rows = []
        for on in ("off", "on"):
            cmd = [sys.executable, __file__, "--side", f"{model_dir}:{on}", "--rows", str(args.rows),
                   "--prompt", str(args.prompt), "--response", str(args.response), "--repeats", str(args.repeats)]
            rows.append(run_side(cmd, ROOT))
    off, on = rows
    assert not off["gradient_checkpointing"] and on["gradient_checkpointing"], rows
    assert all(off[k] == on[k] for k in ("dtype", "parameters", "rows", "tokens", "threads")), rows
    result = {"size": args.size, "rows": rows, "memory_ratio": on["update_rss_mib"] / off["update_rss_mib"],
              "time_ratio": on["seconds"] / off["seconds"]}
    write_result(args.out, result, _markdown(result, args))


def _markdown(result: dict, args) -> str:
    off, on = result["rows"]
    lines = [
        "# Gradient checkpointing: memory and time of one update step",
        "",
        f"With checkpointing the step needs **{result['memory_ratio']:.2f}x** the memory and "
        f"**{result['time_ratio']:.2f}x** the time of the same step without it (same model, batch and "
        "precision on both sides, read from the built modules).",
        "",
        f"`{args.size}` model ({off['parameters'] / 1e6:.1f}M parameters), {off['rows']} rows of "
        f"{args.prompt} prompt + {args.response} response tokens ({off['tokens']} tokens) in one micro-batch, "
        f"forward and backward of the policy loss, {off['dtype']} on the CPU ({off['threads']} threads); each "
        "side in its own process (`bench/gradient_checkpointing.py`). Random tokens: what a step costs does "
        "not depend on what it learns.",
        "",
        "| gradient_checkpointing | memory of the step (MiB above the loaded model) | peak RSS (MiB) | seconds |",
        "|---|---|---|---|",
    ]
    for r in (off, on):
        lines.append(f"| {str(r['gradient_checkpointing']).lower()} | {r['update_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['seconds']:.2f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
