"""The size ladder: a few GRPO iterations of the same task at growing model sizes, each
in its own process, through siirl's RankWorker (the same engines a run uses). Per rung:
seconds per iteration by phase, rollout tokens/s, model-FLOPs utilisation against the
fp32 matmul peak measured in the same process, and the peak resident memory. A rung the
memory estimate refuses (siirl_core/memory_estimate.py, the check `siirl train` runs
before loading) is listed with the estimate instead. Writes
docs/benchmarks/size_ladder.{json,md,png}.

    .venv/bin/python bench/size_ladder.py
    .venv/bin/python bench/size_ladder.py --rungs small,smollm2-135m --iterations 2

Models are randomly initialised with the real shapes (siirl_core/models/shapes.py) and
a BPE tokenizer trained on the task: a step's cost does not depend on what the weights
know. Every response is forced to the same length (rollout.min_new_tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (rung name, model.size, LoRA rank): full fine-tuning where it fits on a 24 GB machine,
# adapters above. The 1.5B shape is tried both ways: the estimate refuses the full one.
RUNGS = {
    "small": ("small", 0),
    "smollm2-135m": ("smollm2-135m", 0),
    "qwen2.5-0.5b": ("qwen2.5-0.5b", 0),
    "qwen2.5-1.5b": ("qwen2.5-1.5b", 0),
    "qwen2.5-1.5b-lora": ("qwen2.5-1.5b", 16),
    "qwen2.5-3b-lora": ("qwen2.5-3b", 16),
}
PHASES = ("rollout", "reward", "old_logprobs", "ref_logprobs", "advantage", "update", "sync")


def overrides(size: str, lora: int, args) -> list[str]:
    out = [f"model.size={size}", "rollout=hf", f"trainer.prompts_per_step={args.prompts}",
           f"rollout.n={args.n}", f"rollout.max_new_tokens={args.response}", f"rollout.min_new_tokens={args.response}",
           f"trainer.micro_batch_size={args.micro_rows}", "trainer.gradient_checkpointing=true",
           "task.eval_size=8", f"trainer.steps={args.iterations}", f"trainer.precision={args.precision}",
           # a fresh model scores 0 everywhere: the entropy bonus gives every step a gradient
           "algorithm.entropy_coef=0.01"]
    if lora:
        out += [f"model.lora.rank={lora}", f"model.lora.alpha={2 * lora}"]
    return out + [x for x in args.extra.split(" ") if x]


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` fp32 [n, n] @ [n, n] products, with the threads
    this process trains with."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def matmul_parameters(module) -> int:
    """Parameters that take part in matrix products for each token: all but an untied
    input embedding (a table lookup)."""
    total = sum(p.numel() for p in module.parameters())
    if module.config.tie_word_embeddings:
        return total
    return total - module.get_input_embeddings().weight.numel()


def one_rung(model_dir: str, size: str, lora: int, args) -> dict:
    """Runs in its own process: build the rank's engines, run the iterations, read back
    what was built and what it cost."""
    import torch

    from bench.process_memory import peak_rss_mib
    from siirl_core.compose import compose_config
    from siirl_core.config import to_dict
    from siirl_core.worker import RankWorker

    peak = matmul_peak_flops()
    cfg = compose_config(overrides(size, lora, args))
    worker = RankWorker(to_dict(cfg), model_dir, rank=0, world_size=1, master_port=int(args.port))
    info = worker.setup()
    seen = []
    worker.work.pipeline = [*worker.work.pipeline, lambda _parts, batch, _bag: seen.append(batch)]
    loaded_rss = peak_rss_mib()
    steps = []
    for step in range(1, args.iterations + 1):
        m = worker.run_until(step)
        t = seen[-1].tensors
        steps.append({"seconds": m["timing_s/iteration"],
                      "phases": {p: m[f"timing_s/{p}"] for p in PHASES if f"timing_s/{p}" in m},
                      "rollout_tokens": int(m["perf/rollout_tokens"]),
                      "prompt_tokens": int(t.attention_mask.sum() - t.response_mask.sum()),
                      "response_tokens": int(t.response_mask.sum()),
                      "rows": int(t.input_ids.shape[0]), "grad_norm": m["actor/grad_norm"]})
    actor = worker.parts.actor
    module = actor.module
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n = matmul_parameters(module)
    last = steps[-1]
    # Model FLOPs (recomputation by gradient checkpointing not counted): 2 per parameter
    # per token for every forward pass (the prompts' prefill and each sampled token), and
    # for the update 2 forward + 2 backward to the inputs + 2 for weight gradients, which
    # only trained weights need (LoRA: the adapters, a sliver).
    tokens = last["prompt_tokens"] + last["response_tokens"]
    weight_grads = 2 * trainable if lora else 2 * n
    flops = 2 * n * (last["prompt_tokens"] + last["rollout_tokens"]) + (4 * n + weight_grads) * tokens
    # Settings as the built objects have them, not as asked.
    return {"size": size, "parameters": sum(p.numel() for p in module.parameters()),
            "trainable_parameters": trainable, "lora_rank": lora,
            "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
            "gradient_checkpointing": bool(getattr(module, "is_gradient_checkpointing", False)),
            "bf16_autocast": info["bf16_autocast"], "native_bf16_cpu": info["native_bf16_cpu"],
            "zero_stage": actor.zero_stage, "threads": torch.get_num_threads(), "steps": steps,
            "rollout_engine": type(worker.parts.rollout).__name__,
            "rollout_takes_adapters": bool(getattr(worker.parts.rollout, "takes_adapters", False)),
            "seconds": last["seconds"], "phases": last["phases"],
            "rollout_tokens_per_s": last["rollout_tokens"] / max(last["phases"].get("rollout", 0), 1e-9),
            "model_flops": flops, "matmul_peak_flops": peak, "mfu": flops / last["seconds"] / peak,
            "peak_rss_mib": peak_rss_mib(), "loaded_rss_mib": loaded_rss}


def refusal(size: str, lora: int, args) -> str | None:
    """What `siirl train` would say before loading: the memory estimate's refusal, or None."""
    from siirl_core.compose import compose_config
    from siirl_core.config import ConfigError

    try:
        compose_config(overrides(size, lora, args))
    except ConfigError as err:
        return str(err)
    return None


def make_model(size: str, tmp: str) -> str:
    """The rung's model, made in a process of its own (a 3B model is 12 GB in fp32: the
    driver must not keep it)."""
    out = os.path.join(tmp, size)
    subprocess.run([sys.executable, __file__, "--make", f"{out}|{size}"], check=True, cwd=ROOT)
    return out


def main() -> None:
    from bench.sides import run_side, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated, of {', '.join(RUNGS)}")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--response", type=int, default=96, help="tokens per response (the toy sizes have 128 positions)")
    ap.add_argument("--micro-rows", type=int, default=4)
    ap.add_argument("--port", default="29581")
    ap.add_argument("--precision", default="auto", help="trainer.precision: auto (fp32 on a CPU), fp32 or bf16")
    ap.add_argument("--extra", default="", help="more overrides, space-separated (they win: e.g. rollout=vllm)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "size_ladder"))
    ap.add_argument("--rung", help=argparse.SUPPRESS)  # internal: model dir|size|lora; prints its JSON
    ap.add_argument("--make", help=argparse.SUPPRESS)  # internal: model dir|size
    args = ap.parse_args()
    if args.make:
        from siirl_core.data import ArithmeticTask
        from siirl_core.models.factory import create_model

        out, size = args.make.split("|")
        create_model(out, ArithmeticTask(), size, seed=0, bpe_vocab_size=512)
        return
    if args.rung:
        model_dir, size, lora = args.rung.split("|")
        print(json.dumps(one_rung(model_dir, size, int(lora), args)))
        return
    names = args.rungs.split(",")
    unknown = sorted(set(names) - set(RUNGS))
    if unknown:
        raise SystemExit(f"unknown rung(s) {unknown}; known: {', '.join(RUNGS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, str] = {}
        for name in names:
            size, lora = RUNGS[name]
            refused = refusal(size, lora, args)
            if refused:
                rows.append({"rung": name, "size": size, "lora_rank": lora, "refused": refused})
                print(f"{name}: refused before loading", flush=True)
                continue
            if size not in models:
                models[size] = make_model(size, tmp)
            cmd = [sys.executable, __file__, "--rung", f"{models[size]}|{size}|{lora}",
                   "--iterations", str(args.iterations), "--prompts", str(args.prompts), "--n", str(args.n),
                   "--response", str(args.response), "--micro-rows", str(args.micro_rows), "--port", args.port,
                   "--precision", args.precision, "--extra", args.extra]
            t0 = time.perf_counter()
            try:
                rows.append({"rung": name, **run_side(cmd, ROOT), "wall_s": time.perf_counter() - t0})
            except subprocess.CalledProcessError as err:  # e.g. killed for memory: the other rungs still count
                rows.append({"rung": name, "size": size, "lora_rank": lora,
                             "failed": f"exit {err.returncode}: {(err.stderr or '').strip()[-300:]}"})
                print(f"{name}: failed ({rows[-1]['failed']})", flush=True)
                continue
            print(f"{name}: {rows[-1]['seconds']:.1f} s per iteration, peak {rows[-1]['peak_rss_mib']:.0f} MiB",
                  flush=True)
    result = {"settings": {k: getattr(args, k) for k in ("iterations", "prompts", "n", "response", "micro_rows",
                                                          "precision", "extra")},
              "rungs": rows}
    _plot(result, args.out + ".png")
    write_result(args.out, result, _markdown(result))


def _largest(rows: list[dict], adapters: bool) -> str:
    trained = [r for r in rows if "seconds" in r and bool(r["lora_rank"]) == adapters]
    return max(trained, key=lambda r: r["parameters"])["rung"] if trained else "none tried"


def _markdown(result: dict) -> str:
    s, rows = result["settings"], result["rungs"]
    ran = [r for r in rows if "seconds" in r]
    lines = [
        "# The size ladder: GRPO iterations from 10M to 3B parameters on one CPU machine",
        "",
        f"Largest model trained here: **{_largest(rows, False)}** fully, **{_largest(rows, True)}** with LoRA "
        f"adapters. Each rung runs {s['iterations']} GRPO iterations of the arithmetic task through siirl's "
        f"RankWorker (DeepSpeed actor, `hf` rollout over the trained module, gradient checkpointing on) with "
        f"{s['prompts']} prompts x {s['n']} samples and every response {s['response']} tokens long, micro-batches "
        f"of {s['micro_rows']} rows; the table is the last iteration. Models are randomly initialised with the "
        "real families' shapes and a 512-token BPE tokenizer (`bench/size_ladder.py`; rerun it to refresh this "
        "page).",
        "",
        "MFU is model FLOPs (2 per parameter per token of each forward pass, 4 more per trained token for the "
        "backward pass, 2 of them only for trained weights; recomputation not counted) over the iteration's "
        "seconds and the fp32 matmul peak measured in the same process. Memory is the process's peak resident "
        "set (VmHWM).",
        "",
        "| rung | parameters | trained | dtype | s / iteration | rollout | update | other | rollout tok/s "
        "| MFU | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "seconds" not in r:
            why = "refused before loading" if "refused" in r else "failed"
            lines.append(f"| {r['rung']} | | | | {why} | | | | | | |")
            continue
        ph = r["phases"]
        other = r["seconds"] - ph.get("rollout", 0) - ph.get("update", 0)
        trained = "all" if not r["lora_rank"] else f"LoRA r{r['lora_rank']} ({r['trainable_parameters'] / 1e6:.1f}M)"
        lines.append(f"| {r['rung']} | {r['parameters'] / 1e6:,.0f}M | {trained} | {r['dtype']} | {r['seconds']:.1f} "
                     f"| {ph.get('rollout', 0):.1f} | {ph.get('update', 0):.1f} | {other:.1f} "
                     f"| {r['rollout_tokens_per_s']:.0f} | {r['mfu']:.2f} | {r['peak_rss_mib'] / 1024:.1f} |")
    if ran:
        r = ran[0]
        lines += ["", f"Measured fp32 matmul peak: {r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s with "
                      f"{r['threads']} threads."]
    refused = [r for r in rows if "refused" in r]
    if refused:
        lines += ["", "Refused before loading (what `siirl train` says):", ""]
        lines += [f"- {r['rung']}: {r['refused']}" for r in refused]
    failed = [r for r in rows if "failed" in r]
    if failed:
        lines += ["", "Failed:", ""] + [f"- {r['rung']}: {r['failed']}" for r in failed]
    lines.append("")
    return "\n".join(lines)


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in result["rungs"] if "seconds" in r]
    if not ran:
        return
    labels = [r["rung"] for r in ran]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    bottom = [0.0] * len(ran)
    for phase in ("rollout", "update"):
        values = [r["phases"].get(phase, 0.0) for r in ran]
        ax1.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax1.bar(labels, [r["seconds"] - b for r, b in zip(ran, bottom)], bottom=bottom, label="other phases")
    ax1.set_ylabel("seconds per iteration")
    ax1.legend()
    ax2.bar(labels, [r["mfu"] for r in ran])
    ax2.set_ylabel("MFU (of the measured fp32 matmul peak)")
    ax3.bar(labels, [r["peak_rss_mib"] / 1024 for r in ran])
    ax3.set_ylabel("peak resident memory (GiB)")
    for ax in (ax1, ax2, ax3):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
