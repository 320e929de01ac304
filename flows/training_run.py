"""One RL training run inside whichever flow calls it (`siirl-train`, `siirl-retrain`):
find the checkpoint to resume from, warm start if needed, start the rank group, then
iterate, evaluate, checkpoint and export through thin Prefect tasks."""
from __future__ import annotations

import datetime
import json
import os

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from flows import run_lock
from flows.curves import write_curves
from flows.progress import console, describe, progress_bar, summary_table
from flows.report import report_markdown
from flows.runs import metrics_rows
from flows.sft import sft_flow
from infra.cluster import dask_client
from infra.rank_group import start_rank_group
from siirl_core.compose import compose_config
from siirl_core.config import SiirlConfig, to_dict
from siirl_core.config_checks import make_run_dir
from siirl_core.metrics import MetricSinks, read_metrics
from siirl_core.model_cache import read_warm_start_record
from siirl_core.tracking import build_trackers
from tasks.model import make_agent_base_model, make_base_model
from tasks.training import (evaluation_task, export_policy, find_checkpoint, iteration_task, record_ranks,
                            restore_checkpoint, save_checkpoint)


def _policy_source(cfg: SiirlConfig, overrides: list[str]) -> str | dict[str, str]:
    if cfg.agents.env:
        return _agent_policy_sources(cfg, overrides)
    if cfg.model.warm_start:
        return sft_flow(overrides)
    return make_base_model(cfg)


def _warm_start_summary(policy) -> dict:
    """Where the policy started and how its warm start went (the sft flow records it)."""
    record = read_warm_start_record(policy) if isinstance(policy, str) else None
    if record is None:
        return {}
    stopped = f", stopped at sft.target_accuracy={record['target_accuracy']}" if record["stopped_at_target"] else ""
    return {"warm_start": policy, "warm_start_steps": f"{record['steps']} of {record['max_steps']}{stopped}",
            "warm_start_accuracy": record.get("held_out_accuracy")}


def _agent_policy_sources(cfg: SiirlConfig, overrides: list[str]) -> dict[str, str]:
    """Multi-agent: each trained policy's starting model directory."""
    out = {}
    for index, pid in enumerate(cfg.agents.trained_policies()):
        init = cfg.agents.policy(pid).init
        out[pid] = (sft_flow(overrides) if init == "warm_start" else
                    make_agent_base_model(cfg, pid, index) if init == "base" else init)
    return out


def _initial_eval(group, cfg: SiirlConfig, start: int) -> dict:
    """Accuracy of the starting policy, measured once per run and kept in the run folder."""
    path = os.path.join(cfg.run_dir, "eval_initial.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = evaluation_task(cfg)(group, "initial", cfg, start)
    with open(path, "w") as f:
        json.dump(result, f)
    return result


def _train_loop(cfg: SiirlConfig, group, run_dir: str, start: int, sinks: MetricSinks, before: dict) -> dict:
    run_iteration, evaluate = iteration_task(cfg), evaluation_task(cfg)
    metrics: dict = {}
    steps = cfg.trainer.steps
    progress = create_progress_artifact(100.0 * start / steps, key="siirl-train-progress",
                                        description=f"steps done of {steps} ({run_dir})")
    with progress_bar(steps, start) as bar:
        for step in range(start + 1, steps + 1):
            metrics = run_iteration(group, step, cfg)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                metrics.update(evaluate(group, f"step-{step}", cfg, step))
            sinks.write(step, metrics)
            if "val/accuracy" in metrics:
                _draw_curves(run_dir, before)
            update_progress_artifact(progress, 100.0 * step / steps)
            bar.update(bar.task_ids[0], advance=1, description=describe(metrics))
            if cfg.trainer.save_every and (step % cfg.trainer.save_every == 0 or step == cfg.trainer.steps):
                save_checkpoint(group, cfg, step, metrics)
    return metrics


def _draw_curves(run_dir: str, before: dict, after: dict | None = None, steps: int = 0) -> str:
    """curves.png from the metrics log so far, with the evaluations before training and,
    at the end, the final one."""
    path = os.path.join(run_dir, "curves.png")
    extra = ((0, before["val/accuracy"]),) + (((steps, after["val/accuracy"]),) if after else ())
    write_curves(read_metrics(run_dir), path, extra_val=extra)
    return path


def _record_driver_traffic(group, client, run_dir: str) -> None:
    """What crossed the driver: per call, the largest pickled arguments and result,
    and how many keys the Dask cluster holds (the actors only, no data)."""
    calls: dict = {}
    for method, arg_bytes, result_bytes in group.traffic:
        c = calls.setdefault(method, {"count": 0, "max_arg_bytes": 0, "max_result_bytes": 0})
        c["count"] += 1
        c["max_arg_bytes"] = max(c["max_arg_bytes"], arg_bytes)
        c["max_result_bytes"] = max(c["max_result_bytes"], result_bytes)
    with open(os.path.join(run_dir, "driver_traffic.json"), "w") as f:
        json.dump({"calls": calls, "keys_in_cluster_memory": len(client.who_has())}, f, indent=1)


def _precision(info: dict) -> str:
    """A rank's precision in words, for the start log."""
    if info["bf16"]:
        return "bf16 (DeepSpeed)"
    if info["bf16_autocast"]:
        native = "native" if info["native_bf16_cpu"] else "emulated: this CPU has no AVX512-BF16 or AMX, fp32 is faster"
        return f"fp32 weights, bf16 autocast ({native})"
    return "fp32"


def run_training(overrides: list[str]) -> dict:
    """The training run itself, inside whichever flow calls it, holding its run folder's
    lock (flows/run_lock.py) from start to end."""
    cfg = compose_config(overrides)  # fails here, before any model is loaded
    logger = get_run_logger()
    run_dir = make_run_dir(cfg)
    stale = run_lock.acquire(run_dir, cfg.storage.uri, str(flow_run.id), flow_run.name,
                             datetime.datetime.now().isoformat(timespec="seconds"))
    if stale and run_lock.crash_stale_flow_run(stale):
        logger.warning("the run that held %s before (pid %s, flow run %s) is gone: marked its flow run Crashed",
                       run_dir, stale["pid"], stale.get("flow_run_name"))
    try:
        return _run_training(cfg, overrides, run_dir)
    finally:
        run_lock.release(run_dir)


def _run_training(cfg: SiirlConfig, overrides: list[str], run_dir: str) -> dict:
    logger = get_run_logger()
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(to_dict(cfg), f, indent=1)
    candidates = find_checkpoint(cfg)  # before any compute: a storage fault stops the run here
    policy = _policy_source(cfg, overrides)
    with dask_client(cfg.cluster.kind, cfg.cluster.n_workers, cfg.cluster.threads_per_worker,
                     cfg.cluster.address) as client:
        logger.info("Dask dashboard: %s", client.dashboard_link)
        group = start_rank_group(client, to_dict(cfg), policy, cfg.cluster.n_workers, run_dir)
        record_ranks(group, run_dir)
        logger.info("derived settings: %s", cfg.derived())
        for i in group.info:
            logger.info("rank %d: pid %d on %s, %d of %d parameters held locally, ZeRO stage %d, %s", i["rank"],
                        i["pid"], i["host"], i["local_parameters"], i["parameters"], i["zero_stage"], _precision(i))
            if i["malloc_trim_threshold"] is not None:
                logger.warning("rank %d runs with MALLOC_TRIM_THRESHOLD_=%s (Dask's nanny sets it), which makes "
                               "large tensor allocations slow; see docs/cluster.md to start workers without it",
                               i["rank"], i["malloc_trim_threshold"])
        start = restore_checkpoint(group, cfg, candidates)
        trackers = build_trackers(cfg, run_dir, start, flow_run.name)
        sinks = MetricSinks(run_dir, resumed_from=start, also=tuple(trackers))
        try:
            before = _initial_eval(group, cfg, start)
            if sinks.last_step != start:
                sinks.write(start, before)  # the evaluation before training opens the log (step 0 of a new run)
            last = _train_loop(cfg, group, run_dir, start, sinks, before)
            after = evaluation_task(cfg)(group, "final", cfg, cfg.trainer.steps)
            curves = _draw_curves(run_dir, before, after, cfg.trainer.steps)
            final_dir = export_policy(group, os.path.join(run_dir, "final_policy"))
            for tracker in trackers:
                tracker.write(cfg.trainer.steps, after)
                tracker.finish(final_dir)
        except BaseException:
            for tracker in trackers:
                tracker.fail()
            raise
        sinks.close()
        _record_driver_traffic(group, client, run_dir)
    summary = {
        "run_dir": run_dir, "steps": cfg.trainer.steps, "resumed_from_step": start,
        "val_accuracy_before": before["val/accuracy"], "val_accuracy_after": after["val/accuracy"],
        "checkpoints": cfg.checkpoint_root.rstrip("/") + "/checkpoints", "final_policy": final_dir,
        "metrics_jsonl": sinks.jsonl_path, "tensorboard": os.path.join(run_dir, "tensorboard"),
        "last_train_accuracy": last.get("reward/accuracy", float("nan")), "curves": curves,
        "flow_run": flow_run.name, "flow_run_id": str(flow_run.id),
    }
    summary.update(_warm_start_summary(policy))
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    console.print(summary_table(summary))
    create_markdown_artifact(key="siirl-train-summary",
                             markdown=report_markdown(summary, to_dict(cfg), metrics_rows(run_dir)))
    return summary
