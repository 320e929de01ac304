"""`siirl-retrain`: scheduled retraining with an evaluation gate.

Start from the champion policy (or the newest checkpoint, or the warm start), train
`retrain.iterations` more steps on prompts seeded by the date, evaluate the champion
and the candidate on the same held-out set, and promote the candidate only when it is
better by `retrain.margin`. Every candidate keeps its own checkpoint folder under
`<storage>/candidates/<date>-<time>/`, promoted or not.
"""
from __future__ import annotations

import datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.quiet import quiet
from flows.training_run import run_training
from flows.watcher import on_running
from siirl_core import champion
from siirl_core import checkpoint as ckpt
from siirl_core.compose import compose_config
from siirl_core.config import SiirlConfig
from siirl_core.config_checks import single_policy_only
from siirl_core.storage import join
from tasks.champion import record_verdict, starting_point


def _scheduled_date() -> str:
    """The date this flow run was scheduled for (today for a manual run)."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    return when.date().isoformat() if when else datetime.date.today().isoformat()


def candidate_root(cfg: SiirlConfig, tag: str) -> str:
    return join(cfg.checkpoint_root, "candidates", tag)


def candidate_overrides(cfg: SiirlConfig, start: dict, date: str, tag: str) -> list[str]:
    """What turns the configured run into this night's candidate run."""
    k = cfg.retrain.iterations
    return [f"storage.uri={candidate_root(cfg, tag)}", f"run_name=retrain-{tag}",
            f"trainer.resume={start['folder'] or 'never'}", f"trainer.steps={start['step'] + k}",
            f"trainer.data_seed={int(date.replace('-', ''))}", "trainer.eval_every=0",
            f"trainer.save_every={min(cfg.trainer.save_every or k, k)}"]


def decide(cfg: SiirlConfig, start: dict, summary: dict, date: str, tag: str) -> dict:
    """Promote only a complete candidate checkpoint that beats the champion by the margin."""
    champ_score, cand_score = summary["val_accuracy_before"], summary["val_accuracy_after"]
    cand_step = start["step"] + cfg.retrain.iterations
    cand_folder = ckpt.step_dir(candidate_root(cfg, tag), cand_step)
    complete = ckpt.verify(cand_folder, cfg.storage.endpoint_url) is not None
    better = cand_score - champ_score
    promoted = complete and better > 0 and better >= cfg.retrain.margin
    reason = ("no complete candidate checkpoint" if not complete else
              f"accuracy {'+' if better >= 0 else ''}{better:.3f} vs the margin {cfg.retrain.margin}")
    return {"date": date, "tag": tag, "decided_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "promoted": promoted, "reason": reason, "margin": cfg.retrain.margin,
            "iterations": cfg.retrain.iterations, "started_from": start["kind"],
            "champion": {"folder": start["folder"], "step": start["step"], "score": champ_score},
            "candidate": {"folder": cand_folder, "step": cand_step, "score": cand_score}}


def _verdict_markdown(d: dict) -> str:
    c, k = d["champion"], d["candidate"]
    return "\n".join([
        f"## Retraining {d['date']}: candidate {'promoted' if d['promoted'] else 'rejected'}",
        "", "| policy | checkpoint | step | held-out accuracy |", "|---|---|---|---|",
        f"| champion ({d['started_from']}) | {c['folder'] or 'warm start'} | {c['step']} | {c['score']:.3f} |",
        f"| candidate | {k['folder']} | {k['step']} | {k['score']:.3f} |",
        "", f"Margin {d['margin']}: {d['reason']}."])


def history_table(cfg: SiirlConfig) -> list[dict]:
    """The champion history as table rows: one per retraining verdict, oldest first."""
    return [{"date": d["date"], "promoted": d["promoted"], "reason": d["reason"],
             "champion step": d["champion"]["step"], "champion accuracy": round(d["champion"]["score"], 4),
             "candidate step": d["candidate"]["step"], "candidate accuracy": round(d["candidate"]["score"], 4),
             "candidate folder": d["candidate"]["folder"]}
            for d in champion.read_history(cfg.checkpoint_root, cfg.storage.endpoint_url)]


@flow(name="siirl-retrain", log_prints=True, on_running=[on_running])
def retrain_flow(overrides: list[str] | None = None) -> dict:
    quiet()
    overrides = list(overrides or [])
    cfg = compose_config(overrides)  # fails here, before any model is loaded
    single_policy_only(cfg, "retrain")
    date = cfg.retrain.date or _scheduled_date()
    tag = f"{date}-{datetime.datetime.now(datetime.timezone.utc):%H%M%S}"
    start = starting_point(cfg)
    summary = run_training(overrides + candidate_overrides(cfg, start, date, tag))
    decision = decide(cfg, start, summary, date, tag)
    record_verdict(cfg, decision)
    create_markdown_artifact(key="siirl-retrain-verdict", markdown=_verdict_markdown(decision))
    create_table_artifact(key="siirl-champion-history", table=history_table(cfg),
                          description=f"Every retraining verdict in {cfg.checkpoint_root}, oldest first")
    return decision


if __name__ == "__main__":
    import sys

    retrain_flow(sys.argv[1:])
