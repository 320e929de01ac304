"""What vLLM receives after each LoRA update, side by side in the same run: the merged
weights W + scaling * B A (rollout.lora_sync=merged) or the adapter files alone, applied
by vLLM's own LoRA support (adapters). Each side is a size-ladder rung
(bench/size_ladder.py) with rollout=vllm in its own process. Writes
docs/benchmarks/lora_sync.{json,md}.

    .venv/bin/python bench/lora_sync.py --rungs smollm2-135m,qwen2.5-0.5b
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LADDER = os.path.join(ROOT, "bench", "size_ladder.py")
SIDES = ("merged", "adapters")


def main() -> None:
    from bench.sides import run_side, write_result
    from bench.size_ladder import make_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rungs", default="smollm2-135m,qwen2.5-0.5b", help="model shapes (LoRA rank 16 on each)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--response", type=int, default=96)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "lora_sync"))
    args = ap.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.rungs.split(","):
            model_dir = make_model(size, tmp)
            sides = {}
            for side in SIDES:
                extra = f"rollout=vllm rollout.lora_sync={side} rollout.kv_cache_gib=2"
                cmd = [sys.executable, LADDER, "--rung", f"{model_dir}|{size}|16", "--iterations",
                       str(args.iterations), "--response", str(args.response), "--extra", extra]
                sides[side] = run_side(cmd, ROOT)
                print(f"{size} {side}: {sides[side]['seconds']:.1f} s", flush=True)
            pairs.append({"size": size, **sides})
    same = ("parameters", "trainable_parameters", "dtype", "gradient_checkpointing", "threads", "rollout_engine")
    for p in pairs:  # like for like, as built: only what vLLM receives differs
        assert all(p["merged"][k] == p["adapters"][k] for k in same), p["size"]
        assert not p["merged"]["rollout_takes_adapters"] and p["adapters"]["rollout_takes_adapters"], p["size"]
    result = {"iterations": args.iterations, "response": args.response, "pairs": pairs}
    write_result(args.out, result, _markdown(result))


def _markdown(result: dict) -> str:
    lines = [
        "# LoRA and vLLM: merged weights against adapters",
        "",
        "After every update vLLM gets either the merged weights (`rollout.lora_sync=merged`: W + scaling * B A "
        "for every adapted layer, loaded into its copy of the model) or the adapter files alone "
        "(`rollout.lora_sync=adapters`: vLLM applies them itself, its base weights untouched). Same model, "
        "adapters (rank 16 on every projection), batch and precision on both sides, read from the built objects; "
        f"each side is a rung of `bench/size_ladder.py` with `rollout=vllm` ({result['iterations']} GRPO "
        f"iterations, 2 prompts x 4 answers of {result['response']} tokens, gradient checkpointing), in its own "
        "process; the last iteration is shown. Rerun: `.venv/bin/python bench/lora_sync.py`.",
        "",
        "| model shape | merged: s / iteration | adapters: s / iteration | time | sampling | weight sync |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["pairs"]:
        m, a = p["merged"], p["adapters"]
        lines.append(
            f"| {p['size']} | {m['seconds']:.1f} | {a['seconds']:.1f} | {a['seconds'] / m['seconds']:.2f}x "
            f"| {a['phases']['rollout']:.1f} s against {m['phases']['rollout']:.1f} s "
            f"| {a['phases']['sync']:.2f} s against {m['phases']['sync']:.2f} s |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
