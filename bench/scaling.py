"""Samples per second with 1 and 2 ranks (Dask worker processes, one thread each)
on the same global batch, and the scaling efficiency.

    .venv/bin/python bench/scaling.py [--iterations 30] [--warmup 5] [--out FILE] [overrides ...]
    # the work of bench/trl_compare.py (bench/work_spec.py) on one of its model sizes
    .venv/bin/python bench/scaling.py --work-spec small --iterations 4 --warmup 1 [trainer.zero_stage=0]
    # one GPU: a dask-cuda worker, DeepSpeed over NCCL in bf16 (rollout=hf where vLLM is missing)
    python bench/scaling.py --cluster local_cuda --ranks 1 [overrides ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import warm_policy  # noqa: E402
from infra.cluster import dask_client  # noqa: E402
from infra.rank_group import start_rank_group  # noqa: E402
from siirl_core.compose import compose_config  # noqa: E402
from siirl_core.config import to_dict  # noqa: E402


def measure(n_ranks: int, policy: str, overrides: list[str], iterations: int, warmup: int,
            cluster: str = "local") -> dict:
    cfg = compose_config([f"cluster.n_workers={n_ranks}", *overrides])
    samples = cfg.trainer.prompts_per_step * cfg.rollout.n
    with dask_client(cluster, n_ranks, 1) as client:
        group = start_rank_group(client, to_dict(cfg), policy, n_ranks, cfg.run_dir)
        print(f"{n_ranks} rank(s) set up: {group.info}", flush=True)
        walls, worker_s = [], []
        for step in range(1, warmup + iterations + 1):
            t0 = time.perf_counter()
            m = group.call_rank0("run_until", step)
            if step > warmup:
                walls.append(time.perf_counter() - t0)
                worker_s.append(m["timing_s/iteration"])
    wall = statistics.median(walls)
    return {"ranks": n_ranks, "samples_per_iteration": samples, "median_s_per_iteration": wall,
            "min_s": min(walls), "max_s": max(walls), "median_worker_s": statistics.median(worker_s),
            "samples_per_s": samples / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="")
    ap.add_argument("--cluster", default="local", choices=["local", "local_cuda"],
                    help="local_cuda: dask-cuda workers, one per GPU, DeepSpeed over NCCL")
    ap.add_argument("--ranks", default="1,2", help="rank counts to measure, e.g. 1 on one GPU")
    ap.add_argument("--work-spec", default="", help="model size: run bench/work_spec.py's work on it with the hf "
                    "backend, as trl_compare's scaling step; the positional overrides apply on top")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.work_spec:
        from work_spec import SPEC, siirl_overrides

        steps_after_spec_warmup = args.warmup + args.iterations - SPEC["warmup"]  # trainer.steps: all we run
        args.overrides = siirl_overrides(SPEC, args.work_spec, "hf", steps_after_spec_warmup) + args.overrides
    counts = [int(n) for n in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        policy = warm_policy(compose_config(args.overrides), tmp)
        rows = [measure(n, policy, args.overrides, args.iterations, args.warmup, args.cluster) for n in counts]
    efficiency = rows[1]["samples_per_s"] / (2 * rows[0]["samples_per_s"]) if counts[:2] == [1, 2] else None
    for r in rows:
        print(f"{r['ranks']} rank(s): {r['median_s_per_iteration']:.3f} s/iteration "
              f"(min {r['min_s']:.3f}, max {r['max_s']:.3f}), {r['samples_per_s']:.0f} samples/s")
    if efficiency is not None:
        print(f"scaling efficiency 1 -> 2 ranks: {efficiency:.2f}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"device: {gpu or 'CPU'}, {os.cpu_count()} CPUs, cluster {args.cluster}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "efficiency": efficiency, "cpus": os.cpu_count(), "cluster": args.cluster,
                       "gpu": gpu, "overrides": args.overrides}, f, indent=1)


if __name__ == "__main__":
    main()
