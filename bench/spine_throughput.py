"""Throughput of the default training configuration: rollout tokens/s, training
tokens/s and seconds per iteration, measured on one in-process RankWorker (the
same object the flow runs on its Dask worker), after warm-up iterations.

    .venv/bin/python bench/spine_throughput.py [--iterations 30] [--warmup 5] [overrides ...]

One thread, as a default Dask worker has (OMP_NUM_THREADS=2 to use both cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# The flow's default rank is one Dask worker with one thread; measure the same.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from common import warm_policy  # noqa: E402
from siirl_core.compose import compose_config  # noqa: E402
from siirl_core.config import to_dict  # noqa: E402
from siirl_core.worker import RankWorker  # noqa: E402

KEYS = ("timing_s/iteration", "timing_s/rollout", "timing_s/update", "timing_s/old_logprobs", "timing_s/sync",
        "perf/rollout_tokens_per_s", "perf/train_tokens_per_s", "perf/tokens_per_s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = compose_config(args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        policy = warm_policy(cfg, tmp)
        worker = RankWorker(to_dict(cfg), policy, 0, 1, "127.0.0.1", 29533)
        t0 = time.perf_counter()
        worker.setup()
        setup_s = time.perf_counter() - t0
        rows = [worker.run_until(step) for step in range(1, args.warmup + args.iterations + 1)][args.warmup:]
    result = {
        "config": {"model": cfg.model.size, "rollout": cfg.rollout.backend, "zero_stage": cfg.trainer.zero_stage,
                   "prompts_per_step": cfg.trainer.prompts_per_step, "n": cfg.rollout.n,
                   "max_new_tokens": cfg.rollout.max_new_tokens, "overrides": args.overrides},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "threads": int(os.environ["OMP_NUM_THREADS"])},
        "setup_s": setup_s, "iterations": args.iterations,
        "median": {k: statistics.median(r[k] for r in rows) for k in KEYS},
        "min": {k: min(r[k] for r in rows) for k in KEYS},
        "max": {k: max(r[k] for r in rows) for k in KEYS},
    }
    print(f"{'metric':32s} {'median':>10s} {'min':>10s} {'max':>10s}")
    for k in KEYS:
        print(f"{k:32s} {result['median'][k]:10.3f} {result['min'][k]:10.3f} {result['max'][k]:10.3f}")
    print(f"engine set-up (DeepSpeed + vLLM): {setup_s:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
