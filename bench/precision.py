"""fp32 against bf16 (trainer.precision=bf16: fp32 weights, passes under bf16 autocast)
on the same GRPO iterations, side by side in the same run: each side is a size-ladder
rung (bench/size_ladder.py) in its own process. Writes docs/benchmarks/precision.{json,md}.

    .venv/bin/python bench/precision.py --rungs small,smollm2-135m,qwen2.5-0.5b
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LADDER = os.path.join(ROOT, "bench", "size_ladder.py")


def main() -> None:
    from bench.sides import run_side, write_result
    from bench.size_ladder import RUNGS, make_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rungs", default="small,smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--response", type=int, default=96)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "precision"))
    args = ap.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rungs.split(","):
            size, lora = RUNGS[name]
            model_dir = make_model(size, tmp)
            sides = {}
            for precision in ("fp32", "bf16"):
                cmd = [sys.executable, LADDER, "--rung", f"{model_dir}|{size}|{lora}", "--iterations",
                       str(args.iterations), "--response", str(args.response), "--precision", precision]
                sides[precision] = run_side(cmd, ROOT)
                print(f"{name} {precision}: {sides[precision]['seconds']:.1f} s", flush=True)
            pairs.append({"rung": name, **sides})
    same = ("parameters", "trainable_parameters", "dtype", "gradient_checkpointing", "threads")
    for p in pairs:  # like for like, as built: only the autocast differs
        assert all(p["fp32"][k] == p["bf16"][k] for k in same), p["rung"]
        assert not p["fp32"]["bf16_autocast"] and p["bf16"]["bf16_autocast"], p["rung"]
    result = {"iterations": args.iterations, "response": args.response, "pairs": pairs}
    write_result(args.out, result, _markdown(result))


def _ratio(p: dict, key) -> float:
    return key(p["bf16"]) / max(key(p["fp32"]), 1e-12)


def _markdown(result: dict) -> str:
    native = result["pairs"][0]["bf16"]["native_bf16_cpu"]
    lines = [
        "# bf16 on the CPU: trainer.precision=bf16 against fp32",
        "",
        "Time and memory of bf16 relative to fp32 on the same iterations (below 1: bf16 is faster or smaller). "
        "bf16 here is fp32 weights, gradients and Adam state with every forward and backward pass under "
        "`torch.autocast(\"cpu\", bfloat16)`; this CPU "
        f"{'has' if native else 'lacks'} native bf16 (AVX512-BF16 / AMX). Each side is a rung of "
        f"`bench/size_ladder.py` ({result['iterations']} GRPO iterations, `hf` rollout, responses of "
        f"{result['response']} tokens, gradient checkpointing on) in its own process, last iteration shown; "
        "parameters, dtype of the weights, checkpointing and threads read from the built objects are the same "
        "on both sides. Rerun: `.venv/bin/python bench/precision.py`.",
        "",
        "| rung | fp32 s / iteration | bf16 s / iteration | time | rollout time | update time | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["pairs"]:
        lines.append(
            f"| {p['rung']} | {p['fp32']['seconds']:.1f} | {p['bf16']['seconds']:.1f} "
            f"| {_ratio(p, lambda r: r['seconds']):.2f}x "
            f"| {_ratio(p, lambda r: r['phases'].get('rollout', 0)):.2f}x "
            f"| {_ratio(p, lambda r: r['phases'].get('update', 0)):.2f}x "
            f"| {_ratio(p, lambda r: r['peak_rss_mib']):.2f}x |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
