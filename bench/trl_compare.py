"""siirl (vllm and hf rollout backends) and TRL's GRPOTrainer side by side on identical
work, alternating, several times each; plus this machine's fp32 matmul peak, for
model-FLOPs utilisation computed in the same run.

    bash scripts/setup.sh bench && .venv/bin/python bench/trl_compare.py [--sizes tiny,small,medium]
        [--iterations 5] [--repeats 3] [--out docs/benchmarks/trl_compare]
    # one GPU (siirl with the hf backend where vLLM is not installed; TRL's python given)
    python bench/trl_compare.py --device cuda --sides siirl-hf,trl --trl-python python3 --scaling-size '' --out FILE

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
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from work_spec import SIIRL_SIDES, SPEC, siirl_overrides  # noqa: E402

SIDES = (*SIIRL_SIDES, "trl")


def matmul_peak_flops(threads: int, device: str = "cpu", repeats: int = 10) -> float:
    """Best matmul FLOP/s: fp32 with `threads` threads on the CPU, bf16 on a GPU (the
    precision both sides train in there); the ceiling for MFU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # and back after: the shared warm start uses every core
    size, dtype = (1024, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first product warms up
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * size ** 3 / best


def machine(device: str) -> dict:
    info = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "device": device}
    if device == "cuda":
        import torch
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def prepare(size: str, iterations: int, tmp: str) -> tuple[str, str, float]:
    """The shared warm-started model, the prompts in training order, and the mean prompt length in tokens."""
    from common import warm_policy
    from siirl_core.compose import compose_config
    from siirl_core.data import build_task

    cfg = compose_config(siirl_overrides(SPEC, size, "hf", iterations))
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


def run_side(side: str, size: str, model_dir: str, prompts: str, iterations: int, trl_python: str, tmp: str,
             device: str) -> dict:
    out = os.path.join(tmp, f"{side}-{size}-{time.monotonic_ns()}.json")
    spec = json.dumps(SPEC)
    if side == "trl":
        cmd = [trl_python, os.path.join(HERE, "trl_side.py"), spec, model_dir, prompts, str(iterations), out, device]
    else:  # siirl puts the model on the GPU whenever torch sees one
        cmd = [sys.executable, os.path.join(HERE, "siirl_side.py"), spec, model_dir, size, side,
               str(iterations), out]
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(SPEC["threads"]), PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{side} on {size} failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def measure_scaling(size: str, model_dir: str, iterations: int, backend: str) -> dict:
    """siirl on the same work with 1 and 2 ranks (Dask worker processes, one thread each;
    2 ranks split the prompts 8 + 8), measured from the driver as bench/scaling.py does."""
    from scaling import measure

    overrides = siirl_overrides(SPEC, size, backend, iterations)
    rows = [measure(n, model_dir, overrides, iterations, SPEC["warmup"]) for n in (1, 2)]
    return {"size": size, "backend": backend, "rows": rows,
            "efficiency": rows[1]["samples_per_s"] / (2 * rows[0]["samples_per_s"])}


def iteration_flops(params: int, prompt_len: float, fused: bool, skipped_rows: int = 0) -> float:
    """Model FLOPs of one iteration's passes. Separate rollout and update (TRL, siirl-vllm,
    siirl-hf unfused): the issue's count, 2 x parameters per generated token + 6 x per
    trained (prompt + response) token, over the rows the update ran (siirl leaves out rows
    whose advantages are all zero: skipped_rows). siirl-hf fused: 6 x parameters per token
    fed through the model once: each prompt once for its group, then the samples' response
    tokens but the last (which is sampled, never fed back)."""
    samples, new = SPEC["prompts_per_step"] * SPEC["n"], SPEC["max_new_tokens"]
    if fused:
        return 6 * params * (SPEC["prompts_per_step"] * prompt_len + samples * (new - 1))
    return 2 * params * samples * new + 6 * params * (samples - skipped_rows) * (prompt_len + new)


def paired_ratios(runs: list[dict], trl_runs: list[dict]) -> list[float]:
    """TRL's median s/iter over this side's, repeat by repeat: the two ran back to back,
    so a drift in this machine's speed between repeats cancels out of each ratio."""
    med = statistics.median
    return [med(t["iteration_s"]) / med(r["iteration_s"]) for r, t in zip(runs, trl_runs)]


def summarise(runs: list[dict], prompt_len: float, peak: float, trl_runs: list[dict]) -> dict:
    it = [x for r in runs for x in r["iteration_s"]]
    roll = [x for r in runs for x in r["rollout_s"]]
    train = [x for r in runs for x in r.get("train_s", [])] or [i - g for i, g in zip(it, roll)]
    samples = SPEC["prompts_per_step"] * SPEC["n"]
    gen_tokens, train_tokens = samples * SPEC["max_new_tokens"], samples * (prompt_len + SPEC["max_new_tokens"])
    params = runs[0]["parameters"]
    fused = bool(runs[0].get("fused"))
    med = statistics.median
    # Per timed iteration: fused or not, rows left out (siirl-hf decides per iteration; TRL: never).
    per_iter = [(f, k) for r in runs for f, k in zip(r.get("fused_iterations", [fused] * len(r["iteration_s"])),
                                                    r.get("zero_advantage_rows_skipped", [0] * len(r["iteration_s"])))]
    flops = statistics.mean(iteration_flops(params, prompt_len, f, k) for f, k in per_iter)
    trained = 1 - sum(k for _, k in per_iter) / (samples * len(per_iter))  # share of rows the update ran
    return {
        "s_per_iter": {"median": med(it), "min": min(it), "max": max(it)},
        # Training counts the rows the update ran (siirl leaves out rows with all-zero advantages).
        "rollout_tokens_per_s": gen_tokens / med(roll), "train_tokens_per_s": train_tokens * trained / med(train),
        # Fused, the rollout phase also runs the update's forward pass: no per-phase MFU.
        "rollout_mfu": None if fused else 2 * params * gen_tokens / med(roll) / peak,
        "train_mfu": None if fused else 6 * params * train_tokens * trained / med(train) / peak,
        "iteration_mfu": flops / med(it) / peak, "fused": fused,
        "fused_iterations_frac": sum(f for f, _ in per_iter) / len(per_iter),
        "rows_skipped_frac": 1 - trained,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_gpu_mib": max(r.get("peak_gpu_mib") or 0 for r in runs) or None,
        "final_reward": [r["final_reward"] for r in runs], "parameters": params,
        "vs_trl_paired": paired_ratios(runs, trl_runs) if trl_runs and runs is not trl_runs else [],
    }


def write_report(result: dict, out: str, command: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    m = result["machine"]
    samples = ", ".join(f"{g:.1f}" for g in result.get("peak_gflops_samples", []))
    peak = (f"fp32 matmul peak at that thread count: {result['peak_gflops']:.1f} GFLOP/s, the highest of the "
            f"measurements at the start and before each round ({samples})" if m["device"] == "cpu"
            else f"GPU: {m['gpu']}, bf16 matmul peak {result['peak_gflops'] / 1e3:.0f} TFLOP/s")
    lines = [f"Command: `{command}`", "",
             f"Machine: {m['cpus']} CPUs ({m['processor']}), {SPEC['threads']} thread per process; {peak}.", "",
             "| model | side | s/iter (median, min-max) | vs TRL | vs TRL per repeat (median) | rows skipped | "
             "rollout tok/s | train tok/s | rollout MFU | train MFU | iteration MFU | peak RSS MiB | peak GPU MiB | "
             "final reward (each repeat) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, sides in result["sizes"].items():
        trl = sides["trl"]["s_per_iter"]["median"] if "trl" in sides else float("nan")
        for side, s in sides.items():
            it = s["s_per_iter"]
            lines.append(f"| {size} ({s['parameters'] / 1e6:.2f}M) | {side} | {it['median']:.3f} "
                         f"({it['min']:.3f}-{it['max']:.3f}) | {trl / it['median']:.2f}x | {_paired(s)} | "
                         f"{s.get('rows_skipped_frac', 0):.0%} | "
                         f"{s['rollout_tokens_per_s']:.0f} | {s['train_tokens_per_s']:.0f} | "
                         f"{_share(s['rollout_mfu'])} | {_share(s['train_mfu'])} | {_share(s['iteration_mfu'])} | "
                         f"{s['peak_rss_mib']:.0f} | "
                         f"{s['peak_gpu_mib'] or 0:.0f} | "
                         f"{', '.join(f'{r:.3f}' for r in s['final_reward'])} |")
    lines += ["", "vs TRL: TRL's median s/iter over this side's, all repeats pooled. Per repeat: the same ratio "
              "within each repeat, whose sides ran back to back, so a drift in the machine's speed between "
              "repeats cancels out; in brackets their median.", "",
              "rows skipped: the share of sampled rows the update left out because all their advantages were "
              "zero (every sample of their prompt scored the same; trainer.skip_zero_advantage, the same loss "
              "and gradient); siirl-hf-allrows turns that off and runs every row, as TRL does. train tok/s and "
              "train MFU count the rows the update ran."]
    if any(s.get("fused") for sides in result["sizes"].values() for s in sides.values()):
        lines += ["", "fused: the update back-propagates through the rollout's own forward passes "
                  "(trainer.fused_update), so the rollout phase includes the update's forward pass and the train "
                  "phase is its backward pass; per-phase MFU is not separable there. Iteration MFU: the model "
                  "FLOPs each side's passes run (bench/trl_compare.py: iteration_flops) over the iteration time."]
    if "scaling" in result:
        sc = result["scaling"]
        lines += ["", f"Scaling, siirl-{sc['backend']} on {sc['size']}, the same work on 1 and 2 ranks "
                  f"(one thread each): efficiency {sc['efficiency']:.2f}", "",
                  "| ranks | s/iter (median, min-max) | samples/s |", "|---|---|---|"]
        lines += [f"| {r['ranks']} | {r['median_s_per_iteration']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) | "
                  f"{r['samples_per_s']:.0f} |" for r in sc["rows"]]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(result, out + ".png")


def _paired(s: dict) -> str:
    ratios = s.get("vs_trl_paired") or []
    if not ratios:
        return "-"
    return f"{', '.join(f'{r:.2f}' for r in ratios)} ({statistics.median(ratios):.2f}x)"


def _share(x) -> str:
    return "fused" if x is None else f"{x:.4f}"


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["sizes"])
    sides = result["sides"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        med = [result["sizes"][s][side]["s_per_iter"]["median"] for s in sizes]
        lo = [m - result["sizes"][s][side]["s_per_iter"]["min"] for m, s in zip(med, sizes)]
        hi = [result["sizes"][s][side]["s_per_iter"]["max"] - m for m, s in zip(med, sizes)]
        ax.bar([x + i * width for x in range(len(sizes))], med, width, yerr=[lo, hi], label=side, capsize=3)
    ax.set_xticks([x + width for x in range(len(sizes))], sizes)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per iteration (log)")
    where = result["machine"].get("gpu") or f"{SPEC['threads']} CPU thread"
    ax.set_title(f"{SPEC['prompts_per_step']} prompts x {SPEC['n']} samples x {SPEC['max_new_tokens']} tokens, "
                 f"{where}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,small,medium")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "trl_compare"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sides", default=",".join(SIDES), help="which of " + ", ".join(SIDES) + " to run")
    ap.add_argument("--trl-python", default="", help="a python that has TRL (default: make .venv-trl)")
    ap.add_argument("--scaling-size", default="small", help="on the CPU, also run siirl on 1 and 2 ranks for "
                    "this size ('' to skip)")
    args = ap.parse_args()
    sides = tuple(args.sides.split(","))
    if set(sides) - set(SIDES):
        ap.error(f"unknown sides {sorted(set(sides) - set(SIDES))}; expected some of {', '.join(SIDES)}")
    trl_python = args.trl_python or os.path.join(ROOT, subprocess.check_output(
        ["bash", os.path.join(HERE, "setup_trl.sh")], text=True).strip().splitlines()[-1], "bin", "python")
    # This VM's speed drifts: the peak is measured again before every round of sides and
    # the highest measurement is the ceiling for utilisation.
    peaks = [matmul_peak_flops(SPEC["threads"], args.device)]
    result = {"spec": SPEC, "sizes": {}, "sides": sides, "machine": machine(args.device)}
    command = "python bench/trl_compare.py " + shlex.join(sys.argv[1:])
    measured: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model_dir, prompts, prompt_len = prepare(size, args.iterations, tmp)
            runs: dict[str, list] = {s: [] for s in sides}
            for rep in range(args.repeats):
                peaks.append(matmul_peak_flops(SPEC["threads"], args.device))
                order = sides[rep % len(sides):] + sides[:rep % len(sides)]  # alternate who goes first
                for side in order:
                    runs[side].append(run_side(side, size, model_dir, prompts, args.iterations, trl_python, tmp,
                                               args.device))
                    print(f"{size} {side} repeat {rep + 1}: median "
                          f"{statistics.median(runs[side][-1]['iteration_s']):.3f} s/iter", flush=True)
            measured[size] = (runs, prompt_len)
            peak = max(peaks)  # every size's utilisation against the same, highest peak
            result.update(peak_gflops=peak / 1e9, peak_gflops_samples=[p / 1e9 for p in peaks])
            for done, (done_runs, done_len) in measured.items():
                result["sizes"][done] = {s: summarise(r, done_len, peak, done_runs.get("trl", []))
                                         for s, r in done_runs.items()}
            siirl_sides = [s for s in sides if s.startswith("siirl-")]
            if size == args.scaling_size and siirl_sides and args.device == "cpu":  # CPU ranks, one thread each
                result["scaling"] = measure_scaling(size, model_dir, args.iterations, SIIRL_SIDES[siirl_sides[-1]][0])
            write_report(result, args.out, command)  # after every size: a cut-short run keeps what it measured
    print(open(args.out + ".md").read())


if __name__ == "__main__":
    main()
