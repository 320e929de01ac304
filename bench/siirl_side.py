"""siirl's side of bench/trl_compare.py: one in-process RankWorker (the object the flow
runs on a Dask worker) doing the benchmark's work.

    .venv/bin/python bench/siirl_side.py SPEC_JSON MODEL_DIR SIZE SIDE ITERATIONS OUT_JSON

SIDE names a siirl side of work_spec.SIIRL_SIDES (its rollout backend and overrides).
"""
from __future__ import annotations

import json
import os
import sys

SPEC = json.loads(sys.argv[1])
os.environ["OMP_NUM_THREADS"] = str(SPEC["threads"])
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from siirl_core.compose import compose_config  # noqa: E402
from siirl_core.config import to_dict  # noqa: E402
from siirl_core.training.fused import fused_update_active  # noqa: E402
from siirl_core.worker import RankWorker  # noqa: E402
from process_memory import peak_rss_mib  # noqa: E402
from work_spec import SIIRL_SIDES, siirl_overrides  # noqa: E402


def main() -> None:
    model_dir, size, side, iterations, out_path = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), \
        sys.argv[6]
    torch.set_num_threads(SPEC["threads"])
    backend, extra = SIIRL_SIDES[side]
    cfg = compose_config(siirl_overrides(SPEC, size, backend, iterations, extra))
    worker = RankWorker(to_dict(cfg), model_dir, 0, 1, "127.0.0.1", 29000 + os.getpid() % 1000)
    worker.setup()
    rows = [worker.run_until(step) for step in range(1, SPEC["warmup"] + iterations + 1)]
    timed = rows[SPEC["warmup"]:]
    json.dump({"iteration_s": [r["timing_s/iteration"] for r in timed],
               "rollout_s": [r["timing_s/rollout"] for r in timed],
               "train_s": [r["timing_s/update"] for r in timed],
               "final_reward": rows[-1]["reward/mean"], "rewards": [r["reward/mean"] for r in rows],
               # per timed iteration: whether the update ran through the rollout's graph, and
               # how many rows it left out for their all-zero advantages
               "fused_iterations": [bool(r["perf/fused_update"]) for r in timed],
               "zero_advantage_rows_skipped": [0 if r["perf/fused_update"] else int(r.get("perf/zero_advantage_rows", 0))
                                               for r in timed],
               "peak_rss_mib": peak_rss_mib(),
               "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
               "parameters": worker.parts.actor.total_parameters(),
               "fused": fused_update_active(worker.cfg), "zero_stage": worker.parts.actor.zero_stage}, open(out_path, "w"))


if __name__ == "__main__":
    main()
