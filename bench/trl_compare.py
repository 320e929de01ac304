"""siirl (vllm and hf rollout backends) and TRL's GRPOTrainer side by side on identical
work, alternating, several times each; plus this machine's fp32 matmul peak, for
model-FLOPs utilisation computed in the same run.

    bash scripts/setup.sh bench && .venv/bin/python bench/trl_compare.py [--sizes tiny,small,medium]
        [--iterations 5] [--repeats 3] [--out docs/benchmarks/trl_compare]

Each side runs in its own process with SPEC["threads"] threads: siirl in .venv, TRL in
.venv-trl (made by bench/setup_trl.sh). Same model directory (the tiny-model factory
plus a short shared warm start), same prompts in the same order, same samples per
prompt, fixed-length generation, same learning rate, loss (PPO clip, token mean,
no KL) and reward. Timings exclude start-up and SPEC["warmup"] iterations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from work_spec import SPEC, siirl_overrides  # noqa: E402

SIDES = ("siirl-vllm", "siirl-hf", "trl")


def matmul_peak_flops(threads: int, size: int = 1024, repeats: int = 10) -> float:
    """Best fp32 matmul FLOP/s with `threads` threads (the ceiling for MFU)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def prepare(size: str, iterations: int, tmp: str) -> tuple[str, str, float]:
    """The shared warm-started model, the prompts in training order, and the mean prompt length in tokens."""
    from common import warm_policy
    from siirl_core.compose import compose_config
    from siirl_core.data import build_task

    cfg = compose_config(siirl_overrides(SPEC, size, "vllm", iterations))
    model_dir = warm_policy(cfg, os.path.join(tmp, size))
    task = build_task(cfg.task)
    path = os.path.join(tmp, f"prompts-{size}.jsonl")
    lengths = []
    with open(path, "w") as f:
        for step in range(1, SPEC["warmup"] + iterations + 1):  # siirl draws exactly these for each step
            for p in task.train_batch(cfg.trainer.seed, step, SPEC["prompts_per_step"]):
                f.write(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n")
                lengths.append(len(p.prompt) + 1)  # characters + BOS
    return model_dir, path, statistics.mean(lengths)


def run_side(side: str, size: str, model_dir: str, prompts: str, iterations: int, trl_python: str, tmp: str) -> dict:
    out = os.path.join(tmp, f"{side}-{size}-{time.monotonic_ns()}.json")
    spec = json.dumps(SPEC)
    if side == "trl":
        cmd = [trl_python, os.path.join(HERE, "trl_side.py"), spec, model_dir, prompts, str(iterations), out]
    else:
        cmd = [sys.executable, os.path.join(HERE, "siirl_side.py"), spec, model_dir, size, side.split("-")[1],
               str(iterations), out]
    env = dict(os.environ, OMP_NUM_THREADS=str(SPEC["threads"]), PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{side} on {size} failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def summarise(runs: list[dict], prompt_len: float, peak: float) -> dict:
    it = [x for r in runs for x in r["iteration_s"]]
    roll = [x for r in runs for x in r["rollout_s"]]
    train = [x for r in runs for x in r.get("train_s", [])] or [i - g for i, g in zip(it, roll)]
    samples = SPEC["prompts_per_step"] * SPEC["n"]
    gen_tokens, train_tokens = samples * SPEC["max_new_tokens"], samples * (prompt_len + SPEC["max_new_tokens"])
    params = runs[0]["parameters"]
    med = statistics.median
    return {
        "s_per_iter": {"median": med(it), "min": min(it), "max": max(it)},
        "rollout_tokens_per_s": gen_tokens / med(roll), "train_tokens_per_s": train_tokens / med(train),
        "rollout_mfu": 2 * params * gen_tokens / med(roll) / peak,
        "train_mfu": 6 * params * train_tokens / med(train) / peak,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "final_reward": [r["final_reward"] for r in runs], "parameters": params,
    }


def write_report(result: dict, out: str, command: str) -> None:
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Command: `{command}`", "",
             f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), "
             f"{SPEC['threads']} thread per process; fp32 matmul peak at that thread count: "
             f"{result['peak_gflops']:.1f} GFLOP/s.", "",
             "| model | side | s/iter (median, min-max) | vs TRL | rollout tok/s | train tok/s | rollout MFU | "
             "train MFU | peak RSS MiB | final reward (each repeat) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size, sides in result["sizes"].items():
        trl = sides["trl"]["s_per_iter"]["median"]
        for side, s in sides.items():
            it = s["s_per_iter"]
            lines.append(f"| {size} ({s['parameters'] / 1e6:.2f}M) | {side} | {it['median']:.3f} "
                         f"({it['min']:.3f}-{it['max']:.3f}) | {trl / it['median']:.2f}x | "
                         f"{s['rollout_tokens_per_s']:.0f} | {s['train_tokens_per_s']:.0f} | "
                         f"{s['rollout_mfu']:.3f} | {s['train_mfu']:.3f} | {s['peak_rss_mib']:.0f} | "
                         f"{', '.join(f'{r:.3f}' for r in s['final_reward'])} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(result, out + ".png")


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["sizes"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(SIDES)
    for i, side in enumerate(SIDES):
        med = [result["sizes"][s][side]["s_per_iter"]["median"] for s in sizes]
        lo = [m - result["sizes"][s][side]["s_per_iter"]["min"] for m, s in zip(med, sizes)]
        hi = [result["sizes"][s][side]["s_per_iter"]["max"] - m for m, s in zip(med, sizes)]
        ax.bar([x + i * width for x in range(len(sizes))], med, width, yerr=[lo, hi], label=side, capsize=3)
    ax.set_xticks([x + width for x in range(len(sizes))], sizes)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per iteration (log)")
    ax.set_title(f"{SPEC['prompts_per_step']} prompts x {SPEC['n']} samples x {SPEC['max_new_tokens']} tokens, "
                 f"{SPEC['threads']} thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,small,medium")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "trl_compare"))
    args = ap.parse_args()
    trl_python = os.path.join(ROOT, subprocess.check_output(["bash", os.path.join(HERE, "setup_trl.sh")],
                                                            text=True).strip().splitlines()[-1], "bin", "python")
    peak = matmul_peak_flops(SPEC["threads"])
    result = {"spec": SPEC, "peak_gflops": peak / 1e9, "sizes": {},
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model_dir, prompts, prompt_len = prepare(size, args.iterations, tmp)
            runs: dict[str, list] = {s: [] for s in SIDES}
            for rep in range(args.repeats):
                order = SIDES[rep % len(SIDES):] + SIDES[:rep % len(SIDES)]  # alternate who goes first
                for side in order:
                    runs[side].append(run_side(side, size, model_dir, prompts, args.iterations, trl_python, tmp))
                    print(f"{size} {side} repeat {rep + 1}: median "
                          f"{statistics.median(runs[side][-1]['iteration_s']):.3f} s/iter", flush=True)
            result["sizes"][size] = {s: summarise(r, prompt_len, peak) for s, r in runs.items()}
    command = "python bench/trl_compare.py " + " ".join(sys.argv[1:])
    write_report(result, args.out, command)
    print(open(args.out + ".md").read())


if __name__ == "__main__":
    main()
