"""Cross-rank reduction equals the statistic computed from all samples in one place."""
import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from siirl_core.metrics import MetricBag, MetricSinks, read_metrics

# Two ranks with different numbers of samples: a plain mean of rank means would be wrong.
SAMPLES = {0: [1.0, 0.0, 0.0], 1: [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]}


def _rank(rank: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    xs = SAMPLES[rank]
    bag = MetricBag()
    bag.add("reward/mean", sum(xs) / len(xs), weight=len(xs))
    bag.add("perf/tokens", len(xs) * 10, reduce="sum")
    bag.add("response/length_max", max(xs) + rank, reduce="max")
    bag.add("x/min", min(xs) - rank, reduce="min")
    out[rank] = bag.reduce()
    dist.destroy_process_group()


def test_two_rank_reduction_matches_all_samples():
    from tests.conftest import _free_port

    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
    all_x = SAMPLES[0] + SAMPLES[1]
    for rank in (0, 1):
        m = out[rank]
        assert m["reward/mean"] == pytest.approx(sum(all_x) / len(all_x))  # 6/9, not (1/3+5/6)/2
        assert m["perf/tokens"] == 90
        assert m["response/length_max"] == 2.0
        assert m["x/min"] == -1.0


def test_sinks_write_jsonl_and_tensorboard_without_replayed_steps_twice(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricSinks(str(tmp_path))
    for step, value in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)):
        first.write(step, {"reward/mean": value})
    first.close()
    resumed = MetricSinks(str(tmp_path), resumed_from=2)  # steps 3 and 4 are replayed
    for step, value in ((3, 0.33), (4, 0.43)):
        resumed.write(step, {"reward/mean": value})
    resumed.close()
    rows = read_metrics(str(tmp_path))
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.33), (4, 0.43)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, round(e.value, 6)) for e in events.Scalars("reward/mean")]
    assert scalars == [(1, 0.1), (2, 0.2), (3, 0.33), (4, 0.43)]


def test_pooled_mean_weighs_ranks_by_their_counts():
    from siirl_core.distributed import pooled_mean

    # rank 0: 10 tokens with mean KL 0.5; rank 1: 30 tokens with mean 1.0 -> 35 / 40
    assert pooled_mean([(0.5, 10.0), (1.0, 30.0)]) == pytest.approx(0.875)
    assert pooled_mean([(0.5, 0.0), (0.0, 0.0)]) == 0.0
