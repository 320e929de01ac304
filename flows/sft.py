"""`siirl-sft`: the supervised warm start (base model -> demonstrations -> HF dir)."""
from __future__ import annotations

import os

from prefect import flow, get_run_logger

from flows.quiet import quiet
from flows.watcher import on_running
from siirl_core.compose import compose_config
from siirl_core.model_cache import warm_start_dir, write_warm_start_record
from tasks.model import greedy_eval, make_base_model, supervised_warm_start


@flow(name="siirl-sft", log_prints=True, on_running=[on_running])
def sft_flow(overrides: list[str] | None = None, force: bool = False) -> str:
    """Train the warm start for the configured model and task (cached by config)."""
    quiet()
    cfg = compose_config(overrides)
    logger = get_run_logger()
    out = warm_start_dir(cfg)
    if os.path.isfile(os.path.join(out, "config.json")) and not force:
        logger.info("warm start cached at %s", out)
        return out
    base = make_base_model(cfg)
    record = supervised_warm_start(cfg, base, out)
    acc = greedy_eval(cfg, out)
    write_warm_start_record(out, dict(record, held_out_accuracy=acc))
    logger.info("warm start written to %s: greedy accuracy %.3f on %d held-out prompts", out, acc,
                cfg.task.eval_size)
    return out


if __name__ == "__main__":
    import sys

    sft_flow(sys.argv[1:])
